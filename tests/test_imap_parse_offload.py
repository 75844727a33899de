"""
The last two places IMAP took a message apart in the reactor, NOTIFY's
MessageNew fetch attributes (RFC 5465 §5.2) and a CATENATE URL's
;SECTION= (RFC 4469, RFC 5092), now parse a message costly to take apart
in a parsing thread, as FETCH does: another client is answered meanwhile,
and what the client gets is what it got before.
"""

from __future__ import annotations

import re
import smtplib

from tests.test_e2e_imap_rfc import raw_login
from tests.test_imap_big_messages import noops_while
from tests.test_web_big_messages import many_parts


def deliver(hub, raw: bytes) -> None:
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=60) as s:
        s.sendmail("a@example.net", ["alice@localhost"], raw)


def test_notify_messagenew_bodystructure_of_a_3000_part_message_is_made_while_others_are_answered(hub):
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    lines = a.cmd(b"N", b"NOTIFY SET (SELECTED (MessageNew (UID BODYSTRUCTURE) MessageExpunge))")
    assert lines[-1].startswith(b"N OK"), lines

    def told():
        deliver(hub, many_parts(3000))
        return [a.line() for _ in range(3)]

    lines, seconds, slowest = noops_while(hub, told)
    assert lines[:2] == [b"* 1 EXISTS", b"* 1 RECENT"], lines[:2]
    fetch = lines[2]
    assert fetch.startswith(b"* 1 FETCH (UID 1 BODYSTRUCTURE ("), fetch[:80]
    assert fetch.count(b'("APPLICATION" "OCTET-STREAM"') == 3000 and b'"f2999.bin"' in fetch
    # The session goes on, and says the same structure when asked.
    reply = a.cmd(b"f", b"FETCH 1 (BODYSTRUCTURE)")
    assert reply[-1].startswith(b"f OK") and reply[0][len(b"* 1 FETCH (") :] == fetch[len(b"* 1 FETCH (UID 1 ") :], (reply[0][:80], fetch[:80])
    assert slowest < max(seconds / 4, 0.05), (slowest, seconds)
    a.close()


def test_notify_messagenew_with_a_literal_item_sends_the_literal(hub):
    # RFC822.HEADER is a literal: the notice was made of pieces the
    # reactor path joined as octets (a literal came as (octets, lines)).
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    assert a.cmd(b"N", b"NOTIFY SET (SELECTED (MessageNew (UID RFC822.HEADER) MessageExpunge))")[-1].startswith(b"N OK")
    deliver(hub, b"From: a@example.net\r\nTo: alice@localhost\r\nSubject: small\r\n\r\nhello\r\n")
    assert a.line() == b"* 1 EXISTS"
    assert a.line() == b"* 1 RECENT"
    head = re.fullmatch(rb"\* 1 FETCH \(UID 1 RFC822\.HEADER \{(\d+)\}", a.line())
    assert head
    header = b""
    while len(header) < int(head.group(1)):
        header += a.line() + b"\r\n"
    assert len(header) == int(head.group(1)) and header.endswith(b"Subject: small\r\n\r\n"), header
    assert a.line() == b")"
    assert a.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    a.close()


def test_catenate_of_a_section_of_a_3000_part_message_is_cut_while_others_are_answered(hub):
    deliver(hub, many_parts(3000))
    hub.wait_for_message(to="alice@localhost", subject="many parts", timeout=30)
    a = raw_login(hub)
    text = b"From: alice@localhost\r\nSubject: built\r\n\r\n"

    def append():
        a.send(b'c APPEND Drafts CATENATE (TEXT {%d+}\r\n%s URL "/INBOX/;UID=1/;SECTION=2999" TEXT {2+}\r\n\r\n)\r\n' % (len(text), text))
        return a.until_tag(b"c")

    lines, seconds, slowest = noops_while(hub, append)
    assert lines[-1].startswith(b"c OK [APPENDUID "), lines
    a.cmd(b"s", b"SELECT Drafts")
    body = a.cmd(b"f", b"FETCH 1 (BODY.PEEK[TEXT])")
    assert body[1] == b"abc", body
    assert slowest < max(seconds / 4, 0.05), (slowest, seconds)
    # A section that is not there is still NO [BADURL], from the thread.
    lines = a.cmd(b"d", b'APPEND Drafts CATENATE (URL "/INBOX/;UID=1/;SECTION=3001")')
    assert lines[-1].startswith(b'd NO [BADURL /INBOX/;UID=1/;SECTION=3001] the message has no such section'), lines
    a.close()


def test_a_process_that_used_the_parsing_threads_ends_without_stopping_its_reactor():
    # A test run (or a program using the package's parts) whose reactor is
    # never shut down: the pool's threads must not keep the interpreter from
    # ending (pytest hung at exit after an in-process web test read rows'
    # headers in them).
    import os
    import subprocess
    import sys

    from tests.hubprocess import ROOT

    script = (
        "from twisted_mailhub import offload\n"
        "got = []\n"
        "offload.in_thread(lambda: 42).addCallback(got.append)\n"
        "import time; time.sleep(0.2)\n"
        "print('done')\n"
    )
    ended = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=30)
    assert (ended.returncode, ended.stdout) == (0, "done\n"), ended.stderr
