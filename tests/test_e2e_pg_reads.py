"""
POP3 RETR/TOP and IMAP FETCH BODY[] over the PostgreSQL store
(C{--store postgresql:DSN}), with a real hub, a real PostgreSQL and
poplib/imaplib: the message bytes are read on the store's read
connections in a worker thread, so another session is answered
meanwhile however slow the database is, the bytes are those stored, and
a database lost meanwhile gives a clear protocol error (-ERR [SYS/TEMP],
NO [UNAVAILABLE]) and the session goes on.

The database is slowed in the hub alone, as in
L{tests.test_e2e_pg_search}: every read of message bytes sleeps
L{DELAY} s.
"""

from __future__ import annotations

import poplib
import threading
import time

from tests.test_e2e_imap import append, login
from tests.test_e2e_pg_search import DELAY, message, pings_while, slow_pg_hub  # noqa: F401 (a fixture)


def fill(hub, count: int, make=message) -> list[bytes]:
    """C{count} messages APPENDed to alice's INBOX; their bytes."""
    c = login(hub)
    sent = [make(n) for n in range(count)]
    for m in sent:
        append(c, message=m)
    c.logout()
    return sent


def pop(hub) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    p.user("alice")
    p.pass_("secret")
    return p


def retrieved(lines: list[bytes]) -> bytes:
    """A message as poplib gives it back (lines, dot-unstuffed), as octets."""
    return b"".join(line + b"\r\n" for line in lines)


def fetched(data: list) -> list[bytes]:
    """The literals of an imaplib FETCH answer, in order."""
    return [item[1] for item in data if isinstance(item, tuple)]


def test_pop3_retr_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 8)
    p = pop(hub)

    def retr_all():
        return [retrieved(p.retr(n)[1]) for n in range(1, 9)]

    got, waits = pings_while(hub, retr_all)
    assert got == sent  # the bytes stored, in order
    # (before: each RETR's read was a round trip in the reactor; bob's NOOP
    # waited for it, 0.4 s)
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    assert p.quit().startswith(b"+OK")


def test_pop3_top_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 3)

    p = pop(hub)
    got, waits = pings_while(hub, lambda: [p.top(n, 1)[1] for n in (1, 2, 3)])
    for m, lines in zip(sent, got):
        header, _, body = m.partition(b"\r\n\r\n")
        assert lines == header.split(b"\r\n") + [b""] + body.split(b"\r\n")[:1], lines
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    p.quit()


def test_imap_fetch_body_of_many_messages_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 50)
    c = login(hub)
    c.select("INBOX")
    (typ, data), waits = pings_while(hub, lambda: c.fetch("1:50", "(UID BODY[])"))
    assert typ == "OK", data
    assert fetched(data) == sent
    assert [item[0].split(b" ")[0] for item in data if isinstance(item, tuple)] == [b"%d" % n for n in range(1, 51)]
    # (before: the 4 batched reads, 1 + 3 + 12 + 34 messages, each held bob)
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    # BODY[] set \Seen (RFC 9051 §6.4.5), as before
    typ, data = c.fetch("1,50", "FLAGS")
    assert all(b"\\Seen" in d for d in data), data
    c.logout()


def test_imap_fetch_of_one_small_message_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 3)
    c = login(hub)
    c.select("INBOX")

    def fetch_each():
        return [c.fetch(str(n), "(BODY.PEEK[] RFC822)") for n in (2, 3, 1)]

    answers, waits = pings_while(hub, fetch_each)
    for n, (typ, data) in zip((2, 3, 1), answers):
        assert typ == "OK", data
        assert fetched(data) == [sent[n - 1], sent[n - 1]]
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    c.logout()


def big_message() -> bytes:
    big = message(0) + b"a long line of words in a big message\r\n" * 40000
    assert len(big) > 1024 * 1024  # (imap/fetch.py STREAM_OVER, pop3.py one_write_limit)
    return big


def test_a_big_message_streamed_from_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 1, lambda n: big_message())
    c = login(hub)
    c.select("INBOX")
    (typ, data), waits = pings_while(hub, lambda: c.fetch("1", "(BODY.PEEK[])"))
    assert typ == "OK" and fetched(data) == sent
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    c.logout()
    p = pop(hub)
    (_, lines, _), waits = pings_while(hub, lambda: p.retr(1))
    assert retrieved(lines) == sent[0]
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    p.quit()


def test_a_database_lost_before_retr_and_fetch_gives_a_protocol_error_and_the_sessions_go_on(start_hub, pg_dsn, postgresql):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    sent = fill(hub, 3) + fill(hub, 1, lambda n: big_message())
    c = login(hub)
    c.select("INBOX")
    p = pop(hub)
    postgresql.stop()
    try:
        for n in ("1", "4"):
            try:
                p.retr(int(n))
                raise AssertionError("RETR answered +OK with the database down")
            except poplib.error_proto as e:
                assert e.args[0].startswith(b"-ERR [SYS/TEMP]"), e
            try:
                p.top(int(n), 0)
                raise AssertionError("TOP answered +OK with the database down")
            except poplib.error_proto as e:
                assert e.args[0].startswith(b"-ERR [SYS/TEMP]"), e
        assert p.noop().startswith(b"+OK")
        for spec in ("1:3", "4"):
            typ, data = c.fetch(spec, "(BODY.PEEK[])")
            assert typ == "NO" and data[-1].startswith(b"[UNAVAILABLE]"), (spec, data)
        assert c.noop()[0] == "OK"
    finally:
        postgresql.restart()
    assert retrieved(p.retr(2)[1]) == sent[1]
    assert retrieved(p.retr(4)[1]) == sent[3]
    p.quit()
    typ, data = c.fetch("1:4", "(BODY.PEEK[])")
    assert typ == "OK" and fetched(data) == sent
    c.logout()
    assert "Traceback" not in hub.log


def test_a_database_lost_during_a_slow_fetch_and_retr_gives_a_protocol_error(slow_pg_hub, postgresql):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 30)
    c = login(hub)
    c.select("INBOX")
    p = pop(hub)
    outcome: dict = {}

    def fetch():
        outcome["fetch"] = c.fetch("1:30", "(BODY.PEEK[])")

    def retr():
        answers = []
        for n in range(1, 31):
            try:
                answers.append(retrieved(p.retr(n)[1]))
            except poplib.error_proto as e:
                answers.append(e.args[0])
        outcome["retr"] = answers

    doers = [threading.Thread(target=fetch), threading.Thread(target=retr)]
    for t in doers:
        t.start()
    time.sleep(2 * DELAY + 0.1)  # (a few reads done, more to come)
    postgresql.stop()
    try:
        for t in doers:
            t.join(60)
        typ, data = outcome["fetch"]
        assert typ == "NO" and data[-1].startswith(b"[UNAVAILABLE]"), data[-1:]
        # the messages sent before are whole and in order (imaplib keeps
        # the untagged answers of a NO)
        literals = fetched(c.response("FETCH")[1])
        assert 0 < len(literals) < 30 and literals == sent[: len(literals)], len(literals)
        answers = outcome["retr"]
        assert answers[0] == sent[0]
        assert answers[-1].startswith(b"-ERR [SYS/TEMP]"), answers[-1]
        assert c.noop()[0] == "OK" and p.noop().startswith(b"+OK")
    finally:
        postgresql.restart()
    assert retrieved(p.retr(30)[1]) == sent[29]
    p.quit()
    c.logout()
    assert "Traceback" not in hub.log


def test_notifys_new_message_fetch_of_its_body_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    from tests.test_e2e_imap_rfc import raw_login

    hub = slow_pg_hub(DELAY)
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    assert a.cmd(b"N", b"NOTIFY SET (SELECTED (MessageNew (UID RFC822) MessageExpunge))")[-1].startswith(b"N OK")
    m = message(5)
    other = login(hub)

    def arrive_and_be_told() -> list[bytes]:
        append(other, message=m)
        lines = [a.line()]
        while lines[-1] != b")":
            lines.append(a.line())
        return lines

    lines, waits = pings_while(hub, arrive_and_be_told)
    other.logout()
    # RFC 5465 §5.2: the new message's EXISTS, then its fetch attributes
    assert lines[0] == b"* 1 EXISTS", lines
    at = lines.index(b"* 1 FETCH (UID 1 RFC822 {%d}" % len(m))
    assert b"".join(line + b"\r\n" for line in lines[at + 1 : -1]) == m
    # (before: the body was read in the reactor when the change came)
    assert waits and max(waits) < DELAY / 2, waits
    assert a.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    a.close()


def catenate(r, url: bytes, tag: bytes = b"c") -> bytes:
    """APPEND INBOX CATENATE (URL url): the tagged reply."""
    r.send(b'%s APPEND INBOX CATENATE (URL "%s" TEXT {4+}\r\nend\n)\r\n' % (tag, url))
    return r.until_tag(tag)[-1]


def test_catenate_of_a_url_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    from tests.test_e2e_imap_rfc import raw_login

    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 2)
    r = raw_login(hub)
    r.cmd(b"s", b"SELECT INBOX")
    reply, waits = pings_while(hub, lambda: catenate(r, b";UID=2/;SECTION=HEADER"))
    assert reply.startswith(b"c OK [APPENDUID"), reply
    lines = r.cmd(b"f", b"FETCH 3 BODY.PEEK[]")
    header = sent[1][: sent[1].index(b"\r\n\r\n") + 4]
    assert (b"\r\n".join(lines[1:-2]) + b"\r\n").startswith(header + b"end"), lines
    # (before: the message was read in the reactor, 0.4 s)
    assert waits and max(waits) < DELAY / 2, waits
    r.close()


def test_catenate_with_the_database_lost_says_unavailable(start_hub, pg_dsn, postgresql):
    from tests.test_e2e_imap_rfc import raw_login

    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    fill(hub, 1)
    r = raw_login(hub)
    r.cmd(b"s", b"SELECT INBOX")
    postgresql.stop()
    try:
        reply = catenate(r, b";UID=1")
        assert reply.startswith(b"c NO [UNAVAILABLE]"), reply
        assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        postgresql.restart()
    assert catenate(r, b";UID=1", b"d").startswith(b"d OK [APPENDUID")
    r.close()
    assert "Traceback" not in hub.log


def test_retr_top_and_fetch_on_postgresql_give_the_octets_maildir_gives(start_hub, pg_dsn):
    """Odd messages (dots at line starts, bare LF and CR, a UTF-8 header, small and over 1 MiB) read on both stores."""
    dots = b"From: a@localhost\r\nSubject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"
    bare = b"From: a@localhost\nSubject: bare\n\nline one\nline two\rthree\r\n"
    utf8 = "From: a@localhost\r\nSubject: Grüße\r\n\r\nbody\r\n".encode("utf-8")
    big_utf8 = utf8 + b"a long line of words in a big message\r\n" * 40000
    big_dots = dots + b".a line with a dot\r\n" * 60000
    messages = [dots, bare, utf8, big_utf8, big_dots, big_message()]
    maildir = start_hub("--no-ftp")
    postgres = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    seen = []
    for hub in (maildir, postgres):
        c = login(hub)
        for m in messages:
            append(c, message=m)
        c.select("INBOX")
        typ, data = c.fetch("1:*", "(BODY.PEEK[] RFC822.SIZE)")
        assert typ == "OK"
        singles = [fetched(c.fetch(str(n), "(BODY.PEEK[])")[1]) for n in range(1, 7)]
        c.logout()
        p = pop(hub)
        answers = []
        for n in range(1, 7):
            answers.append(p.retr(n)[:2])
            answers.append(p.top(n, 2)[:2])
        p.quit()
        seen.append((fetched(data), singles, answers))
    assert seen[1] == seen[0]
    literals, singles, answers = seen[1]
    assert literals[0] == dots and singles[5] == [messages[5]]
    # (the UTF-8 header downgraded for a POP3 client that did not send UTF8, RFC 6856 §3)
    assert b"subject: =?utf-8?" in b"\r\n".join(answers[6][1]).lower(), answers[6][1][:3]
    assert answers[8][1][-1] == b".a line with a dot" and answers[8][0].startswith(b"+OK %d octets" % len(big_dots))


def test_a_database_lost_while_a_big_message_is_sent_ends_the_fetch_no_and_the_retr_connection(slow_pg_hub, postgresql):
    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 1, lambda n: big_message())
    c = login(hub)
    c.select("INBOX")
    outcome: dict = {}
    fetcher = threading.Thread(target=lambda: outcome.update(fetch=c.fetch("1", "(BODY.PEEK[])")))
    fetcher.start()
    time.sleep(2 * DELAY + 0.2)  # (its literal began: a few 256 KB slices read)
    postgresql.stop()
    try:
        fetcher.join(60)
        typ, data = outcome["fetch"]
        # the literal was filled to its promised length, then NO, not OK
        assert typ == "NO" and data[-1].startswith(b"[UNAVAILABLE]"), data[-1:]
        literal = fetched(c.response("FETCH")[1])[0]
        assert len(literal) == len(sent[0]) and literal != sent[0]
        assert c.noop()[0] == "OK"
    finally:
        postgresql.restart()
    assert fetched(c.fetch("1", "(BODY.PEEK[])")[1]) == sent
    c.logout()
    p = pop(hub)
    retriever = threading.Thread(target=lambda: outcome.update(retr=_retr_or_error(p, 1)))
    retriever.start()
    time.sleep(2 * DELAY + 0.2)
    postgresql.stop()
    try:
        retriever.join(60)
        # the reply line was sent: the connection is closed, no terminating dot
        assert isinstance(outcome["retr"], (poplib.error_proto, EOFError, OSError)), outcome["retr"]
    finally:
        postgresql.restart()
    p.close()
    p = pop(hub)  # (the maildrop was given up with the connection)
    assert retrieved(p.retr(1)[1]) == sent[0]
    p.quit()
    assert "Traceback" not in hub.log


def _retr_or_error(p: poplib.POP3, n: int):
    try:
        return p.retr(n)
    except (poplib.error_proto, EOFError, OSError) as e:
        return e


def test_reads_right_after_the_database_dropped_every_connection_are_answered(slow_pg_hub, pg_dsn):
    # The read connections kept idle (store.postgresql.ReadConnections)
    # all died with the server's end of them (a restart, a failover,
    # pg_terminate_backend). Before, a read took a dead idle one, then on
    # its connection error another dead idle one, and answered -ERR
    # [SYS/TEMP] / NO [UNAVAILABLE] with the database back and well.
    import psycopg

    hub = slow_pg_hub(DELAY)
    sent = fill(hub, 6)
    sessions = [login(hub) for _ in range(2)]
    for c in sessions:
        c.select("INBOX")
    # Two reads at once in the two parsing threads: two read connections,
    # both kept idle afterwards.
    doers = [threading.Thread(target=c.fetch, args=("1:6", "(BODY.PEEK[])")) for c in sessions]
    for t in doers:
        t.start()
    for t in doers:
        t.join(60)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 3  # (the reactor's connection and the two readers)
    p = pop(hub)
    assert retrieved(p.retr(1)[1]) == sent[0]
    typ, data = sessions[0].fetch("2", "(BODY.PEEK[])")
    assert typ == "OK" and fetched(data) == [sent[1]], data
    p.quit()
    for c in sessions:
        c.logout()
    assert "Traceback" not in hub.log
