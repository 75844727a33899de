"""
Real sync clients against the real hub (issue 9, "Done means"): C{mbsync}
(isync) and C{offlineimap}, both from Debian, each syncing INBOX with a
local Maildir both ways, twice, with messages added, flags changed and
messages deleted on both sides between the runs. After every run both
sides are read back (the hub over IMAP, the Maildir from its files) and
must hold the same messages with the same flags: nothing lost, nothing
duplicated.

Without the tool the test is skipped, saying so, except under CI (C{CI}
set), where it fails: CI installs them (.ci/run).
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import time

import pytest

# Maildir info letters (the Maildir spec, "info semantics") and IMAP flags.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
SYNCED_FLAGS = set(MAILDIR_FLAGS.values())
SYNC_TIMEOUT = 60


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install isync offlineimap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def message(ident: str, subject: str | None = None) -> bytes:
    """A small message whose Message-ID says which one it is."""
    return (
        f"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: {subject or ident}\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{ident}@sync.test>\r\n\r\n"
        f"Body of {ident}.\r\n"
    ).encode()


def body_of(ident: str) -> bytes:
    return message(ident).split(b"\r\n\r\n", 1)[1]


def ident_of(raw: bytes) -> str:
    m = re.search(rb"(?im)^Message-ID:\s*<([^@>]+)@sync\.test>", raw)
    assert m, raw[:300]
    return m.group(1).decode()


# -- the hub's side, over IMAP ------------------------------------------------------


class HubSide:
    """A folder of alice's on the hub, read and changed with imaplib."""

    def __init__(self, hub, folder: str = "INBOX"):
        self.port = hub.ports["imap"]
        self.folder = folder

    def _client(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port)
        c.login("alice", "secret")
        typ, data = c.select(self.folder)
        assert typ == "OK", (self.folder, data)
        return c

    def add(self, ident: str, flags: str = "") -> None:
        c = self._client()
        typ, data = c.append(self.folder, f"({flags})" if flags else None, None, message(ident))
        assert typ == "OK", data
        c.logout()

    def read(self) -> dict[str, set[str]]:
        """Message ident -> IMAP flags (a list of idents if one is there twice)."""
        c = self._client()
        typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] BODY.PEEK[TEXT])")
        assert typ == "OK", data
        c.logout()
        found: dict[str, set[str]] = {}
        items = [item for item in data if isinstance(item, tuple)]
        for header, text in zip(items[::2], items[1::2]):
            flags = set(re.search(rb"FLAGS \(([^)]*)\)", header[0]).group(1).decode().split())
            ident = ident_of(header[1])
            assert text[1] == body_of(ident), f"{ident}'s text on the hub is {text[1]!r}"
            assert ident not in found, f"{ident} is on the hub twice"
            found[ident] = flags & SYNCED_FLAGS
        return found

    def set_flags(self, ident: str, op: str, flags: str) -> None:
        c = self._client()
        uid = self._uid(c, ident)
        typ, data = c.uid("STORE", uid, op + "FLAGS", f"({flags})")
        assert typ == "OK", data
        c.logout()

    def delete(self, ident: str) -> None:
        c = self._client()
        uid = self._uid(c, ident)
        assert c.uid("STORE", uid, "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        c.logout()

    @staticmethod
    def _uid(c: imaplib.IMAP4, ident: str) -> str:
        typ, data = c.uid("SEARCH", "HEADER", "Message-ID", f"<{ident}@sync.test>")
        uids = data[0].split()
        assert typ == "OK" and len(uids) == 1, (ident, data)
        return uids[0].decode()


# -- the local side, a Maildir ------------------------------------------------------


class MaildirSide:
    """A local Maildir as a sync client keeps it (files in new/ and cur/)."""

    def __init__(self, path: str):
        self.path = path
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        self._n = 0

    def files(self) -> dict[str, str]:
        """Message ident -> file path (fails on a message there twice)."""
        found: dict[str, str] = {}
        for sub in ("new", "cur"):
            directory = os.path.join(self.path, sub)
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    raw = f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                ident = ident_of(raw)
                assert raw.split(b"\r\n\r\n", 1)[1] == body_of(ident), f"{path} holds {raw!r}"
                assert ident not in found, f"{ident} is in the Maildir twice: {found[ident]} and {path}"
                found[ident] = path
        return found

    def read(self) -> dict[str, set[str]]:
        return {ident: self._flags(path) for ident, path in self.files().items()}

    @staticmethod
    def _flags(path: str) -> set[str]:
        name = os.path.basename(path)
        info = name.rsplit(":2,", 1)[1] if ":2," in name else ""
        return {MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS}

    def add(self, ident: str, letters: str = "") -> None:
        self._n += 1
        name = f"{int(time.time())}.local{self._n}_{os.getpid()}.synctest"
        tmp = os.path.join(self.path, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(message(ident).replace(b"\r\n", b"\n"))
        if letters:
            os.rename(tmp, os.path.join(self.path, "cur", name + ":2," + "".join(sorted(letters))))
        else:
            os.rename(tmp, os.path.join(self.path, "new", name))

    def set_letters(self, ident: str, letters: str) -> None:
        """Give a message exactly these Maildir flags (moving it to cur/)."""
        path = self.files()[ident]
        base = os.path.basename(path).split(":2,", 1)[0]
        os.rename(path, os.path.join(self.path, "cur", base + ":2," + "".join(sorted(letters))))

    def letters(self, ident: str) -> str:
        name = os.path.basename(self.files()[ident])
        return name.rsplit(":2,", 1)[1] if ":2," in name else ""

    def delete(self, ident: str) -> None:
        os.unlink(self.files()[ident])


def run(argv: list[str], cwd: str, env: dict) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=SYNC_TIMEOUT)
    out = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{out}"
    return out


def assert_same(hub_side: HubSide, local: MaildirSide, expected: dict[str, set[str]]) -> None:
    on_hub, on_disk = hub_side.read(), local.read()
    assert on_hub == expected, f"hub has {on_hub}, expected {expected}"
    assert on_disk == expected, f"Maildir has {on_disk}, expected {expected}"


def exercise(hub, sync, local: MaildirSide) -> None:
    """
    The scenario both clients go through: a first sync of messages on both
    sides, then two rounds of changes on both sides (new messages, flags
    set and cleared, deletions), each followed by a sync; both sides are
    compared with what they must hold after every run.
    """
    remote = HubSide(hub)
    remote.add("h1")
    remote.add("h2", "\\Seen")
    remote.add("h3", "\\Flagged")
    remote.add("h4")
    local.add("l1")
    local.add("l2", "S")
    local.add("l3", "F")
    sync()
    expected = {
        "h1": set(), "h2": {"\\Seen"}, "h3": {"\\Flagged"}, "h4": set(),
        "l1": set(), "l2": {"\\Seen"}, "l3": {"\\Flagged"},
    }
    assert_same(remote, local, expected)

    # Round 1: changes on both sides, on different messages.
    remote.add("h5", "\\Answered")
    remote.set_flags("h1", "+", "\\Seen \\Flagged")
    remote.set_flags("l2", "-", "\\Seen")
    remote.delete("h4")
    local.add("l4", "S")
    local.set_letters("h2", "RS")
    local.set_letters("l3", "")
    local.delete("l1")
    sync()
    expected.update({"h5": {"\\Answered"}, "h1": {"\\Seen", "\\Flagged"}, "l2": set(), "l4": {"\\Seen"}, "h2": {"\\Seen", "\\Answered"}, "l3": set()})
    del expected["h4"], expected["l1"]
    assert_same(remote, local, expected)

    # Round 2: again, touching messages the other side made.
    remote.add("h6")
    remote.set_flags("l4", "+", "\\Flagged")
    remote.delete("l3")
    local.add("l5", "F")
    local.set_letters("h5", "RS")
    local.delete("h3")
    sync()
    expected.update({"h6": set(), "l4": {"\\Seen", "\\Flagged"}, "l5": {"\\Flagged"}, "h5": {"\\Answered", "\\Seen"}})
    del expected["l3"], expected["h3"]
    assert_same(remote, local, expected)

    # A sync with nothing changed changes nothing.
    sync()
    assert_same(remote, local, expected)

    # Both sides change the same message's flags: the client merges them.
    remote.set_flags("h6", "+", "\\Flagged")
    local.set_letters("h6", "S")
    sync()
    expected["h6"] = {"\\Flagged", "\\Seen"}
    assert_same(remote, local, expected)


def exercise_new_folder(hub, sync, local: MaildirSide) -> None:
    """
    A folder made on the client's side is created on the hub (CREATE) with
    its messages; later changes to it flow both ways.
    """
    local.add("p1")
    sync()
    remote = HubSide(hub, "Projects")
    assert_same(remote, local, {"p1": set()})
    remote.add("p2", "\\Draft")
    local.set_letters("p1", "S")
    sync()
    assert_same(remote, local, {"p1": {"\\Seen"}, "p2": {"\\Draft"}})


# -- mbsync (isync) -------------------------------------------------------------------


MBSYNC_CONFIG = """\
IMAPAccount hub
Host 127.0.0.1
Port {port}
User alice
Pass secret
SSLType STARTTLS
CertificateFile {cert}
AuthMechs LOGIN
Timeout 30

IMAPStore hub-remote
Account hub

MaildirStore local
Path {root}/
Inbox {inbox}
SubFolders Verbatim

Channel inbox
Far :hub-remote:
Near :local:
Patterns INBOX Projects
Create Both
Expunge Both
SyncState *
CopyArrivalDate yes
Sync All
"""


def test_mbsync_syncs_both_ways_twice_without_loss_or_duplicates(hub, tmp_path):
    mbsync = need("mbsync")
    root = tmp_path / "mbsync"
    local = MaildirSide(str(root / "INBOX"))
    config = tmp_path / "mbsyncrc"
    config.write_text(MBSYNC_CONFIG.format(port=hub.ports["imap"], root=root, inbox=root / "INBOX", cert=hub.certificate_path))
    env = dict(os.environ, HOME=str(tmp_path))
    log = []

    def sync():
        log.append(run([mbsync, "-c", str(config), "-V", "inbox"], str(tmp_path), env))

    exercise(hub, sync, local)
    exercise_new_folder(hub, sync, MaildirSide(str(root / "Projects")))


# -- offlineimap ------------------------------------------------------------------------


OFFLINEIMAP_CONFIG = """\
[general]
accounts = hub
metadata = {metadata}
ui = basic
maxsyncaccounts = 1

[Account hub]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {root}

[Repository remote]
type = IMAP
# localhost (from /etc/hosts): offlineimap checks only DNS names of the certificate
remotehost = localhost
remoteport = {port}
remoteuser = alice
remotepass = secret
# implicit TLS (imaps): offlineimap's imaplib2 can hang after STARTTLS,
# against Dovecot too (its reader thread misses the first TLS record)
ssl = yes
sslcacertfile = {cert}
maxconnections = 1
holdconnectionopen = no
folderfilter = lambda name: name in ('INBOX', 'Projects')
"""


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "compress-deflate"])
def test_offlineimap_syncs_both_ways_twice_without_loss_or_duplicates(start_hub, tmp_path, compressed):
    """With C{usecompression}, offlineimap speaks COMPRESS=DEFLATE (RFC 4978) too."""
    hub = start_hub("--transcript")
    offlineimap = need("offlineimap")
    root = tmp_path / "offlineimap"
    local = MaildirSide(str(root / "INBOX"))
    config = tmp_path / "offlineimaprc"
    config.write_text(
        OFFLINEIMAP_CONFIG.format(port=hub.ports["imaps"], root=root, metadata=tmp_path / "offlineimap-state", cert=hub.certificate_path)
        + f"usecompression = {'yes' if compressed else 'no'}\n"
    )
    env = dict(os.environ, HOME=str(tmp_path))
    log = []

    def sync():
        log.append(run([offlineimap, "-c", str(config), "-o", "-u", "basic"], str(tmp_path), env))

    exercise(hub, sync, local)
    # the session log (plain lines above the compression layer) shows it was used
    assert (" COMPRESS DEFLATE" in hub.log) == compressed
    exercise_new_folder(hub, sync, MaildirSide(str(root / "Projects")))
