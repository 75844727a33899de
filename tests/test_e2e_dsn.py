"""
Delivery status notifications (RFC 3461) end to end: real hubs on
loopback, real clients (smtplib with mail_options/rcpt_options, msmtp with
--dsn-notify/--dsn-return), a second hub or an SMTP server without DSN
(aiosmtpd) as the next hop through --smarthost or --mx-override. What is
checked is what the sender finds in their maildrop over POP3 or IMAP.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import poplib
import shutil
import smtplib
import subprocess
import sys
import time

import pytest

from tests.hubprocess import ROOT
from tests.test_e2e_relay import Collector, free_port, start_a, start_b

BODY = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: Bob <bob@b.test>\r\n"
    b"Subject: did it arrive?\r\n"
    b"\r\n"
    b"The body, which RET=FULL returns and RET=HDRS does not.\r\n"
)


def pop3_messages(hub, user: str, password: str) -> list[bytes]:
    """Every message in C{user}'s maildrop, as POP3 gives them."""
    client = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    try:
        client.user(user)
        client.pass_(password)
        count, _ = client.stat()
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


def imap_messages(hub, user: str, password: str) -> list[bytes]:
    """Every message in C{user}'s INBOX, as IMAP gives them."""
    client = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        client.login(user, password)
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "ALL")
        found = []
        for n in data[0].split():
            _, parts = client.fetch(n, "(BODY.PEEK[])")
            found.append(parts[0][1])
        return found
    finally:
        client.logout()


def wait_for(fetch, count: int, timeout: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def report_of(message: bytes):
    """(the report's message, its delivery-status text, its third part)."""
    report = email.message_from_bytes(message, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report", message[:400]
    _, status, returned = report.get_payload()
    return report, status.as_string(), returned


def submit(hub, recipients, mail_options=(), rcpt_options=(), message=BODY):
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as client:
        client.login("alice@a.test", "secret")
        client.ehlo()
        assert client.has_extn("dsn")
        refused = client.sendmail("alice@a.test", recipients, message, list(mail_options), list(rcpt_options))
    assert refused == {}


def msmtp(hub, *args: str, message: bytes = BODY) -> subprocess.CompletedProcess:
    """msmtp through the hub's submission port (STARTTLS, AUTH PLAIN as alice)."""
    command = [
        "msmtp", "--host=127.0.0.1", f"--port={hub.ports['submission']}", "--tls=on", "--tls-starttls=on",
        "--tls-certcheck=off", "--auth=plain", "--user=alice@a.test", "--passwordeval=echo secret",
        "--from=alice@a.test", *args,
    ]
    return subprocess.run(command, input=message, capture_output=True, timeout=30)


needs_msmtp = pytest.mark.skipif(shutil.which("msmtp") is None, reason="msmtp is not installed (apt-get install msmtp)")


@pytest.fixture
def plain_peer():
    """An SMTP server that does not offer DSN (aiosmtpd) on a loopback port; refuses gone@c.test."""
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    handler = Collector(refuse={"gone@c.test": "550 5.1.1 no such mailbox", "lost@c.test": "550 5.1.1 no such mailbox"})
    controller = controller_mod.Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


@needs_msmtp
def test_msmtp_with_dsn_options_is_served_and_the_next_hub_reports_delivery(start_hub):
    # A relays to B (which offers DSN) by --smarthost; B's report comes
    # back to A by --mx-override, into alice's maildrop.
    b_port = free_port()
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{b_port}", "--transcript")
    b = start_b(start_hub, "--smtp", f"tcp:{b_port}:interface=127.0.0.1", "--mx-override", f"a.test=127.0.0.1:{a.ports['smtp']}")
    done = msmtp(a, "--dsn-notify=success,failure", "--dsn-return=hdrs", "bob@b.test")
    assert done.returncode == 0, done.stderr.decode()
    # A passed the parameters on (RFC 3461 §5.2) and so reports nothing itself.
    a.wait_for_log(r"relay#\d+ C: MAIL FROM:<alice@a.test> SIZE=\d+ RET=HDRS")
    a.wait_for_log(r"relay#\d+ C: RCPT TO:<bob@b.test> NOTIFY=SUCCESS,FAILURE")
    b.wait_for_log(r"success DSN sent to <alice@a.test> for <bob@b.test>")
    [dsn] = wait_for(lambda: pop3_messages(a, "alice@a.test", "secret"), 1)
    report, status, returned = report_of(dsn)
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert "Reporting-MTA: dns; mx.b.test" in status
    assert "Final-Recipient: rfc822; bob@b.test" in status and "Action: delivered" in status
    assert returned.get_content_type() == "text/rfc822-headers"
    assert [m for m in pop3_messages(b, "bob@b.test", "hungry") if b"Subject: did it arrive?" in m]
    # A's own report would be logged before its "done" line.
    a.wait_for_log(r"queue: \S+ done: 1 delivered, 0 failed")
    assert "success DSN" not in a.log
    assert len(pop3_messages(a, "alice@a.test", "secret")) == 1


@needs_msmtp
def test_msmtp_failure_and_delay_gets_a_bounce_with_the_header_only(start_hub, plain_peer):
    port, peer = plain_peer
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}")
    done = msmtp(a, "--dsn-notify=failure,delay", "--dsn-return=hdrs", "gone@c.test")
    assert done.returncode == 0, done.stderr.decode()
    a.wait_for_log(r"queue: \S+ bounced to <alice@a.test> for <gone@c.test>")
    [dsn] = wait_for(lambda: imap_messages(a, "alice@a.test", "secret"), 1)
    report, status, returned = report_of(dsn)
    assert "Action: failed" in status and "Final-Recipient: rfc822; gone@c.test" in status
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"which RET=FULL returns" not in dsn


def test_notify_never_failure_with_ret_full_and_success_to_a_server_without_dsn(start_hub, plain_peer):
    port, peer = plain_peer
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}", "--transcript")
    # Each recipient its own transaction: smtplib gives every RCPT the same options.
    submit(a, ["gone@c.test"], ["RET=FULL"], ["NOTIFY=NEVER"])
    submit(a, ["lost@c.test"], ["RET=FULL", "ENVID=trip+2B42"], ["NOTIFY=FAILURE", "ORCPT=rfc822;lost+2Bold@c.test"])
    submit(a, ["carol@c.test"], ["ENVID=hello"], ["NOTIFY=SUCCESS"])
    a.wait_for_log(r"queue: \S+ failed for <gone@c.test> NOTIFY=NEVER; no DSN")
    a.wait_for_log(r"queue: \S+ bounced to <alice@a.test> for <lost@c.test>")
    a.wait_for_log(r"queue: \S+ relayed, success DSN sent to <alice@a.test> for <carol@c.test>")
    # The peer offers no DSN: it was given none of the parameters.
    assert "NOTIFY=" not in "".join(line for line in a.log.splitlines() if " C: RCPT" in line)
    got = wait_for(lambda: pop3_messages(a, "alice@a.test", "secret"), 2)
    assert len(got) == 2  # nothing for NOTIFY=NEVER
    bounce = next(m for m in got if b"Action: failed" in m)
    relayed = next(m for m in got if b"Action: relayed" in m)
    _, status, returned = report_of(bounce)
    assert "Original-Envelope-Id: trip+42" in status
    assert "Original-Recipient: rfc822; lost+old@c.test" in status
    assert returned.get_content_type() == "message/rfc822"
    assert b"The body, which RET=FULL returns" in bounce
    assert b"gone@c.test" not in bounce
    report, status, _ = report_of(relayed)
    assert "Original-Envelope-Id: hello" in status and "Final-Recipient: rfc822; carol@c.test" in status
    assert "Remote-MTA: dns; [127.0.0.1]" in status
    assert b"does not offer delivery status notifications" in relayed
    assert [rcpts for _, rcpts, _ in peer.envelopes] == [["carol@c.test"]]


def test_a_delay_warning_only_for_notify_delay(start_hub):
    from tests.test_e2e_relay import closed_port

    a = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{closed_port()}", "--retry-schedule", "1s", "--delay-warning", "1s")
    submit(a, ["bob@b.test"], [], ["NOTIFY=FAILURE"])
    submit(a, ["eve@b.test"], [], ["NOTIFY=DELAY"])
    a.wait_for_log(r"queue: \S+ delayed; no warning: NOTIFY does not ask for delays", timeout=20)
    a.wait_for_log(r"queue: \S+ delayed, warning sent to <alice@a.test>", timeout=20)
    [warning] = wait_for(lambda: pop3_messages(a, "alice@a.test", "secret"), 1)
    _, status, _ = report_of(warning)
    assert "Action: delayed" in status and "Final-Recipient: rfc822; eve@b.test" in status
    assert "bob@b.test" not in status


def test_notify_success_for_a_local_maildrop_and_none_for_the_null_sender(start_hub):
    a = start_a(start_hub)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=10) as client:
        client.ehlo("outside.test")
        assert client.has_extn("dsn")
        # The null sender's first: a report for it would be made before the other's.
        client.sendmail("", ["alice@a.test"], BODY, [], ["NOTIFY=SUCCESS"])
        client.sendmail("alice@a.test", ["alice@a.test"], BODY, ["ENVID=mine"], ["NOTIFY=SUCCESS", "ORCPT=rfc822;alice@a.test"])
    a.wait_for_log(r"success DSN sent to <alice@a.test> for <alice@a.test>")
    got = wait_for(lambda: imap_messages(a, "alice@a.test", "secret"), 3)
    assert len(got) == 3  # two messages, one report: none for the null sender's
    [dsn] = [m for m in got if b"multipart/report" in m]
    _, status, _ = report_of(dsn)
    assert "Action: delivered" in status and "Original-Envelope-Id: mine" in status
    assert "Original-Recipient: rfc822; alice@a.test" in status
    assert len(a.log.split("success DSN sent")) == 2


def test_dsn_syntax_errors_are_501_and_the_session_goes_on(start_hub):
    a = start_a(start_hub)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=10) as client:
        client.ehlo("outside.test")
        assert client.docmd("MAIL FROM:<x@ext.test> RET=ALL") == (501, b"5.5.4 Syntax: RET must be FULL or HDRS (RFC 3461 4.3)")
        assert client.docmd("MAIL FROM:<x@ext.test> ENVID=" + "e" * 101)[0] == 501
        assert client.docmd("MAIL FROM:<x@ext.test>") == (250, b"2.1.0 Ok")
        code, text = client.docmd("RCPT TO:<alice@a.test> NOTIFY=NEVER,FAILURE")
        assert (code, text) == (501, b"5.5.4 Syntax: NOTIFY=NEVER cannot be combined with other keywords (RFC 3461 4.1)")
        code, text = client.docmd("RCPT TO:<alice@a.test> ORCPT=rfc822;bad=xtext@a.test")
        assert code == 501 and b"+3D" in text
        assert client.docmd("RCPT TO:<alice@a.test> NOTIFY=FAILURE ORCPT=rfc822;alice@a.test") == (250, b"2.1.5 Ok")
        assert client.docmd("NOOP")[0] == 250


def test_postgresql_queue_keeps_the_parameters_and_reports_relayed(start_hub, pg_dsn, plain_peer):
    psycopg = pytest.importorskip("psycopg")
    port, peer = plain_peer
    a = start_a(start_hub, "--store", f"postgresql:{pg_dsn}", "--mx-override", f"c.test=127.0.0.1:{port}", "--retry-schedule", "1h")
    peer.refuse["carol@c.test"] = "451 4.3.0 come back later"
    submit(a, ["carol@c.test"], ["RET=HDRS", "ENVID=pg+2B1"], ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;carol@c.test"])
    a.wait_for_log(r"relay \S+ <alice@a.test> to c.test via .*<carol@c.test> 451")
    with psycopg.connect(pg_dsn) as conn:
        [(envelope,)] = conn.execute("SELECT envelope FROM queue_message").fetchall()
    envelope = envelope if isinstance(envelope, dict) else json.loads(envelope)
    assert (envelope["ret"], envelope["envid"]) == ("HDRS", "pg+1")
    assert envelope["recipients"][0]["notify"] == "SUCCESS,FAILURE"
    assert envelope["recipients"][0]["orcpt"] == "rfc822;carol@c.test"
    del peer.refuse["carol@c.test"]
    flushed = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.queue", "--queue", f"postgresql:{pg_dsn}", "flush"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert "flushing 1 message(s)" in flushed.stdout, flushed.stdout + flushed.stderr
    a.wait_for_log(r"queue: \S+ relayed, success DSN sent to <alice@a.test> for <carol@c.test>")
    [dsn] = wait_for(lambda: pop3_messages(a, "alice@a.test", "secret"), 1)
    _, status, _ = report_of(dsn)
    assert "Original-Envelope-Id: pg+1" in status and "Original-Recipient: rfc822; carol@c.test" in status


def test_notify_success_is_honoured_after_a_login_not_from_anyone_on_the_mx_port(start_hub):
    # Backscatter: loopback is not trusted here, so the MX client is anyone.
    import ssl

    a = start_a(start_hub, "--trusted-networks", "10.0.0.0/8")
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=10) as client:
        client.ehlo("forger.test")
        assert client.has_extn("dsn")
        client.mail("alice@a.test")  # forged: the report would go to alice
        code, text = client.rcpt("alice@a.test", ["NOTIFY=SUCCESS,FAILURE"])
        assert (code, text) == (250, b"2.1.5 Ok (NOTIFY=SUCCESS is not honoured for this client: log in to ask for a delivery report)")
        assert client.data(BODY)[0] == 250
    a.wait_for_log(r"NOTIFY=SUCCESS for <alice@a.test> from 127.0.0.1 not honoured \(--dsn-success-from trusted\)")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=10) as client:
        client.starttls(context=context)
        client.login("alice@a.test", "secret")
        refused = client.sendmail("alice@a.test", ["alice@a.test"], BODY, [], ["NOTIFY=SUCCESS"])
        assert refused == {}
    a.wait_for_log(r"success DSN sent to <alice@a.test> for <alice@a.test>")
    got = wait_for(lambda: imap_messages_tls(a, "alice@a.test", "secret"), 3)
    assert len(got) == 3  # two messages, one report: the logged-in client's
    assert len([m for m in got if b"multipart/report" in m]) == 1


def imap_messages_tls(hub, user: str, password: str) -> list[bytes]:
    """L{imap_messages} over STARTTLS (for a hub that does not trust loopback)."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        client.starttls(context)
        client.login(user, password)
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "ALL")
        return [client.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in data[0].split()]
    finally:
        client.logout()


def test_a_report_on_a_utf8_orcpt_is_a_global_dsn_read_over_imap(start_hub):
    # RFC 6533 §6: message/global-delivery-status, the utf-8 address as it is.
    a = start_a(start_hub)
    submit(a, ["alice@a.test"], ["SMTPUTF8", "ENVID=intl"], ["NOTIFY=SUCCESS", "ORCPT=utf-8;jürgen@a.test"])
    a.wait_for_log(r"success DSN sent to <alice@a.test> for <alice@a.test>")
    got = wait_for(lambda: imap_messages(a, "alice@a.test", "secret"), 2)
    [dsn] = [m for m in got if b"multipart/report" in m]
    report = email.message_from_bytes(dsn, policy=email.policy.default)
    _, status, returned = report.get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert "Original-Recipient: utf-8; jürgen@a.test\r\nFinal-Recipient: rfc822; alice@a.test\r\n".encode() in dsn
    assert returned.get_content_type() == "message/global-headers"


# A queue write of a message that carries FAULT fails (EIO) while the
# file named by MAILHUB_TEST_FAIL_QUEUE exists: a sitecustomize on the
# hub's PYTHONPATH wraps os.write (the group commit's write) and looks at
# where the descriptor points. Local copies and the report (RET=HDRS: the
# header only, without the marker, which is in the body) are written.
FAIL_QUEUE_WRITES = '''
import errno, os
_write = os.write
_flag = os.environ.get("MAILHUB_TEST_FAIL_QUEUE", "")
def _failing(fd, data):
    if _flag and os.path.exists(_flag) and b"FAULT-IN-THE-QUEUE" in bytes(data[:65536]):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = ""
        if "/queue/" in where:
            raise OSError(errno.EIO, "injected queue write failure")
    return _write(fd, data)
os.write = _failing
'''

MARKED = (
    b"From: Zed <zed@ext.test>\r\n"
    b"To: Alice <alice@a.test>, Carol <carol@c.test>\r\n"
    b"Subject: half here, half there\r\n"
    b"\r\n"
    b"FAULT-IN-THE-QUEUE\r\n"
)


def _refused_then_accepted(hub, peer, tries: int, lift) -> None:
    """
    C{tries} messages from a remote sender (sent by alice, logged in) to alice (NOTIFY=SUCCESS) and
    to carol@c.test (relayed), each refused with a 4xx because the relayed
    copy cannot be queued; then the fault is lifted and one more is
    accepted (C{lift()} takes the fault away). The sender's MX (the
    peer) must get exactly one report.
    """

    def send():
        with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as client:
            client.login("alice@a.test", "secret")  # (relaying needs a login)
            client.mail("zed@ext.test", ["RET=HDRS"])
            assert client.rcpt("alice@a.test", ["NOTIFY=SUCCESS"])[0] == 250
            assert client.rcpt("carol@c.test", ["NOTIFY=FAILURE"])[0] == 250
            return client.data(MARKED)

    for _ in range(tries):
        code, text = send()
        assert 400 <= code < 500, (code, text)
    lift()
    assert send()[0] == 250
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(peer.envelopes) < 2:
        time.sleep(0.1)
    time.sleep(1.5)  # (a report of a refused try would come with or just after these)
    reports = [e for e in peer.envelopes if e[0] in ("", "<>")]
    relayed = [e for e in peer.envelopes if e[0] == "zed@ext.test"]
    assert len(relayed) == 1 and relayed[0][1] == ["carol@c.test"], peer.envelopes
    # (before: a "delivered" report for alice per refused try as well)
    assert len(reports) == 1, [e[2][:300] for e in reports]
    assert reports[0][1] == ["zed@ext.test"]
    _, status, _ = report_of(reports[0][2])
    assert "Action: delivered" in status and "Final-Recipient: rfc822; alice@a.test" in status
    # Alice holds the accepted message once; no copy of a refused try.
    assert len(wait_for(lambda: pop3_messages(hub, "alice@a.test", "secret"), 1)) == 1


def _faulty_env(tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(FAIL_QUEUE_WRITES)
    flag = tmp_path / "fail-queue"
    flag.write_text("on")
    return {"PYTHONPATH": str(faults), "MAILHUB_TEST_FAIL_QUEUE": str(flag)}, str(flag)


def test_under_workers_no_report_for_a_message_refused_after_its_report_was_made(start_hub, tmp_path, plain_peer):
    port, peer = plain_peer
    env, flag = _faulty_env(tmp_path)
    a = start_hub(
        "--domain", "a.test", "--hostname", "mx.a.test", "--workers", "2",
        "--mx-override", f"c.test=127.0.0.1:{port}", "--mx-override", f"ext.test=127.0.0.1:{port}",
        users=["alice@a.test:secret"], env=env,
    )
    # Several tries: each connection goes to either worker, and only the
    # one that does not run the queue could not take a queued report back.
    _refused_then_accepted(a, peer, 6, lambda: os.unlink(flag))


def test_postgresql_queue_no_report_for_a_message_refused_after_its_report_was_made(start_hub, pg_dsn, plain_peer):
    psycopg = pytest.importorskip("psycopg")
    port, peer = plain_peer
    a = start_hub(
        "--domain", "a.test", "--hostname", "mx.a.test", "--store", f"postgresql:{pg_dsn}",
        "--mx-override", f"c.test=127.0.0.1:{port}", "--mx-override", f"ext.test=127.0.0.1:{port}",
        users=["alice@a.test:secret"],
    )
    # The database refuses a queued row that carries the marker (the
    # relayed copy; the report holds the header only).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF position('FAULT-IN-THE-QUEUE'::bytea IN NEW.body) > 0 THEN RAISE EXCEPTION 'injected queue failure'; END IF;"
            " RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER refuse_marked BEFORE INSERT ON queue_message FOR EACH ROW EXECUTE FUNCTION refuse_marked()")

    def lift():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_marked ON queue_message")

    _refused_then_accepted(a, peer, 2, lift)


def test_under_workers_a_client_gone_before_the_250_leaves_a_kept_message_and_its_one_report(start_hub, tmp_path, plain_peer):
    # The other path where the client is not told: it hangs up before the
    # 250 (every flush takes 0.5 s here, so it is gone before the reply).
    # The message was kept, so its report is owed and goes once, with the
    # relayed copy: neither a report without the message nor the message
    # without its report. (A guard: this path was right before too.)
    import socket

    from tests.test_e2e_slow_fsync import SITECUSTOMIZE

    port, peer = plain_peer
    faults = tmp_path / "slow"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    a = start_hub(
        "--domain", "a.test", "--hostname", "mx.a.test", "--workers", "2",
        "--mx-override", f"c.test=127.0.0.1:{port}", "--mx-override", f"ext.test=127.0.0.1:{port}",
        users=["alice@a.test:secret"], env={"PYTHONPATH": str(faults), "MAILHUB_TEST_FSYNC_DELAY": "0.5"},
    )
    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=10) as client:
        client.login("alice@a.test", "secret")
        client.mail("zed@ext.test", ["RET=HDRS"])
        assert client.rcpt("alice@a.test", ["NOTIFY=SUCCESS"])[0] == 250
        assert client.rcpt("carol@c.test", ["NOTIFY=FAILURE"])[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(MARKED.replace(b"FAULT-IN-THE-QUEUE", b"gone before the reply") + b".\r\n")
        client.sock.shutdown(socket.SHUT_RDWR)  # (no 250 read: gone)
        client.sock.close()
        client.sock = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(peer.envelopes) < 2:
        time.sleep(0.2)
    time.sleep(1.0)
    reports = [e for e in peer.envelopes if e[0] in ("", "<>")]
    relayed = [e for e in peer.envelopes if e[0] == "zed@ext.test"]
    assert len(relayed) == 1 and len(reports) == 1, peer.envelopes
    assert len(wait_for(lambda: pop3_messages(a, "alice@a.test", "secret"), 1)) == 1


def test_under_workers_a_message_a_dead_worker_did_not_hand_on_is_sent_with_its_report(start_hub, plain_peer):
    # A worker killed between its message's durable write (told 250) and
    # the notice that hands it to the worker running the queue left it in
    # the queue's folder, unknown until that worker restarted: the message,
    # and the success DSN owed in its envelope, waited for that. Here the
    # files are what such a worker leaves; the runner now takes them up.
    from twisted_mailhub.queue.storage import DELIVERED, Recipient, make_entry

    port, peer = plain_peer
    a = start_hub(
        "--domain", "a.test", "--hostname", "mx.a.test", "--workers", "2",
        "--mx-override", f"c.test=127.0.0.1:{port}", "--mx-override", f"ext.test=127.0.0.1:{port}",
        users=["alice@a.test:secret"],
    )
    message = b"Received: from laptop\r\n" + MARKED.replace(b"FAULT-IN-THE-QUEUE", b"left by a dead worker")
    owed = Recipient("alice@a.test", DELIVERED, 250, "2.0.0 delivered to maildrop", "mx.a.test", notify="SUCCESS", owed="delivered")
    entry = make_entry("zed@ext.test", ["carol@c.test"], len(message), time.time() - 120, "HDRS", "", {"carol@c.test": ("FAILURE", "")}, [owed])
    queue = os.path.join(a.data_dir, "queue")
    with open(os.path.join(queue, entry.id + ".msg"), "wb") as f:
        f.write(message)
    with open(os.path.join(queue, entry.id + ".env"), "wb") as f:
        f.write(entry.to_json())
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(peer.envelopes) < 2:
        time.sleep(0.2)
    # (before: nothing, until the runner's restart)
    reports = [e for e in peer.envelopes if e[0] in ("", "<>")]
    relayed = [e for e in peer.envelopes if e[0] == "zed@ext.test"]
    assert len(relayed) == 1 and relayed[0][1] == ["carol@c.test"], peer.envelopes
    assert len(reports) == 1, peer.envelopes
    _, status, _ = report_of(reports[0][2])
    assert "Action: delivered" in status and "Final-Recipient: rfc822; alice@a.test" in status
    a.wait_for_log(r"queue: \S+ taken up from the queue's folder")
