"""
Unit tests for the FTP pieces: the virtual file system's confinement, TYPE A
conversion at chunk edges, the data channel's states, and the control
channel fed through StringTransport (no sockets).
"""

from __future__ import annotations

import os
import re
import socket

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import ftp

from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.ftp import component
from twisted.internet import error
from twisted_mailhub.ftp import data as ftpdata
from twisted_mailhub.ftp import server
from twisted_mailhub.ftp.data import DataChannel, DataState, close_now, from_crlf, port_candidates, same_host, to_crlf
from twisted_mailhub.ftp.server import MailhubFTPFactory
from twisted_mailhub.ftp.vfs import DiskShell, filesystem_factories, partial_name
from twisted_mailhub.hub import Hub
from twisted_mailhub.store.memory import MemoryStore


@pytest.fixture(autouse=True)
def directory_flushes_made_at_once(monkeypatch):
    # No reactor runs here: the disk shells' directory fsyncs (after MKD,
    # RMD, DELE, RNTO) are made at once, in the test's thread.
    from twisted_mailhub.ftp import vfs
    from twisted_mailhub.store.smallfiles import SmallFiles

    monkeypatch.setattr(vfs, "_small_files", SmallFiles(run=lambda function, *args: function(*args)))


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


# -- virtual file system ---------------------------------------------------------


def test_disk_plugin_is_found_and_makes_homes_on_first_login(tmp_path):
    fs = filesystem_factories()["disk"].make_filesystem(str(tmp_path))
    accounts = AccountBook(["localhost"])
    alice = accounts.add("alice", "pw")
    shell = fs.shell_for(alice)
    assert os.path.isdir(tmp_path / "ftp" / "localhost" / "alice")
    assert not shell.readonly
    anon = fs.shell_for(None)
    assert anon.readonly and os.path.isdir(tmp_path / "ftp" / "public")


def test_shell_refuses_symlinks_out_and_odd_segments(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "secret", root / "link")
    (root / "ok").write_bytes(b"fine")
    os.symlink(root / "ok", root / "inside")
    shell = DiskShell(str(root))
    assert result_of(shell.openForReadingAt(["link"], 0)).check(ftp.PermissionDeniedError)
    assert result_of(shell.openForReadingAt([".."], 0)).check(ftp.PermissionDeniedError)
    assert result_of(shell.openForReadingAt(["a/b"], 0)).check(ftp.PermissionDeniedError)
    assert result_of(shell.openForReadingAt(["inside"], 2)).read(10) == b"ne"
    names = [n for n, _ in result_of(shell.list([], ("size",)))]
    assert names == ["inside", "ok"]
    # a dangling or outside link can still be deleted, not followed
    assert result_of(shell.removeFile(["link"])) is None
    assert (tmp_path / "secret").exists()


def test_a_path_resolved_below_a_real_root_is_what_realpath_makes_of_it(tmp_path):
    from twisted_mailhub.ftp.vfs import resolved

    root = os.path.realpath(tmp_path / "root")
    os.makedirs(os.path.join(root, "a", "b"))
    open(os.path.join(root, "a", "file"), "wb").close()
    os.symlink(os.path.join(root, "a"), os.path.join(root, "in"))
    os.symlink(str(tmp_path), os.path.join(root, "out"))
    os.symlink("nowhere", os.path.join(root, "dangling"))
    for parts in ([], ["a"], ["a", "b"], ["a", "b", "new"], ["missing", "x", "y"], ["a", "file", "x"], ["in", "b"],
                  ["out"], ["out", "root", "a"], ["dangling"], ["a", "..", "in"], ["a", "", "b"], ["a", ".", "b"], ["a/b"]):
        assert resolved(root, parts) == os.path.realpath(os.path.join(root, *parts)), parts


def test_read_only_shell_refuses_every_change(tmp_path):
    shell = DiskShell(str(tmp_path), readonly=True)
    for d in (
        shell.makeDirectory(["d"]),
        shell.removeFile(["f"]),
        shell.removeDirectory(["d"]),
        shell.rename(["a"], ["b"]),
        shell.openForWritingAt(["f"], 0, False),
        shell.uniqueName(["f"]),
    ):
        assert result_of(d).check(ftp.PermissionDeniedError)
    assert os.listdir(tmp_path) == []


def test_writer_rest_and_append_work_on_a_hidden_copy_until_complete(tmp_path):
    shell = DiskShell(str(tmp_path))
    (tmp_path / "f").write_bytes(b"0123456789")
    w = result_of(shell.openForWritingAt(["f"], 4, False))
    w.write(b"ab")
    w.file.flush()
    # The complete file stays whole; the new version is hidden beside it.
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    assert (tmp_path / partial_name("f")).read_bytes() == b"0123ab"
    assert [name for name, _ in result_of(shell.list([], ("size",)))] == ["f"]
    w.file.close()
    # APPE after an interruption continues the partial file.
    w = result_of(shell.openForWritingAt(["f"], 0, True))
    w.write(b"!")
    w.file.close()
    assert (tmp_path / partial_name("f")).read_bytes() == b"0123ab!"
    # A plain STOR starts afresh.
    w = result_of(shell.openForWritingAt(["f"], 0, False))
    w.discard()
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_size_of_an_interrupted_upload_is_where_rest_resumes(tmp_path):
    shell = DiskShell(str(tmp_path))
    w = result_of(shell.openForWritingAt(["new"], 0, False))
    w.write(b"x" * 1000)
    w.file.close()
    assert result_of(shell.stat(["new"], ("size",))) == [1000]
    assert result_of(shell.openForReadingAt(["new"], 0)).check(ftp.FileNotFoundError)


# -- TYPE A ------------------------------------------------------------------------


@pytest.mark.parametrize("cut", range(0, 9))
def test_type_a_conversion_survives_any_chunk_boundary(cut):
    text = b"a\nb\r\nc\n"
    out, held = to_crlf(text[:cut], b"")
    more, held = to_crlf(text[cut:], held)
    assert out + more + held == b"a\r\nb\r\nc\r\n"
    wire = b"a\r\nb\r\nc\r\n"
    out, held = from_crlf(wire[:cut], b"")
    more, held = from_crlf(wire[cut:], held)
    assert out + more + held == b"a\nb\nc\n"


def test_same_host_sees_through_ipv4_mapped_addresses():
    assert same_host("::ffff:127.0.0.1", "127.0.0.1")
    assert not same_host("127.0.0.2", "127.0.0.1")


# -- data channel states ------------------------------------------------------------


def test_passive_channel_states_and_timeout():
    reactor = MemoryReactorClock()
    channel = DataChannel(reactor, "127.0.0.1", "127.0.0.1", 2120, timeout=5)
    assert channel.state is DataState.IDLE
    assert result_of(channel.open()).getErrorMessage() == "use PORT, PASV, EPRT or EPSV first"
    channel.passive(None)
    assert channel.state is DataState.PASSIVE_LISTENING
    d = channel.open()
    assert channel.state is DataState.CONNECTING
    reactor.advance(5)
    failure = result_of(d)
    assert failure.getErrorMessage() == "no data connection was made within 5 seconds"
    assert channel.state is DataState.IDLE


def test_passive_port_without_a_range_is_a_free_ephemeral_port_bound_by_number():
    reactor = MemoryReactorClock()
    channels = [DataChannel(reactor, "127.0.0.1", "127.0.0.1", 2120, timeout=5) for _ in range(3)]
    ports = [c.passive(None) for c in channels]
    assert len(set(ports)) == 3
    for port, channel in zip(ports, channels):
        assert port in ftpdata.EPHEMERAL_PORTS
        with socket.create_connection(("127.0.0.1", port)):
            pass  # it really listens
        channel.reset()
        assert channel.state is DataState.IDLE


def test_passive_port_falls_back_to_the_kernel_when_no_tried_port_is_free(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        monkeypatch.setattr(ftpdata, "EPHEMERAL_PORTS", range(port, port + 1))
        channel = DataChannel(MemoryReactorClock(), "127.0.0.1", "127.0.0.1", 2120, timeout=5)
        got = channel.passive(None)
        assert got != port and got > 0
        channel.reset()
        # A configured range that is all taken is an error (425), not a
        # port outside the range.
        with pytest.raises(error.CannotListenError):
            channel.passive(range(port, port + 1))
    finally:
        taken.close()


def test_port_candidates_all_of_a_small_range_some_of_a_large_one():
    assert sorted(port_candidates(range(5000, 5010))) == list(range(5000, 5010))
    many = list(port_candidates(range(20000, 60000), tries=7))
    assert len(set(many)) == 7 and all(20000 <= p < 60000 for p in many)
    # A range just above the limit: every port tried is a different one.
    assert sorted(port_candidates(range(6000, 6040), tries=40)) == list(range(6000, 6040))


def test_close_now_leaves_a_buffered_connection_to_lose_connection():
    transport = StringTransport()
    transport.write(b"not yet sent")
    close_now(transport)
    assert transport.disconnecting  # loseConnection: the buffer goes first


def test_active_channel_connects_from_the_data_port():
    reactor = MemoryReactorClock()
    channel = DataChannel(reactor, "127.0.0.1", "127.0.0.1", 2120, timeout=5)
    channel.active("127.0.0.1", 40000)
    assert channel.state is DataState.ACTIVE_READY
    channel.open()
    assert channel.state is DataState.CONNECTING
    assert channel.abort() is True
    assert channel.state is DataState.IDLE


def test_an_active_connection_that_cannot_be_started_fails_the_transfer_and_leaves_nothing_behind():
    # Twisted raises at once, inside connect(), for an address it cannot
    # resolve (an IPv6 scope id that names no interface): the transfer
    # fails as a refused connection does, and no timer is left to fire a
    # Deferred nobody waits on ("Unhandled error in Deferred").
    reactor = MemoryReactorClock()
    channel = DataChannel(reactor, "::1", "fe80::1", 0, timeout=5)
    channel.active("fe80::1%nosuchif9", 40000)
    failure = result_of(channel.open())
    assert failure.check(ftpdata.TransferFailed)
    assert failure.getErrorMessage() == "cannot open the data connection to fe80::1%nosuchif9 port 40000"
    assert channel.state is DataState.IDLE
    assert reactor.getDelayedCalls() == []


# -- control channel over StringTransport ----------------------------------------------


@pytest.fixture
def session(tmp_path):
    clock = task.Clock()
    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    options = {"ftp-data-timeout": 5}
    hub = Hub(clock, options, accounts, MemoryStore(), str(tmp_path), "mail.test")
    component.install(hub)
    factory = MailhubFTPFactory(hub, idle_timeout=30, data_timeout=5)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000), hostAddress=IPv4Address("TCP", "127.0.0.1", 2121))
    proto.makeConnection(transport)

    def say(line: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(line)
        return transport.value()

    return proto, transport, say, clock


def test_greeting_lowercase_login_and_pwd(session):
    proto, transport, say, clock = session
    assert transport.value().startswith(b"220 mail.test")
    assert say(b"user alice\r\n").startswith(b"331")
    assert say(b"pass secret\n").startswith(b"230")
    assert say(b"pwd\r\n") == b'257 "/" is the current directory.\r\n'
    assert say(b"cwd ..\r\n").startswith(b"550")


def test_transfer_without_port_or_pasv_is_425(session):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\n")
    assert say(b"LIST\r\n").startswith(b"425")
    assert say(b"RETR nothing\r\n").startswith(b"550")


def test_a_data_connection_never_made_is_425_saying_so_once(tmp_path):
    # Each 4xx reply of a data connection says what happened once, in a
    # sentence (before: "425 Can't open data connection: the data
    # connection was not made in time.").
    reactor = MemoryReactorClock()
    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    hub = Hub(reactor, {"ftp-data-timeout": 5}, accounts, MemoryStore(), str(tmp_path), "mail.test")
    component.install(hub)
    factory = MailhubFTPFactory(hub, idle_timeout=30, data_timeout=5)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000), hostAddress=IPv4Address("TCP", "127.0.0.1", 2121))
    proto.makeConnection(transport)
    proto.dataReceived(b"USER alice\r\nPASS secret\r\nPORT 127,0,0,1,156,64\r\nLIST\r\n")
    assert transport.value().decode().splitlines()[-1].startswith("150 ")
    transport.clear()
    reactor.advance(5)  # the active connection never completes
    assert transport.value() == b"425 No data connection was made within 5 seconds.\r\n"
    transport.clear()
    proto.dataReceived(b"NOOP\r\n")  # and the session goes on
    assert transport.value() == b"200 NOOP ok.\r\n"


def test_idle_control_connection_times_out(session):
    proto, transport, say, clock = session
    transport.clear()
    clock.advance(31)
    assert transport.value().startswith(b"421")
    assert transport.disconnecting


def test_port_checks_are_made_before_any_connection(session):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\n")
    # A bounce and a privileged port: the same code, each with its reason.
    assert say(b"PORT 10,0,0,1,200,1\r\n") == b"504 PORT refused: data connections go to your own address only (RFC 2577).\r\n"
    assert say(b"PORT 127,0,0,1,0,21\r\n") == b"504 PORT refused: the port must be 1024-65535, not a privileged port (RFC 2577).\r\n"
    assert say(b"PORT 127,0,0,1,200,1\r\n").startswith(b"200")
    assert say(b"EPRT |1|10.0.0.1|5000|\r\n").startswith(b"504 EPRT refused: data connections go to your own address only")
    # IPv6 over an IPv4 control connection: the other family (RFC 2428 §2).
    assert say(b"EPRT |2|::1|5000|\r\n") == b"522 Network protocol not supported, use (1).\r\n"
    assert say(b"REST x\r\n").startswith(b"501")
    assert say(b"TYPE E\r\n").startswith(b"504")
    assert say(b"MODE B\r\n").startswith(b"504")
    assert say(b"ABOR\r\n").startswith(b"225")
    assert say(b"RNTO x\r\n").startswith(b"503 RNTO needs RNFR first")
    assert say(b"STOR\r\n").startswith(b"501")
    # Telnet IP and DM before ABOR (RFC 959 §4.1.3) are skipped.
    assert say(b"\xff\xf4\xff\xf2ABOR\r\n").startswith(b"225")


def test_a_write_error_fails_the_upload_with_a_write_error():
    import errno

    from twisted.internet.testing import StringTransport as Transport

    from twisted_mailhub.ftp.data import DataConnection, TransferWriteError

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    channel = DataChannel(MemoryReactorClock(), "127.0.0.1", "127.0.0.1", 0, timeout=5)
    conn = DataConnection(channel)
    conn.makeConnection(Transport())
    done = conn.receive(FullDisk(), ascii=False)
    conn.dataReceived(b"data")
    failure = result_of(done)
    assert failure.check(TransferWriteError)
    assert "no space left on the server's disk" in failure.getErrorMessage()
    assert "No space left on device" not in failure.getErrorMessage()  # the hub's words, not the OS's
    assert conn.transport.disconnecting or conn.transport.disconnected


@pytest.mark.parametrize("logged_in", [False, True])
def test_no_command_in_any_form_is_an_internal_error(session, logged_in):
    from twisted_mailhub.ftp.server import COMMANDS

    proto, transport, say, clock = session
    if logged_in:
        say(b"USER alice\r\nPASS secret\r\n")
    for verb in COMMANDS:
        if verb in ("QUIT", "AUTH"):
            continue
        for arg in ("", " x", " ../../..", " -la", " 1,2,3", " |9|x|y|", " \xc3\xa9"):
            reply = say(verb.lower().encode() + arg.encode("latin-1") + b"\r\n")
            if verb == "RNFR" and reply.startswith(b"350"):
                say(b"NOOP\r\n")  # leaves RENAMING
            assert reply[:3].isdigit(), (verb, arg, reply)
            assert not reply.startswith(b"451"), (verb, arg, reply)
            assert not proto.disconnected


def test_pipelined_commands_answered_in_order_through_a_broken_and_a_slow_one(session, monkeypatch):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\n")
    slow = defer.Deferred()
    monkeypatch.setattr(proto, "ftp_SYST", lambda: 1 / 0, raising=False)
    monkeypatch.setattr(proto, "ftp_HELP", lambda arg="": slow, raising=False)
    out = say(b"NOOP\r\nSYST\r\nHELP\r\nTYPE I\r\nPWD\r\n")
    lines = out.decode().splitlines()
    # The broken command gets 451 and the queue goes on; the slow one
    # holds what follows until it answers.
    assert [line[:3] for line in lines] == ["200", "451"]
    slow.callback("214 Done.")
    lines = transport.value().decode().splitlines()
    assert [line[:3] for line in lines] == ["200", "451", "214", "200", "257"]
    assert not proto.disconnected


# -- FEAT and OPTS (RFC 2389), MLST facts (RFC 3659 §7) ----------------------------


def _home_file(tmp_path, name: str, body: bytes = b"12345") -> str:
    home = tmp_path / "ftp" / "localhost" / "alice"
    home.mkdir(parents=True, exist_ok=True)
    (home / name).write_bytes(body)
    os.chmod(home / name, 0o640)
    return str(home)


def _entry(reply: bytes) -> str:
    """The one entry line of an MLST reply (250-, entry, 250 End), without its leading space."""
    lines = reply.decode().split("\r\n")
    assert lines[0].startswith("250-") and lines[2] == "250 End", reply
    assert lines[1].startswith(" ")
    return lines[1][1:]


def test_opts_mlst_selects_the_facts_mlst_shows_and_feat_marks(session, tmp_path):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\n")
    _home_file(tmp_path, "a.txt")
    assert re.fullmatch(r"type=file;size=5;modify=\d{14};perm=adfrw; /a\.txt", _entry(say(b"MLST a.txt\r\n")))
    assert b" MLST type*;size*;modify*;perm*;unique;UNIX.mode;\r\n" in say(b"FEAT\r\n")
    # Names in any case, unknown ones ignored, the reply in the server's spelling.
    assert say(b"OPTS MLST Size;MODIFY;colour;\r\n") == b"200 MLST OPTS size;modify;\r\n"
    assert re.fullmatch(r"size=5;modify=\d{14}; /a\.txt", _entry(say(b"MLST a.txt\r\n")))
    assert b" MLST type;size*;modify*;perm;unique;UNIX.mode;\r\n" in say(b"FEAT\r\n")
    assert say(b"OPTS MLST type;unique;unix.mode;\r\n") == b"200 MLST OPTS type;unique;UNIX.mode;\r\n"
    assert re.fullmatch(r"type=file;unique=[0-9a-f]+g[0-9a-f]+;UNIX\.mode=0640; /a\.txt", _entry(say(b"MLST a.txt\r\n")))
    # None selects none: the entry is its path alone.
    assert say(b"OPTS MLST\r\n") == b"200 MLST OPTS\r\n"
    assert _entry(say(b"MLST a.txt\r\n")) == " /a.txt"
    assert b" MLST type;size;modify;perm;unique;UNIX.mode;\r\n" in say(b"FEAT\r\n")


def test_mlst_of_a_fifo_names_its_kind_and_size_refuses_it(session, tmp_path):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\nTYPE I\r\n")
    home = _home_file(tmp_path, "a.txt")
    os.mkfifo(os.path.join(home, "pipe"))
    assert re.fullmatch(r"type=OS\.unix=fifo;modify=\d{14};perm=df; /pipe", _entry(say(b"MLST pipe\r\n")))
    assert say(b"SIZE pipe\r\n") == b"550 SIZE pipe: not a regular file (a pipe or a device), so it has no size to send.\r\n"
    assert say(b"SIZE a.txt\r\n") == b"213 5\r\n"


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"OPTS UTF8 ON", b"200 UTF8 mode on; file names are UTF-8."),
        (b"opts utf8", b"200 UTF8 mode on; file names are UTF-8."),
        (b"OPTS UTF8 OFF", b"504 UTF-8 is always on here."),
        (b"OPTS", b"501 OPTS needs a command name: OPTS UTF8 ON, or OPTS MLST type;size;modify;perm;"),
        (b"OPTS RETR fast", b"501 OPTS RETR: that command has no options here (OPTS UTF8, OPTS MLST have)."),
        (b"OPTS BOGUS x", b"501 OPTS BOGUS: no such command (OPTS UTF8 ON, OPTS MLST facts)."),
        (b"OPTS MLST type; size;", b"501 OPTS MLST wants the facts as one word: OPTS MLST type;size;modify;"),
    ],
)
def test_opts_answers_each_command_it_knows_and_refuses_the_rest_with_501(session, line, reply):
    proto, transport, say, clock = session
    assert say(line + b"\r\n") == reply + b"\r\n"
    assert say(b"NOOP\r\n").startswith(b"200")


@pytest.mark.parametrize(
    "line, reply",
    [
        # Before: "501 DELE needs an argument.", "504 TYPE : use TYPE A or
        # TYPE I." (a blank where the argument was), '501 REST wants a
        # byte offset, got "".', and PASS alone a failed login.
        (b"DELE", b"501 DELE needs a file name: DELE <file>."),
        (b"RMD", b"501 RMD needs a directory name: RMD <directory>."),
        (b"XRMD", b"501 RMD needs a directory name: RMD <directory>."),  # (RFC 775's name for RMD)
        (b"TYPE", b"501 TYPE needs a type: TYPE A (text, line ends converted) or TYPE I (binary)."),
        (b"MODE", b"501 MODE needs a mode: MODE S (stream, the only mode here)."),
        (b"STRU", b"501 STRU needs a structure: STRU F (file, the only structure here)."),
        (b"REST", b"501 REST needs a byte offset: REST <offset>, then RETR or STOR to resume there."),
        (b"SITE", b"501 SITE needs a command: " + server.SYNTAX["SITE"].encode() + b"."),
        (b"AUTH", b"501 AUTH needs a mechanism: AUTH TLS, then PBSZ 0 and PROT P for encrypted data."),
    ],
)
def test_a_command_without_its_argument_says_which_and_gives_the_form(session, line, reply):
    proto, transport, say, clock = session
    say(b"USER alice\r\nPASS secret\r\n")
    assert say(line + b"\r\n") == reply + b"\r\n"
    assert say(b"NOOP\r\n") == b"200 NOOP ok.\r\n"


def test_pass_without_the_password_says_so_and_waits_for_it(session):
    proto, transport, say, clock = session
    assert say(b"USER alice\r\n").startswith(b"331")
    assert say(b"PASS\r\n") == b"501 PASS needs the password: PASS <password>, after USER.\r\n"
    assert say(b"PASS secret\r\n").startswith(b"230")


def test_a_data_connection_that_cannot_be_started_is_425_with_no_traceback(tmp_path):
    # A link-local client (fe80::1%eth0) names its own address with a scope
    # id no interface of ours has: EPRT is its own address (the scope is
    # not part of the comparison), and the transfer that cannot connect is
    # 425 with the reason, one warning, no #critical traceback.
    from twisted.internet.address import IPv6Address
    from twisted.logger import LogLevel, globalLogPublisher

    clock = task.Clock()
    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    hub = Hub(clock, {"ftp-data-timeout": 5}, accounts, MemoryStore(), str(tmp_path), "mail.test")
    component.install(hub)
    factory = MailhubFTPFactory(hub, idle_timeout=30, data_timeout=5)
    peer = IPv6Address("TCP", "fe80::1", 5000)
    proto = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv6Address("TCP", "::1", 2121))
    proto.makeConnection(transport)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        proto.dataReceived(b"USER alice\r\nPASS secret\r\n")
        transport.clear()
        proto.dataReceived(b"EPRT |2|fe80::1%nosuchif9|40000|\r\n")
        assert transport.value() == b"200 EPRT command successful.\r\n"
        transport.clear()
        proto.dataReceived(b"LIST\r\n")
        replies = transport.value().decode().splitlines()
        assert replies[0].startswith("150 ")
        assert replies[1] == "425 Cannot open the data connection to fe80::1%nosuchif9 port 40000."
        transport.clear()
        clock.advance(6)  # past the data timeout: nothing was left to fire
        assert transport.value() == b""
        assert not transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert not [e for e in seen if e.get("log_level") in (LogLevel.critical, LogLevel.error) or "log_failure" in e]
    assert [e for e in seen if e.get("log_level") is LogLevel.warn and "cannot connect" in e.get("log_format", "")]


# -- Twisted's connection errors in log lines: words, not Python's text ---------------


def test_twisteds_listen_and_connect_errors_are_said_in_words():
    from twisted.internet import error

    from twisted_mailhub.ftp.data import reason_words

    said = [
        reason_words(error.CannotListenError("127.0.0.1", 50000, OSError(98, "Address already in use"))),
        reason_words(error.ConnectBindError(98, "Address already in use")),
        reason_words(error.ConnectionRefusedError(111, "Connection refused")),
        reason_words(error.ConnectError(111)),
        reason_words(error.TimeoutError()),
        reason_words(ValueError()),
    ]
    assert said == [
        "cannot listen on 127.0.0.1 port 50000: Address already in use",
        "Address already in use",
        "Connection refused",
        os.strerror(111),
        "user timeout caused connection failure",
        "an unexpected error",
    ]
    for line in said:
        assert "Errno" not in line and "98" not in line and "Error" not in line


def test_the_copy_an_append_or_rest_starts_from_is_made_off_the_reactor(tmp_path, monkeypatch):
    # APPE (or REST then STOR) on a complete file continues on a copy of
    # it: a file of gigabytes was copied in the reactor, every session
    # waiting. The copy is made where _off_reactor runs it (a thread).
    from twisted_mailhub.ftp import vfs

    jobs = []

    def later(function):
        d = defer.Deferred()
        jobs.append((function, d))
        return d

    monkeypatch.setattr(vfs, "_off_reactor", later, raising=False)
    shell = DiskShell(str(tmp_path))
    (tmp_path / "f").write_bytes(b"0123456789")
    opening = shell.openForWritingAt(["f"], 0, True)
    assert not opening.called and not (tmp_path / partial_name("f")).exists()  # (before: copied here)
    [(function, d)] = jobs
    d.callback(function())
    w = result_of(opening)
    w.write(b"!")
    w.file.close()
    assert (tmp_path / partial_name("f")).read_bytes() == b"0123456789!"
    # A plain STOR copies nothing: opened at once.
    w = result_of(shell.openForWritingAt(["g"], 0, False))
    w.discard()
    assert len(jobs) == 1


def test_a_big_file_removed_is_gone_at_once_and_its_blocks_are_freed_off_the_reactor(tmp_path, monkeypatch):
    # DELE of a file of gigabytes: its unlink waits on the file system
    # while it frees the blocks; it ran in the reactor, every session waiting.
    from twisted_mailhub.ftp import vfs

    jobs = []

    def later(function):
        if function.__name__ == "listing":
            return defer.maybeDeferred(function)  # (a listing, off the reactor too: run at once here; the unlink is held)
        d = defer.Deferred()
        jobs.append((function, d))
        return d

    monkeypatch.setattr(vfs, "_off_reactor", later, raising=False)
    monkeypatch.setattr(vfs, "UNLINK_LATER_OVER", 1000, raising=False)
    shell = DiskShell(str(tmp_path))
    (tmp_path / "big").write_bytes(b"x" * 5000)
    (tmp_path / "small").write_bytes(b"x" * 10)
    removed = []
    shell.removeFile(["big"]).addBoth(removed.append)
    assert removed == [None]  # answered once the name's removal is durable
    assert [name for name, _ in result_of(shell.list([], ("size",)))] == ["small"]  # gone for every reader
    [hidden] = [n for n in os.listdir(tmp_path) if n not in ("small",)]
    assert (tmp_path / hidden).stat().st_size == 5000  # (before: unlinked in the call)
    [(function, d)] = jobs
    d.callback(function())
    assert sorted(os.listdir(tmp_path)) == ["small"]
    result_of(shell.removeFile(["small"]))  # (a small one: unlinked at once)
    assert os.listdir(tmp_path) == [] and len(jobs) == 1


def test_cwd_into_a_big_folder_does_not_list_it_in_the_reactor(tmp_path, monkeypatch):
    # CWD's check (DiskShell.access) runs in the reactor: it opens the
    # folder (EACCES shows there) and does not read its 20,000 names.
    (tmp_path / "big").mkdir()
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(p) or real_listdir(p))
    shell = DiskShell(str(tmp_path))
    assert result_of(shell.access(["big"])) is None
    assert listed == []  # (before: os.listdir of the whole folder)
