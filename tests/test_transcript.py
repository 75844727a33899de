# -*- test-case-name: tests.test_transcript -*-
"""
Session transcripts: C:/S: lines with a connection id, secrets masked.
"""

from __future__ import annotations

import pytest
import base64
import re
import smtplib

from twisted.logger import globalLogPublisher

from tests.hubprocess import client_context
from twisted_mailhub.transcript import Transcriber



def test_transcriber_masks_auth_and_summarises_data():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        t = Transcriber("smtp#99")
        t.server_bytes(b"220 mail.test ESMTP\r\n")
        t.client_bytes(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        t.server_bytes(b"235 2.7.0 Authentication successful\r\n")
        t.client_bytes(b"AUTH LOGIN\r\n")
        t.server_bytes(b"334 VXNlcm5hbWU6\r\n")
        t.client_bytes(b"YWxpY2U=\r\n")
        t.server_bytes(b"334 UGFzc3dvcmQ6\r\n")
        t.client_bytes(b"c2VjcmV0\r\n")
        t.server_bytes(b"535 5.7.8 Error: authentication failed\r\n")
        t.client_bytes(b"DATA\r\n")
        t.server_bytes(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        t.client_bytes(b"Subject: hi\r\n\r\nprivate words\r\n.\r\n")
    finally:
        globalLogPublisher.removeObserver(events)
    lines = [f"{e['who']}: {e['line']}" for e in events if e.get("cid") == "smtp#99"]
    assert lines == [
        "S: 220 mail.test ESMTP",
        "C: AUTH PLAIN ****",
        "S: 235 2.7.0 Authentication successful",
        "C: AUTH LOGIN",
        "S: 334 VXNlcm5hbWU6",
        "C: **** (SASL response)",
        "S: 334 UGFzc3dvcmQ6",
        "C: **** (SASL response)",
        "S: 535 5.7.8 Error: authentication failed",
        "C: DATA",
        "S: 354 End data with <CR><LF>.<CR><LF>",
        "C: [message: 3 lines, 30 octets]",
        "C: .",
    ]


def test_transcript_of_a_real_session_masks_the_auth_secret(start_hub):
    hub = start_hub("--transcript")
    secret = base64.b64encode(b"\0alice\0secret").decode()
    with smtplib.SMTP_SSL("127.0.0.1", hub.ports["smtps"], context=client_context()) as c:
        c.ehlo("transcribed.example")
        c.docmd("AUTH", "PLAIN " + secret)
        c.sendmail("alice@localhost", ["bob@localhost"], b"Subject: t\r\n\r\nnot in the log\r\n")
    m = hub.wait_for_log(r"(smtps#\d+) C: AUTH PLAIN \*\*\*\*")
    cid = re.escape(m.group(1))
    hub.wait_for_log(cid + r" S: 250 2\.0\.0 Ok: queued as \w+")
    log = hub.log
    assert re.search(cid + r" S: 220 mail\.test ESMTP", log)
    assert re.search(cid + r" C: ehlo transcribed\.example", log)
    assert re.search(cid + r" S: 235 2\.7\.0 Authentication successful", log)
    assert re.search(cid + r" C: \[message: \d+ lines, \d+ octets\]", log)
    assert secret not in log and "not in the log" not in log


def _record(protocol: str):
    from twisted_mailhub.transcript import SessionEvents, Transcriber

    bus = SessionEvents()
    record = bus.start(protocol, ("127.0.0.1", 4000), ("127.0.0.1", 110))
    return bus, record, Transcriber(record.id, record)


def _lines(record) -> list[str]:
    return [f"{kind}: {text}" for _, _, kind, text in record.events if kind in ("C", "S")]


def test_a_message_in_many_chunks_is_one_summary_line_even_with_its_end_split():
    _, record, t = _record("smtp")
    t.client_bytes(b"DATA\r\n")
    t.server_bytes(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    t.client_bytes(b"Subject: hi\r\n\r\nfirst li")
    t.client_bytes(b"ne\r\n.. a stuffed line\r\n" + b"x" * 10000 + b"\r\nlast\r\n.\r")
    t.client_bytes(b"\nQUIT\r\n")
    t.server_bytes(b"250 2.0.0 Ok\r\n")
    assert _lines(record) == [
        "C: DATA",
        "S: 354 End data with <CR><LF>.<CR><LF>",
        f"C: [message: 6 lines, {13 + 2 + 12 + 19 + 10002 + 6} octets]",
        "C: .",
        "C: QUIT",
        "S: 250 2.0.0 Ok",
    ]


def test_pop3_retr_and_top_answers_are_summarised_and_other_listings_kept_line_by_line():
    _, record, t = _record("pop3")
    t.server_bytes(b"+OK POP3 ready\r\n")
    # Pipelined (RFC 2449): the answers come after all three commands.
    t.client_bytes(b"RETR 1\r\nLIST\r\nTOP 2 0\r\n")
    t.server_bytes(b"+OK 30 octets\r\nSubject: a\r\n\r\n..dot\r\n.\r\n+OK 2 messages\r\n1 30\r\n2 40\r\n.\r\n")
    t.server_bytes(b"+OK top of message follows\r\nSubject: b\r\n\r\n.\r\n")
    t.client_bytes(b"RETR 9\r\n")
    t.server_bytes(b"-ERR no message 9 (the maildrop has 2 messages)\r\n")
    assert _lines(record) == [
        "S: +OK POP3 ready",
        "C: RETR 1",
        "C: LIST",
        "C: TOP 2 0",
        "S: +OK 30 octets",
        "S: [message: 3 lines, 21 octets]",
        "S: .",
        "S: +OK 2 messages",
        "S: 1 30",
        "S: 2 40",
        "S: .",
        "S: +OK top of message follows",
        "S: [message: 2 lines, 14 octets]",
        "S: .",
        "C: RETR 9",
        "S: -ERR no message 9 (the maildrop has 2 messages)",
    ]


def test_a_pop3_answer_recorded_from_its_facts_reads_as_one_recorded_from_its_bytes():
    message = b"Subject: a\r\n\r\nbody\r\n"
    answers = [b"+OK 20 octets\r\n" + message + b".\r\n", b"+OK 2 messages\r\n1 20\r\n2 40\r\n.\r\n"]
    _, from_bytes, t = _record("pop3")
    t.client_bytes(b"RETR 1\r\nLIST\r\n")
    t.server_bytes(answers[0])
    t.server_bytes(answers[1])
    _, from_facts, t = _record("pop3")
    t.client_bytes(b"RETR 1\r\nLIST\r\n")
    assert t.server_message(b"+OK 20 octets", message.count(b"\n"), len(message))
    # A LIST answer is not a message: it is recorded from its bytes.
    assert not t.server_message(b"+OK 2 messages", 2, 10)
    t.server_bytes(answers[1])
    assert _lines(from_facts) == _lines(from_bytes)
    assert _lines(from_facts)[2:5] == ["S: +OK 20 octets", "S: [message: 3 lines, 20 octets]", "S: ."]


def _pop3_session(t, retrs: int) -> None:
    """RETRs one at a time and pipelined, answered from their facts, and other commands."""
    t.server_bytes(b"+OK POP3 ready\r\n")
    for n in range(1, retrs + 1):
        t.client_bytes(b"RETR %d\r\n" % n)
        assert t.record_message(b"+OK %d octets" % (20 + n), 3, 20 + n) is not None
    t.client_bytes(b"RETR 1\r\nretr 2\r\nDELE 1\r\n")
    t.record_message(b"+OK 21 octets", 3, 21)
    t.record_message(b"+OK 22 octets", 3, 22)
    t.server_bytes(b"+OK message 1 deleted\r\n")
    t.client_bytes(b"STAT\r\n")
    t.server_bytes(b"+OK 1 22\r\n")


def test_a_pop3_session_nobody_watched_reads_as_one_watched_line_by_line():
    from twisted_mailhub.transcript import SessionEvents, Transcriber

    def recorded(max_lines: int, watch: str):
        bus = SessionEvents(max_lines=max_lines, clock=lambda: 1000.0)
        seen: list = []
        if watch == "from the start":
            bus.subscribe(lambda r, e: seen.append(e))
        record = bus.start("pop3", ("127.0.0.1", 4000), ("127.0.0.1", 110), id="pop3#1")
        t = Transcriber(record.id, record)
        _pop3_session(t, 3)
        if watch == "midway":
            bus.subscribe(lambda r, e: seen.append(e), session=record.id)
        _pop3_session(t, 2)
        return record, seen

    total = 1 + (4 * 3 + 13) + (4 * 2 + 13)  # the start, then each session's lines
    for max_lines in (5000, 7, 2):
        quiet, _ = recorded(max_lines, "")
        watched, seen = recorded(max_lines, "from the start")
        midway, seen_midway = recorded(max_lines, "midway")
        assert list(quiet.events) == list(watched.events) == list(midway.events)
        assert quiet.dropped == watched.dropped == midway.dropped == max(0, total - max_lines)
        # The watchers were told the same events, as they came.
        assert seen == [(n, 1000.0, kind, text) for n, _, kind, text in seen] and len(seen) == total
        assert list(watched.events) == seen[-max_lines:]
        assert seen_midway == seen[-len(seen_midway) :] and len(seen_midway) == 4 * 2 + 13
        assert quiet.summary()["lines"] == total
    assert [e[2:] for e in list(quiet.events)] == [("C", "STAT"), ("S", "+OK 1 22")]
    assert [e[0] for e in quiet.events] == [total - 1, total]
    record, _ = recorded(5000, "")
    assert [f"{kind}: {text}" for _, _, kind, text in list(record.events)[-12:-1]] == [
        "C: RETR 1",
        "C: retr 2",
        "C: DELE 1",
        "S: +OK 21 octets",
        "S: [message: 3 lines, 21 octets]",
        "S: .",
        "S: +OK 22 octets",
        "S: [message: 3 lines, 22 octets]",
        "S: .",
        "S: +OK message 1 deleted",
        "C: STAT",
    ]


def test_an_smtp_session_one_line_per_write_nobody_watched_reads_as_one_watched_line_by_line():
    # Without pipelining every command and reply is one write of one line:
    # the shortcut that records such a line when nobody watches keeps the
    # same events a watcher is told (masks, the DATA summary, odd lines).
    from twisted_mailhub.transcript import SessionEvents, Transcriber

    session = [
        ("S", b"220 mail.test ESMTP\r\n"),
        ("C", b"EHLO a.example\r\n"),
        ("S", b"250-mail.test Hello\r\n250 HELP\r\n"),
        ("C", b"MAIL FROM:<a@b>\r\n"),
        ("S", b"250 2.1.0 Ok\r\n"),
        ("C", b"RCPT TO:<bob@mail.test>\r\n"),
        ("S", b"250 2.1.5 Ok\r\n"),
        ("C", b"DATA\r\n"),
        ("S", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        ("C", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        ("S", b"250 2.0.0 Ok: queued as 1\r\n"),
        ("C", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
        ("S", b"535 5.7.8 Error: authentication failed\r\n"),
        ("C", b"mail from:<\x1bodd>\r\n"),
        ("S", b"501 5.1.7 Bad sender address syntax\r\n"),
        ("C", b"NOOP\r\r\n"),
        ("S", b"500 5.5.2 Error: bad syntax (the line contained a control character: ^M, a carriage return)\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 2.0.0 Bye\r\n"),
    ]

    def recorded(watch: bool):
        bus = SessionEvents(clock=lambda: 1000.0)
        seen: list = []
        if watch:
            bus.subscribe(lambda r, e: seen.append(e))
        record = bus.start("smtp", ("127.0.0.1", 4000), ("127.0.0.1", 25), id="smtp#1")
        t = Transcriber(record.id, record)
        for who, data in session:
            (t.client_bytes if who == "C" else t.server_bytes)(data)
        return record, seen

    quiet, _ = recorded(False)
    watched, seen = recorded(True)
    assert list(quiet.events) == list(watched.events) == seen[-len(list(watched.events)) :]
    assert _lines(quiet)[4:] == [
        "C: MAIL FROM:<a@b>",
        "S: 250 2.1.0 Ok",
        "C: RCPT TO:<bob@mail.test>",
        "S: 250 2.1.5 Ok",
        "C: DATA",
        "S: 354 End data with <CR><LF>.<CR><LF>",
        "C: [message: 3 lines, 20 octets]",
        "C: .",
        "S: 250 2.0.0 Ok: queued as 1",
        "C: AUTH PLAIN ****",
        "S: 535 5.7.8 Error: authentication failed",
        "C: mail from:<\\x1bodd>",
        "S: 501 5.1.7 Bad sender address syntax",
        "C: NOOP\\x0d",
        "S: 500 5.5.2 Error: bad syntax (the line contained a control character: ^M, a carriage return)",
        "C: QUIT",
        "S: 221 2.0.0 Bye",
    ]


def test_a_pipelined_batch_of_numbered_pop3_commands_is_recorded_as_the_same_lines_sent_one_by_one():
    batch = b"RETR 1\r\ndele 1\nList 2\r\nretr 2\r\nUIDL 2\r\n"
    answers = [
        b"+OK 20 octets\r\nSubject: a\r\n\r\nbody\r\n.\r\n",
        b"+OK message 1 deleted\r\n",
        b"+OK 2 40\r\n",
        b"+OK 20 octets\r\nSubject: b\r\n\r\nbody\r\n.\r\n",
        b"+OK 2 abc\r\n",
    ]
    _, together, t = _record("pop3")
    t.client_bytes(batch)
    for answer in answers:
        t.server_bytes(answer)
    _, alone, t = _record("pop3")
    for line in batch.splitlines(keepends=True):
        t.client_bytes(line)
    for answer in answers:
        t.server_bytes(answer)
    assert _lines(together) == _lines(alone)
    assert _lines(together)[:5] == ["C: RETR 1", "C: dele 1", "C: List 2", "C: retr 2", "C: UIDL 2"]
    assert _lines(together).count("S: [message: 3 lines, 20 octets]") == 2
    # A batch of RETRs only (the commonest) and one with a line that is not.
    for odd in (b"", b"RETR \r\n", b"RETR 1 2\r\n", b"XRETR 1\r\n"):
        batch = b"RETR 1\r\nretr 2\n" + odd
        _, together, t1 = _record("pop3")
        t1.client_bytes(batch)
        _, alone, t2 = _record("pop3")
        for line in batch.splitlines(keepends=True):
            t2.client_bytes(line)
        assert _lines(together) == _lines(alone)
        # Which answers will carry a message: the same either way.
        assert list(t1._pop3) == list(t2._pop3) == [True, True] + ([odd[:5] == b"RETR "] if odd else [])
    # A password is never in such a batch: PASS takes the masking path.
    _, masked, t = _record("pop3")
    t.client_bytes(b"USER bob\r\nPASS 1234\r\n")
    assert _lines(masked) == ["C: USER bob", "C: PASS ****"]


def test_a_pop3_listing_line_of_message_354_is_not_taken_for_smtp_data():
    _, record, t = _record("pop3")
    t.client_bytes(b"UIDL\r\n")
    t.server_bytes(b"+OK unique-id listing follows\r\n353 a\r\n354 b\r\n.\r\n")
    t.client_bytes(b"RETR 354\r\n")
    assert t.server_message(b"+OK 20 octets", 3, 20)
    assert _lines(record)[-5:] == ["S: .", "C: RETR 354", "S: +OK 20 octets", "S: [message: 3 lines, 20 octets]", "S: ."]


def test_lines_nobody_watched_are_shown_as_text_with_control_bytes_visible_when_read():
    bus, record, t = _record("smtp")
    t.client_bytes(b"HELO caf\xc3\xa9\x1b[31m\r\n")
    seen = []
    bus.subscribe(lambda r, e: seen.append(e[3]), session=record.id)
    t.server_bytes(b"250 mail.test\r\n")
    assert _lines(record) == ["C: HELO café\\x1b[31m", "S: 250 mail.test"]
    assert seen == ["250 mail.test"]  # a watcher gets text at once


def test_imap_fetch_body_literals_are_one_summary_line_each_even_split_across_writes():
    _, record, t = _record("imap")
    t.client_bytes(b"a1 FETCH 1:2 (BODY.PEEK[] FLAGS)\r\n")
    body = b"Subject: secret plans\r\n\r\nline\r\n" * 20
    t.server_bytes(b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body[:100])
    t.server_bytes(body[100:] + b" FLAGS (\\Seen))\r\n* 2 FETCH (BINARY[] ~{0}\r\n)\r\n")
    t.server_bytes(b"a1 OK FETCH completed\r\n")
    assert _lines(record) == [
        "C: a1 FETCH 1:2 (BODY.PEEK[] FLAGS)",
        "S: * 1 FETCH (BODY[] {%d}" % len(body),
        "S: [literal: %d octets]" % len(body),
        "S:  FLAGS (\\Seen))",
        "S: * 2 FETCH (BINARY[] ~{0}",
        "S: )",
        "S: a1 OK FETCH completed",
    ]


def test_imap_client_literals_are_summarised_a_synchronizing_one_only_once_the_server_says_go_ahead():
    _, record, t = _record("imaps")
    message = b"From: a@b\r\n\r\nhello\r\nworld\r\n"
    t.client_bytes(b"a1 APPEND INBOX {%d+}\r\n" % len(message) + message[:5])
    t.client_bytes(message[5:] + b"\r\na2 LOGIN alice {6}\r\n")
    t.server_bytes(b"a1 OK [APPENDUID 1 1] APPEND completed\r\n+ Ready for additional command text\r\n")
    t.client_bytes(b"secret\r\n")
    t.server_bytes(b"a2 OK LOGIN completed\r\n")
    # refused before the literal was sent: the client sends its next command, not the literal
    t.client_bytes(b"a3 SEARCH TEXT {100000}\r\n")
    t.server_bytes(b"a3 NO [TOOBIG] literal of 100000 octets is over the limit of 8192\r\n")
    t.client_bytes(b"a4 NOOP\r\n")
    assert _lines(record) == [
        "C: a1 APPEND INBOX {%d+}" % len(message),
        "C: [literal: %d octets]" % len(message),
        "C: ",
        "C: a2 LOGIN alice ****",
        "S: a1 OK [APPENDUID 1 1] APPEND completed",
        "S: + Ready for additional command text",
        "C: [literal: 6 octets]",
        "C: ",
        "S: a2 OK LOGIN completed",
        "C: a3 SEARCH TEXT {100000}",
        "S: a3 NO [TOOBIG] literal of 100000 octets is over the limit of 8192",
        "C: a4 NOOP",
    ]
    assert not any("secret" in line or "hello" in line for line in _lines(record))


def test_imap_untagged_responses_written_together_are_kept_line_by_line_in_order_and_bounded():
    from twisted_mailhub.transcript import SessionEvents, Transcriber

    bus = SessionEvents(max_lines=5)
    record = bus.start("imap", ("127.0.0.1", 4000), ("127.0.0.1", 143))
    t = Transcriber(record.id, record)
    t.client_bytes(b"a1 FETCH 1:6 (UID FLAGS)\r\n")
    t.server_bytes(b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen \x1b))\r\n" % (i, i) for i in range(1, 7)) + b"a1 OK FETCH completed\r\n")
    assert _lines(record) == [f"S: * {i} FETCH (UID {i} FLAGS (\\Seen \\x1b))" for i in range(3, 7)] + ["S: a1 OK FETCH completed"]
    assert [e[0] for e in record.events] == [5, 6, 7, 8, 9]  # seq: the start, the client line, then the 7 server lines
    assert record.dropped == 4
    seen = []
    bus.subscribe(lambda r, e: seen.append(e[3]), session=record.id)
    t.server_bytes(b"* 7 EXISTS\r\n* 1 RECENT\r\n")
    assert seen == ["* 7 EXISTS", "* 1 RECENT"]  # a watcher gets each line at once


def test_a_password_is_masked_however_the_client_spaces_or_splits_the_line():
    # Found by breaker: the hub accepts these lines (IMAP and POP3 split
    # on any run of blanks; a user name may be an IMAP literal), and the
    # transcript showed the password in each.
    _, record, t = _record("imap")
    t.client_bytes(b"a1 LOGIN {5+}\r\nalice s3cretA\r\n")
    t.client_bytes(b"a2  LOGIN alice s3cretB\r\n")
    t.client_bytes(b"a3 LOGIN alice\t s3cretC\r\n")
    t.client_bytes(b"a4\tLOGIN alice s3cretD\r\n")
    t.client_bytes(b"a5  AUTHENTICATE PLAIN czNjcmV0RQ==\r\n")
    t.server_bytes(b"a5 NO [AUTHENTICATIONFAILED] wrong password\r\n")
    t.client_bytes(b"a6 LOGIN {5}\r\n")
    t.server_bytes(b"+ Ready for additional command text\r\n")
    t.client_bytes(b"alice {7}\r\n")
    t.server_bytes(b"+ Ready for additional command text\r\n")
    t.client_bytes(b"s3cretF\r\n")
    t.client_bytes(b"a7 NOOP\r\n")
    lines = _lines(record)
    assert not any("s3cret" in line or "czNjcmV0" in line for line in lines), lines
    assert "C: a7 NOOP" in lines and "C: a2  LOGIN alice ****" in lines
    _, record, t = _record("pop3")
    t.client_bytes(b"USER alice\r\n PASS s3cretG\r\n\tpass s3cretH\r\n")
    lines = _lines(record)
    assert not any("s3cret" in line for line in lines), lines


def _fed(protocol: str, chunks: list[tuple[str, bytes]], one_line_at_a_time: bool) -> list[str]:
    """The C:/S: lines of a session whose bytes came in C{chunks}, or one line per write."""
    _, record, t = _record(protocol)
    for who, data in chunks:
        feed = t.client_bytes if who == "C" else t.server_bytes
        if one_line_at_a_time:
            for line in data.splitlines(keepends=True):
                feed(line)
        else:
            feed(data)
    return _lines(record)


def test_lines_sent_together_are_recorded_as_when_sent_one_at_a_time():
    # What a pipelining client and the replies gathered for it write: the
    # lines recorded (masks, the DATA summary) are those of one write per line.
    session = [
        ("S", b"220 mail.test ESMTP\r\n"),
        ("C", b"EHLO a.example\r\n"),
        ("S", b"250-mail.test Hello\r\n250-PIPELINING\r\n250 HELP\r\n"),
        ("C", b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@mail.test>\r\nDATA\r\n"),
        ("S", b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
        ("C", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        ("S", b"250 2.0.0 Ok: queued as 1\r\n"),
        ("C", b"RSET\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nNOOP\r\n"),
        ("S", b"250 2.0.0 Ok\r\n535 5.7.8 Error: authentication failed\r\n250 2.0.0 Ok\r\n"),
        ("C", b"NOOP\r\nUSER x\r\nPASS secret\r\n"),
        ("C", b"ODD\rLINE\r\nNEXT\r\n"),
        ("S", b"500 5.5.2 Error\r\n500 5.5.2 Error\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 2.0.0 Bye\r\n"),
    ]
    together = _fed("smtp", session, one_line_at_a_time=False)
    assert together == _fed("smtp", session, one_line_at_a_time=True)
    assert "C: RCPT TO:<bob@mail.test>" in together
    assert "C: [message: 3 lines, 20 octets]" in together
    assert "C: AUTH PLAIN ****" in together and "C: PASS ****" in together
    assert not any("secret" in line or "AGFsaWNl" in line for line in together)
    ftp = [("C", b"USER anonymous\r\nPASS me@example\r\nPWD\r\n"), ("S", b"331 ok\r\n230 ok\r\n257 \"/\"\r\n")]
    assert _fed("ftp", ftp, False) == _fed("ftp", ftp, True) == [
        "C: USER anonymous", "C: PASS ****", "C: PWD", "S: 331 ok", "S: 230 ok", 'S: 257 "/"'
    ]


def test_one_line_writes_recorded_on_an_ftp_control_record_read_as_on_a_session_record():
    # The shortcuts that append a line to a SessionRecord's events inline
    # leave a record that keeps its events otherwise (FTP's ControlRecord)
    # to its own add_line.
    from twisted_mailhub.ftp.record import ControlRecord
    from twisted_mailhub.transcript import SessionEvents, Transcriber

    def lines(kind):
        bus = SessionEvents(clock=lambda: 1000.0)
        record = bus.start("ftp", ("127.0.0.1", 4000), ("127.0.0.1", 21), id="ftp#1", **({"kind": kind} if kind else {}))
        t = Transcriber(record.id, record)
        for who, data in [("S", b"220 ready\r\n"), ("C", b"USER alice\r\n"), ("S", b"331 ok\r\n"), ("C", b"PASS secret\r\n"), ("S", b"230 in\r\n"), ("C", b"PWD\r\n")]:
            (t.client_bytes if who == "C" else t.server_bytes)(data)
        return [e[2:] for e in record.events]

    assert lines(ControlRecord) == lines(None)
    assert ("C", "PASS ****") in lines(ControlRecord) and ("S", "230 in") in lines(ControlRecord)


@pytest.mark.parametrize("protocol, first, then", [
    ("imap", b"a1 LOGIN alice s3cretA", []),
    ("imap", b"a1 AUTHENTICATE PLAIN czNjcmV0QQ", []),
    ("imap", b"s3cretA", [b"a1 LOGIN alice"]),
    ("pop3", b"PASS s3cretA", [b"USER alice"]),
    ("pop3", b"AUTH PLAIN czNjcmV0QQ", []),
    ("smtp", b"AUTH PLAIN czNjcmV0QQ", []),
    ("smtp", b"czNjcmV0QQ", [b"AUTH LOGIN"]),
    ("ftp", b"PASS s3cretA", [b"USER alice"]),
])
def test_the_start_shown_of_an_over_long_line_is_masked_and_its_rest_is_no_line(protocol, first, then):
    # Found by breaker2: a line longer than 4096 octets that arrived in
    # parts (over TLS, or any line past one read) was shown by its first
    # 80 octets, unmasked: "a1 LOGIN alice s3cretA..." in the console, its
    # export and --transcript's log; and the rest of it, up to its LF, was
    # shown as a client line of its own.
    _, record, t = _record(protocol)
    prompts = {"imap": b"+ \r\n", "pop3": b"+ \r\n", "smtp": b"334 VXNlcm5hbWU6\r\n", "ftp": b"331 Password required for alice.\r\n"}
    for line in then:
        t.client_bytes(line + b"\r\n")
        t.server_bytes(prompts[protocol] if protocol != "pop3" else b"+OK now send PASS\r\n")
    t.client_bytes(first + b"x" * 5000)
    t.client_bytes(b"x" * 5000)
    t.client_bytes(b"x" * 100 + b"\r\n")
    # the hub's answer to the over-long line (IMAP ends the session)
    t.server_bytes({
        "imap": b"* BYE line too long: at most 65536 octets per line\r\n",
        "pop3": b"-ERR command line too long (at most 1024 octets)\r\n",
        "smtp": b"500 5.5.2 Error: line too long\r\n",
        "ftp": b"500 Command line too long (at most 4096 octets).\r\n",
    }[protocol])
    if protocol != "imap":
        t.client_bytes(b"NOOP\r\n")
    lines = _lines(record)
    assert not any("s3cret" in line or "czNjcmV0" in line for line in lines), lines
    assert not any(line.startswith("C: xxx") for line in lines), lines
    shown = [line for line in lines if line.startswith("C:")][len(then)]
    assert "****" in shown and shown.endswith("... [over-long line]"), lines
    assert sum("[over-long line]" in line for line in lines) == 1, lines
    if protocol != "imap":
        assert lines[-1] == "C: NOOP", lines


@pytest.mark.parametrize("split", [0, 1, 3])
def test_an_over_long_imap_line_ending_in_a_literal_shows_the_literal_as_one_line(split):
    # An IMAP line of 4 KiB to 64 KiB is the server's to take (a long UID
    # set); one ending in a literal ({5+}) has the literal's octets next.
    # Shown by its start (breaker2), its literal was then read as lines
    # ("C: hello"): an APPEND's message line by line.
    _, record, t = _record("imap")
    line = b"a1 UID SEARCH UID " + b"1," * 2500 + b"2 TEXT {5+}"
    cut = len(line) - split
    t.client_bytes(line[:cut])
    t.client_bytes(line[cut:] + b"\r\nhel")
    t.client_bytes(b"lo\r\n")
    t.client_bytes(b"a2 NOOP\r\n")
    lines = _lines(record)
    assert lines[0].startswith("C: a1 UID SEARCH UID 1,1,") and lines[0].endswith("... [over-long line]"), lines
    assert lines[1:] == ["C: [literal: 5 octets]", "C: ", "C: a2 NOOP"], lines
