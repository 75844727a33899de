"""
twisted_mailhub.testing.Mailhub, the controller shipped for users' tests:
started as a user would (outside pytest's fixtures), spoken to with the
standard library's clients.
"""

from __future__ import annotations

import ftplib
import imaplib
import json
import urllib.error
import io
import os
import signal
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

import attr
import pytest

from twisted_mailhub.testing import DEFAULT_HOSTNAME, Mailhub, MailhubStartError, hub_pythonpath

ALICE = "alice@example.com"


def message(subject: str, to: str = ALICE, body: str = "hello\n") -> EmailMessage:
    m = EmailMessage()
    m["From"] = ALICE
    m["To"] = to
    m["Subject"] = subject
    m.set_content(body)
    return m


@pytest.fixture(scope="module")
def shared():
    with Mailhub(accounts=[f"{ALICE}:secret", "bob:hungry"], domains=["example.com"]) as hub:
        yield hub


@pytest.fixture
def hub(shared):
    shared.purge()
    return shared


def submit(hub: Mailhub, m: EmailMessage) -> None:
    with smtplib.SMTP(hub.listeners["submission"].host, hub.listeners["submission"].port, timeout=10) as s:
        s.starttls(context=hub.ssl_context)
        s.login(ALICE, "secret")
        s.send_message(m)


def test_every_listener_has_a_loopback_host_and_a_bound_port(hub):
    assert {"smtp", "submission", "pop3", "imap", "ftp"} <= set(hub.listeners)
    for name, listener in hub.listeners.items():
        assert listener.host == "127.0.0.1"
        assert hub.ports[name] == listener.port > 0
    assert hub.listeners["smtps"].tls == "implicit"


def test_ssl_context_verifies_the_hubs_certificate_on_an_implicit_tls_listener(hub):
    where = hub.listeners["imaps"]
    client = imaplib.IMAP4_SSL(where.host, where.port, ssl_context=hub.ssl_context, timeout=10)
    try:
        assert client.sock.getpeercert()["subjectAltName"]
        assert hub.ssl_context.verify_mode == ssl.CERT_REQUIRED and hub.ssl_context.check_hostname
    finally:
        client.logout()


def test_message_sent_over_starttls_is_waited_for_and_read_raw_and_parsed(hub):
    submit(hub, message("Welcome aboard", body="Click to activate.\n"))
    got = hub.wait_for_message(to=ALICE, subject="Welcome", timeout=10)
    assert got.subject == "Welcome aboard"
    assert got.text() == "Click to activate.\n"
    assert got["To"] == ALICE
    assert got.raw.startswith(b"Return-Path: <alice@example.com>\r\n")
    assert b"\r\n\r\nClick to activate.\r\n" in got.raw
    [listed] = hub.messages(ALICE)
    assert listed.raw == got.raw and listed.uid == got.uid
    assert "\\Seen" not in listed.flags  # reading does not mark it read


def test_wait_for_message_skips_messages_that_do_not_match(hub):
    submit(hub, message("first"))
    submit(hub, message("second", to="bob@example.com"))
    got = hub.wait_for_message(to="bob@example.com", timeout=10)
    assert got.account == "bob@example.com" and got.subject == "second"


def test_wait_for_message_times_out_saying_what_arrived(hub):
    submit(hub, message("something else"))
    hub.wait_for_message(subject="something else", timeout=10)
    with pytest.raises(TimeoutError) as caught:
        hub.wait_for_message(to=ALICE, subject="never sent", timeout=0.3)
    assert "never sent" in str(caught.value) and "something else" in str(caught.value)


def test_messages_of_another_folder(hub):
    client = hub.imap(ALICE)
    try:
        client.append("Sent", None, None, message("kept copy").as_bytes().replace(b"\n", b"\r\n"))
    finally:
        client.logout()
    assert [m.subject for m in hub.messages(ALICE, folder="Sent")] == ["kept copy"]
    assert hub.messages(ALICE) == []


def test_api_calls_the_json_api_as_an_account(hub):
    submit(hub, message("via the api"))
    hub.wait_for_message(subject="via the api")
    listing = hub.api(ALICE, "GET", "/accounts/me/folders/INBOX/messages")
    assert [m["subject"] for m in listing["messages"]] == ["via the api"]
    hub.api(ALICE, "PUT", "/accounts/me/files/notes/a.txt", body=b"text")
    assert hub.api(ALICE, "GET", "/accounts/me/files/notes/a.txt") == b"text"
    with pytest.raises(urllib.error.HTTPError) as caught:
        hub.api(ALICE, "GET", "/accounts/me/folders/INBOX/messages/999")
    assert caught.value.code == 404 and json.loads(caught.value.read())["error"]["code"] == "no_such_message"
    # what the API said is in the error a failing test prints, not only "Not Found"
    with pytest.raises(urllib.error.HTTPError) as caught:
        hub.api(ALICE, "GET", "/accounts/me/folders/NoSuch/messages")
    error = json.loads(caught.value.read())["error"]
    assert str(caught.value) == f"HTTP Error 404: Not Found: {error['message']}" and error["message"]


def test_files_gives_every_uploaded_file_by_path(hub):
    client = hub.ftp(ALICE)
    try:
        client.mkd("reports")
        client.storbinary("STOR reports/q1.csv", io.BytesIO(b"a,b\r\n1,2\r\n"))
        client.storbinary("STOR notes.txt", io.BytesIO(b"hi"))
    finally:
        client.quit()
    assert hub.files(ALICE) == {"notes.txt": b"hi", "reports/q1.csv": b"a,b\r\n1,2\r\n"}


def test_purge_empties_mail_and_files_and_drops_made_folders(hub):
    submit(hub, message("to be purged"))
    hub.wait_for_message(subject="to be purged")
    client = hub.imap(ALICE)
    try:
        client.create("Projects")
    finally:
        client.logout()
    ftp = hub.ftp(ALICE)
    try:
        ftp.mkd("dir")
        ftp.storbinary("STOR dir/f", io.BytesIO(b"x"))
    finally:
        ftp.quit()
    hub.purge()
    assert hub.messages(ALICE) == []
    assert "Projects" not in hub.folders(ALICE) and "Sent" in hub.folders(ALICE)
    assert hub.files(ALICE) == {}


def test_purge_leaves_the_subscriptions_of_a_new_account(hub):
    # Found by breaker2: the folders a test made were deleted, but their
    # names stayed subscribed (RFC 9051 §6.3.9: DELETE leaves them), so
    # the next test's LSUB listed "Projects" (\Noselect), and a folder the
    # test unsubscribed stayed unsubscribed.
    def subscribed(client):
        return sorted(line.rsplit(b' "/" ', 1)[1].strip(b'"').decode() for line in client.lsub()[1])

    client = hub.imap(ALICE)
    try:
        fresh = subscribed(client)
        client.create("Projects/2026")
        client.subscribe("Projects/2026")
        client.subscribe("Projects")
        client.subscribe("Nowhere")
        client.unsubscribe("Trash")
    finally:
        client.logout()
    hub.purge()
    client = hub.imap(ALICE)
    try:
        assert subscribed(client) == fresh and "Trash" in fresh
    finally:
        client.logout()


def test_add_account_takes_effect_without_a_restart(tmp_path):
    with Mailhub(accounts=["alice:secret"], data_dir=str(tmp_path / "d")) as hub:
        with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
            s.send_message(message("before"), "someone@example.net", ["alice@localhost"])
        pid, ports = hub.pid, dict(hub.ports)
        assert hub.add_account("carol", "pw") == "carol@localhost"
        assert (hub.pid, hub.ports) == (pid, ports)
        with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
            s.send_message(message("after", to="carol@localhost"), "someone@example.net", ["carol@localhost"])
        assert hub.wait_for_message(to="carol@localhost").subject == "after"
        assert [m.subject for m in hub.messages("alice")] == ["before"]


def test_add_account_without_an_accounts_file_restarts_the_hub(tmp_path):
    with Mailhub(accounts=["alice:secret"], accounts_file=False, data_dir=str(tmp_path / "d")) as hub:
        pid = hub.pid
        hub.add_account("carol", "pw")
        assert hub.pid != pid
        assert hub.messages("carol") == []


def test_restart_comes_back_on_free_ports_when_an_old_one_was_taken(tmp_path):
    with Mailhub("--no-ftp", accounts=["alice:secret"], data_dir=str(tmp_path / "d")) as hub:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            # As if another process had taken pop3's port while it restarted.
            hub.listeners["pop3"] = attr.evolve(hub.listeners["pop3"], port=taken)
            hub.restart()
            assert hub.ports["pop3"] != taken
            assert "a port was taken; restart on free ports" in hub.log
            assert hub.messages("alice") == []  # and it answers


def test_stop_ends_the_process_and_removes_the_temp_data_folder():
    hub = Mailhub().start()
    pid, data_dir = hub.pid, hub.data_dir
    assert os.path.isdir(data_dir)
    # twistd shuts down cleanly, then ends by the signal it was sent.
    assert hub.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down" in hub.log
    assert not os.path.exists(data_dir)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failing_start_raises_with_the_hubs_log_and_leaves_nothing():
    hub = Mailhub("--store", "no-such-store")
    with pytest.raises(MailhubStartError) as caught:
        hub.start()
    assert "no-such-store" in caught.value.log
    assert "exited with status" in str(caught.value)
    assert hub.process is None and not hub.data_dir


def test_an_option_is_passed_through_to_the_hub():
    with Mailhub("--no-ftp", "--max-message-size", "100") as hub:
        assert "ftp" not in hub.ports
        with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
            with pytest.raises(smtplib.SMTPSenderRefused):
                s.sendmail("x@example.net", ["alice@localhost"], b"Subject: big\r\n\r\n" + b"x" * 500)
        with pytest.raises(RuntimeError, match="ftp listener"):
            hub.files("alice")


def test_an_account_with_a_utf8_name_reads_its_mail_and_folders_as_stored(tmp_path):
    # imap(), messages(), wait_for_message() and purge() raised
    # UnicodeEncodeError for zoë (imaplib's LOGIN is ASCII), and .raw of an
    # SMTPUTF8 message was its RFC 6857 downgrade, not the stored bytes.
    zoe = "zoë@example.com"
    with Mailhub("--no-sftp", accounts=[f"{zoe}:pässword", "bob:hungry"], domains=["example.com"], data_dir=str(tmp_path / "data")) as hub:
        body = "From: Jörg <jörg@example.com>\r\nTo: zoë@example.com\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode("utf-8")
        with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
            s.sendmail("jörg@example.com", [zoe], body, mail_options=["SMTPUTF8"])
        found = hub.wait_for_message(to=zoe, subject="Grüße", timeout=10)
        assert found.raw.endswith(body)
        assert found.message["From"] == "Jörg <jörg@example.com>"
        client = hub.imap(zoe)
        assert client.create("Entw&APw-rfe")[0] == "OK"  # modified UTF-7 (RFC 3501 §5.1.3)
        assert client.append("Entw&APw-rfe", None, None, b"Subject: draft\r\n\r\nx\r\n")[0] == "OK"
        client.logout()
        assert [m.subject for m in hub.messages(zoe, "Entwürfe")] == ["draft"]
        assert "Entwürfe" in hub.folders(zoe)
        hub.purge()
        assert hub.messages(zoe) == []
        assert "Entwürfe" not in hub.folders(zoe)


# -- MAILHUB_KEEP_LOGS: every hub a test starts keeps its log -------------------


def test_a_hub_a_test_starts_with_its_own_twistd_call_keeps_its_output(tmp_path, monkeypatch):
    from tests.test_tap import twistd

    kept = tmp_path / "kept"
    monkeypatch.setenv("MAILHUB_KEEP_LOGS", str(kept))
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d"), "--store", "no-such-store", data=str(tmp_path))
    assert result.returncode != 0
    (only,) = kept.iterdir()
    assert only.name.startswith("tests_test_testing.py_test_a_hub_a_test_starts_with_its_own_twistd_call_keeps_its_output-")
    assert "no-such-store" in only.read_text()


def test_log_files_hubs_wrote_in_a_tests_folder_are_kept_and_data_files_are_not(tmp_path, monkeypatch):
    from tests.conftest import _keep_log_files

    kept = tmp_path / "kept"
    monkeypatch.setenv("MAILHUB_KEEP_LOGS", str(kept))
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "twistd.log").write_text("2026-01-01T00:00:00+0000 [-] Log opened.\n")
    (tmp_path / "hub" / "twistd.log.1").write_text("2025-12-31T00:00:00+0000 [twisted_mailhub.hub#info] older\n")
    (tmp_path / "hub" / "journal.log").write_text("not a hub's log\n")
    _keep_log_files(tmp_path / "hub")
    texts = sorted(p.read_text() for p in kept.iterdir())
    assert texts == [
        "---- twistd.log ----\n2026-01-01T00:00:00+0000 [-] Log opened.\n",
        "---- twistd.log.1 ----\n2025-12-31T00:00:00+0000 [twisted_mailhub.hub#info] older\n",
    ]


def test_a_mailhub_keeps_one_log_through_its_restarts(tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    monkeypatch.setenv("MAILHUB_KEEP_LOGS", str(kept))
    with Mailhub("--no-ftp", "--no-sftp") as hub:
        hub.restart()
    (only,) = kept.iterdir()
    text = only.read_text()
    assert text.count("mailhub ready") == 2 and "---- restart ----" in text


# -- the kit's certificate names the hostname the hub is given -------------------------


def test_the_certificate_names_a_hostname_given_as_an_option_and_the_loopback_names():
    with Mailhub("--hostname", "mx.kit.test", "--no-ftp", "--no-sftp") as hub:
        assert hub.hostname == "mx.kit.test"
        port = hub.ports["smtps"]
        for name in ("mx.kit.test", "localhost", "127.0.0.1"):
            raw = socket.create_connection((hub.host, port), timeout=10)
            with hub.ssl_context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.recv(100).startswith(b"220 mx.kit.test ")
        with pytest.raises(ssl.SSLCertVerificationError):
            hub.ssl_context.wrap_socket(socket.create_connection((hub.host, port), timeout=10), server_hostname=DEFAULT_HOSTNAME)
        assert "was made for" not in hub.log


def test_a_hostname_option_in_either_spelling_is_the_kits_hostname():
    assert Mailhub("--hostname=a.kit.test").hostname == "a.kit.test"
    assert Mailhub("--hostname", "b.kit.test", hostname="ignored.test").hostname == "b.kit.test"
    assert Mailhub(hostname="c.kit.test").hostname == "c.kit.test"
    assert Mailhub().hostname == DEFAULT_HOSTNAME


def test_a_data_folder_used_again_under_another_hostname_gets_a_certificate_for_it(tmp_path):
    with Mailhub("--no-ftp", "--no-sftp", data_dir=str(tmp_path / "d"), hostname="one.kit.test"):
        pass
    with Mailhub("--no-ftp", "--no-sftp", data_dir=str(tmp_path / "d"), hostname="two.kit.test") as hub:
        raw = socket.create_connection((hub.host, hub.ports["smtps"]), timeout=10)
        with hub.ssl_context.wrap_socket(raw, server_hostname="two.kit.test") as tls:
            assert tls.recv(100).startswith(b"220 two.kit.test ")
        assert "was made for" not in hub.log


def test_add_account_refuses_what_the_hub_would_refuse_at_once_and_changes_nothing(tmp_path):
    # add_account("bad name", ...) wrote the line, waited 10 s and raised a
    # TimeoutError with the whole log; the broken line stayed in the file,
    # so every later add_account timed out too.
    with Mailhub(accounts=["alice:secret"], data_dir=str(tmp_path / "d")) as hub:
        pid = hub.pid
        for name, password, words in (
            ("bad name", "x", "a blank or other white space"),
            ("eve", "", "an empty password"),
            ("eve", "pw\nmallory:pw", "a line end"),
            ("eve", "pw ", "ends in a blank"),
        ):
            with pytest.raises(ValueError) as caught:
                hub.add_account(name, password, timeout=30)
            assert words in str(caught.value), str(caught.value)
        assert "mallory" not in open(hub._accounts_path()).read()
        assert sorted(hub.accounts) == ["alice@localhost"]
        # the hub never saw them, and the next account works
        assert "accounts not reloaded" not in hub.log
        assert hub.add_account("carol", "pw") == "carol@localhost"
        assert hub.pid == pid
        with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
            s.send_message(message("hi carol", to="carol@localhost"), "someone@example.net", ["carol@localhost"])
        assert hub.wait_for_message(to="carol@localhost").subject == "hi carol"
        with pytest.raises(ValueError):
            Mailhub(accounts=["odd name:pw"])



def test_wait_for_message_by_address_is_not_stopped_by_a_field_the_email_package_cannot_parse(hub):
    # To: =?utf-8?B?<0xff>?= makes the standard library's address parser raise
    # IndexError: wait_for_message(to=...) raised it for every later search of
    # the folder instead of finding the message it waited for.
    odd = b"Subject: odd\r\nTo: =?utf-8?B?\xff?=\r\nCc: =?utf-8?B?\xff?=\r\n\r\nhello\r\n"
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("eve@example.org", [ALICE], odd)
        s.sendmail("eve@example.org", [ALICE], b"Subject: for carol\r\nTo: Carol <carol@example.org>\r\n\r\nx\r\n")
    assert hub.wait_for_message(to="carol@example.org", timeout=10).subject == "for carol"
    with pytest.raises(TimeoutError):
        hub.wait_for_message(to="nobody@example.org", timeout=0.5)


def test_a_broken_encoded_word_subject_reads_as_the_webmail_and_the_api_show_it(hub):
    # The kit's subject came from email.policy.default ("!!!notbase64
    # lunch") while the webmail and the JSON API show the field as sent.
    broken = b"Subject: =?utf-8?B?!!!notbase64?= lunch\r\n\r\nhello\r\n"
    good = b"Subject: =?utf-8?B?w6ljb2xl?= ok\r\n\r\nhello\r\n"
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("eve@example.org", [ALICE], broken)
        s.sendmail("eve@example.org", [ALICE], good)
    got = hub.wait_for_message(to=ALICE, subject="=?utf-8?B?!!!notbase64?=", timeout=10)
    assert got.subject == "=?utf-8?B?!!!notbase64?= lunch"
    assert hub.wait_for_message(to=ALICE, subject="école", timeout=10).subject == "école ok"
    listing = hub.api(ALICE, "GET", "/accounts/me/folders/INBOX/messages")["messages"]
    assert sorted(m["subject"] for m in listing) == sorted(m.subject for m in hub.messages(ALICE))


def store_as_latin1(hub, files: dict[str, bytes]) -> None:
    """Upload C{files} as alice from a client that sends names in Latin-1."""
    client = ftplib.FTP(timeout=30, encoding="latin-1")
    client.connect(hub.host, hub.ports["ftp"])
    try:
        client.login(ALICE, "secret")
        for name, body in files.items():
            client.storbinary(f"STOR {name}", io.BytesIO(body))
    finally:
        client.quit()


def test_files_gives_a_file_whose_name_is_not_utf8(hub):
    # A name sent in Latin-1 (an old FTP client: STOR caf<0xe9>.txt) is
    # stored as those octets; files() read names with ftplib's UTF-8 and
    # raised UnicodeDecodeError for the whole home. Such a name is given
    # with the octet as U+FFFD (as the JSON API's file listing shows it).
    store_as_latin1(hub, {"café.txt": b"latin", "plain.txt": b"ok"})
    client = hub.ftp(ALICE)  # (a UTF-8 name stays itself)
    try:
        client.storbinary("STOR über.txt", io.BytesIO(b"utf8"))
    finally:
        client.quit()
    assert hub.files(ALICE) == {"caf\ufffd.txt": b"latin", "plain.txt": b"ok", "über.txt": b"utf8"}
    hub.purge()  # (walks the home the same way: it raised too)
    assert hub.files(ALICE) == {}


def test_ftp_lists_and_fetches_a_file_whose_name_is_not_utf8(hub):
    # hub.ftp() read names with ftplib's strict UTF-8: NLST, MLSD and LIST
    # of a home holding a Latin-1 name (STOR caf<0xe9>.txt from an old
    # client) raised UnicodeDecodeError inside ftplib. Such a name now
    # comes as a lone surrogate (PEP 383) and goes back as its octets.
    store_as_latin1(hub, {"café.txt": b"latin"})
    client = hub.ftp(ALICE)
    try:
        client.storbinary("STOR über.txt", io.BytesIO(b"utf8"))
        assert sorted(client.nlst()) == ["caf\udce9.txt", "über.txt"]
        assert sorted(name for name, _ in client.mlsd()) == ["caf\udce9.txt", "über.txt"]
        lines: list[str] = []
        client.retrlines("LIST", lines.append)
        assert any(line.endswith(" caf\udce9.txt") for line in lines), lines
        got = io.BytesIO()
        client.retrbinary("RETR caf\udce9.txt", got.write)
        assert got.getvalue() == b"latin"
        client.delete("caf\udce9.txt")
        assert client.nlst() == ["über.txt"]
    finally:
        client.quit()


_TWO_HUBS = r"""
import json, os, sys
from twisted_mailhub.testing import Mailhub, bytecode_cache_folder
stamps = []
for _ in range(2):
    with Mailhub() as hub:
        cache = hub.process and bytecode_cache_folder()
        stamps.append({os.path.join(where, name): os.stat(os.path.join(where, name)).st_mtime_ns
                       for where, _, names in os.walk(cache) if os.sep + "twisted_mailhub" in where for name in names})
print(json.dumps({"cache": cache, "stamps": stamps}))
"""


def test_hubs_started_where_no_bytecode_is_written_compile_the_package_once_per_run(tmp_path):
    # PYTHONDONTWRITEBYTECODE=1 (CI containers set it) made every hub
    # compile all of twisted_mailhub from source at each start: 0.6 s of
    # CPU, most of a start. The kit gives the hubs one PYTHONPYCACHEPREFIX
    # for the test process: the second hub reads what the first wrote,
    # nothing is written beside the sources, and the folder goes when the
    # process exits.
    import subprocess
    import sys

    from twisted_mailhub.testing import PACKAGE_ROOT

    beside = os.path.join(PACKAGE_ROOT, "twisted_mailhub", "__pycache__")
    before = sorted(os.listdir(beside)) if os.path.isdir(beside) else None
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=PACKAGE_ROOT, TMPDIR=str(tmp_path))
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", _TWO_HUBS], env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    first, second = result["stamps"]
    assert len(first) > 50  # the package's modules, compiled by the first hub
    # read, not written again, by the second (which may import a module
    # the first imported only while it stopped)
    assert {name: second[name] for name in first} == first
    assert not os.path.exists(result["cache"])  # removed at exit
    assert os.listdir(tmp_path) == []
    assert (sorted(os.listdir(beside)) if os.path.isdir(beside) else None) == before


def test_a_start_error_says_why_on_its_first_line_without_twistds_usage_text():
    with pytest.raises(MailhubStartError) as caught:
        Mailhub("--max-mesage-size", "10").start()
    first, rest = str(caught.value).split("\n", 1)
    assert first == "mailhub exited with status 1 before it was ready: option --max-mesage-size not recognized"
    assert caught.value.reason == "option --max-mesage-size not recognized"
    assert "Usage: twistd" not in rest and "--anonymous-ftp" not in rest
    assert "twistd -n: option --max-mesage-size not recognized" in rest
    assert "Usage: twistd" in caught.value.log  # kept whole


def test_a_start_error_names_a_port_another_program_holds():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MailhubStartError) as caught:
            Mailhub("--smtp", f"tcp:{port}:interface=127.0.0.1").start()
    first = str(caught.value).split("\n", 1)[0]
    assert first.startswith(f"mailhub exited with status 1 before it was ready: mailhub: cannot listen for smtp on tcp:{port}:interface=127.0.0.1 (--smtp): the address is already in use")


def test_a_hubs_repr_names_its_process_and_listeners(hub):
    shown = repr(hub)
    assert shown.startswith(f"<Mailhub pid {hub.pid} ")
    assert f"smtp 127.0.0.1:{hub.ports['smtp']}" in shown and "object at" not in shown
    assert repr(Mailhub()) == "<Mailhub stopped>"


def test_every_public_method_of_the_kit_says_what_it_gives_and_what_it_raises():
    import inspect

    from twisted_mailhub import pytest_plugin, testing

    missing, no_raise = [], []
    talks_to_the_hub = {"start", "restart", "wait_for_log", "wait_for_message", "imap", "ftp", "messages", "folders", "files", "api", "add_account", "password_of"}
    for cls in (testing.Mailhub, testing.HubMessage):
        for name, member in vars(cls).items():
            if name.startswith("_") and name not in ("__enter__", "__exit__", "__repr__", "__getitem__"):
                continue
            function = member.fget if isinstance(member, property) else member
            if not callable(function):
                continue
            doc = inspect.getdoc(function) or ""
            if not doc:
                missing.append(f"{cls.__name__}.{name}")
            if name in talks_to_the_hub and "@raise" not in doc:
                no_raise.append(name)
    for name in testing.__all__:
        if not inspect.getdoc(getattr(testing, name)):
            missing.append(name)
    for fixture in ("mailhub", "mailhub_session"):
        if not inspect.getdoc(getattr(pytest_plugin, fixture)):
            missing.append(fixture)
    assert missing == [] and no_raise == []


def test_a_messages_repr_is_short_and_names_it(hub):
    submit(hub, message("Repr me", body="x" * 5000))
    got = hub.wait_for_message(to=ALICE, subject="Repr me", timeout=10)
    assert repr(got) == f"<HubMessage {ALICE} INBOX uid {got.uid} 'Repr me' {len(got.raw)} octets>"


def test_a_listener_that_is_off_is_named_with_the_ones_that_run():
    # Before: KeyError: 'sftp', nothing more.
    with Mailhub("--no-sftp", "--no-web", "--no-webs") as hub:
        with pytest.raises(KeyError) as caught:
            hub.ports["sftp"]
        assert "this hub has no sftp listener (--no-sftp?); it runs: ftp, imap, imaps, pop3, pop3s, smtp, smtps, submission" in str(caught.value)
        with pytest.raises(KeyError, match="no web listener"):
            hub.listeners["web"]
        assert hub.ports.get("sftp") is None and json.dumps(hub.ports)


def test_the_hubs_command_line_run_by_hand_with_no_stdin_runs_on(tmp_path):
    # Mailhub.command() is public: run with stdin at /dev/null it must not
    # take the end of its stdin for the end of the test process.
    import subprocess
    import time

    hub = Mailhub(data_dir=str(tmp_path / "data"))
    hub._make_certificate()
    hub._write_accounts()
    env = dict(os.environ, PYTHONPATH=hub_pythonpath())
    env.pop("MAILHUB_END_WITH_STDIN", None)
    process = subprocess.Popen(hub.command(), cwd=hub.data_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "mailhub ready" in line:
                break
        time.sleep(1)  # the end of stdin was read long ago: it would have ended by now
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


_DIES_AT_ONCE = """
import json, os, sys
from twisted_mailhub.testing import Mailhub, bytecode_cache_folder
hub = Mailhub().start()
print(json.dumps({"pid": hub.pid, "data": hub.data_dir, "cache": bytecode_cache_folder()}), flush=True)
os._exit(3)  # as a SIGKILL or a CI timeout: no __exit__, no exit handlers
"""


def test_a_process_that_dies_at_once_outside_pytest_leaves_no_temp_folder(tmp_path):
    # Before: the hub ended (it watches its stdin) but its data folder
    # (/tmp/mailhub-XXXX) and the bytecode cache (/tmp/mailhub-bytecode-XXXX)
    # stayed in the temp folder, one pair per killed test run.
    import subprocess
    import sys
    import time

    from twisted_mailhub.testing import PACKAGE_ROOT

    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=PACKAGE_ROOT, TMPDIR=str(temp))
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", _DIES_AT_ONCE], env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 3, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["data"].startswith(str(temp)) and record["cache"].startswith(str(temp))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (os.path.exists(f"/proc/{record['pid']}") or os.listdir(temp)):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{record['pid']}")
    assert os.listdir(temp) == []


def _listening_socket() -> socket.socket:
    """A loopback TCP socket that listens and never answers: an MX host stand-in."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)
    sink.settimeout(0)
    return sink


def _relay_attempted(hub: Mailhub, mx_host: socket.socket, timeout: float = 20.0) -> str:
    """
    The hub's log line of its first delivery attempt of queued mail; an
    L{AssertionError} if it connected to C{mx_host} instead.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            peer, _ = mx_host.accept()
        except BlockingIOError:
            pass
        else:
            peer.close()
            raise AssertionError(f"the hub connected to the MX host:\n{hub.log[-3000:]}")
        for line in hub.log.splitlines():
            if "relay " in line and " via " in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no delivery attempt in the log:\n{hub.log[-3000:]}")


def test_mail_a_logged_in_sender_sends_to_another_domain_never_leaves_the_machine():
    # A kit hub relayed such mail to the real world (an MX lookup in the
    # system's DNS, then port 25 of the MX host): a test of "the welcome
    # mail goes to jane@customer.example" sent it. The recipient here is an
    # address literal (no DNS), with --relay-port at a loopback socket that
    # stands for its MX host: it must never be connected to.
    sink = _listening_socket()
    try:
        with Mailhub("--relay-port", str(sink.getsockname()[1]), accounts=[f"{ALICE}:secret"], domains=["example.com"]) as hub:
            submit(hub, message("welcome", to="jane@[127.0.0.1]"))
            line = _relay_attempted(hub, sink)
            assert "127.0.0.1:1" in line, line
            assert os.listdir(os.path.join(hub.data_dir, "queue")), "the message is kept in the queue"
    finally:
        sink.close()


def test_a_smarthost_given_to_a_kit_hub_is_used():
    # The guard above must not stand in the way of a test that wants its
    # outbound mail: --smarthost (as --mx-override and --dns-server) is
    # the test's own choice.
    sink = _listening_socket()
    try:
        with Mailhub("--smarthost", f"127.0.0.1:{sink.getsockname()[1]}", accounts=[f"{ALICE}:secret"], domains=["example.com"]) as hub:
            submit(hub, message("welcome", to="jane@[127.0.0.1]"))
            deadline = time.monotonic() + 20
            while True:
                try:
                    peer, _ = sink.accept()
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, hub.log[-3000:]
                    time.sleep(0.05)
            peer.close()
    finally:
        sink.close()


def test_a_kit_hub_says_where_its_outbound_mail_goes():
    # Its log said "queue: outbound mail by MX lookup" while every domain
    # went to the kit's --mx-override (breaker2).
    with Mailhub(accounts=[f"{ALICE}:secret"], domains=["example.com"]) as hub:
        [line] = [x for x in hub.log.splitlines() if "queue: outbound mail" in x]
        assert "outbound mail for every domain to 127.0.0.1:1 (--mx-override), retries" in line, line
