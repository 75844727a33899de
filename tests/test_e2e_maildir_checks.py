"""
Files another program put into a Maildir are listed at their name's C{S=}
and checked (read, made CRLF in place) in a worker thread before the folder
is shown (store/maildir.py, MaildirFolder._check_in_thread; _check when a
thread could not), and every size a client is told is still the
size of what it is sent, CRLF (RFC 3501 §2.3.4, RFC 1939 §11), across
restarts. A list written by an older hub, which took C{S=} on trust for
good, has its outside entries checked the same way. Real hub, imaplib and
poplib.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re

LF = b"From: a@example.org\nSubject: stored with LF\n\n" + b"a line of the body\n" * 4
BIG_LF = b"From: a@example.org\nSubject: big, stored with LF\n\n" + b"a line of a big body, sixty octets long, more or less...\n" * 20_000


def _fetch(hub, items: str) -> list:
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    c.select("INBOX", readonly=True)
    _, data = c.fetch("1:*", items)
    c.logout()
    return data


def _sizes(hub) -> list[int]:
    return [int(n) for n in re.findall(rb"RFC822\.SIZE (\d+)", b" ".join(d if isinstance(d, bytes) else d[0] for d in _fetch(hub, "(RFC822.SIZE)")))]


def _bodies(hub) -> list[bytes]:
    return [part[1] for part in _fetch(hub, "(BODY.PEEK[])") if isinstance(part, tuple)]


def _pop3_list(hub) -> list[tuple[int, int]]:
    """(LIST's size, octets RETR sent) of each message, for a session without UTF8."""
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=20)
    p.user("alice")
    p.pass_("secret")
    out = []
    for line in p.list()[1]:
        number, size = line.split()
        _, lines, _ = p.retr(int(number))
        out.append((int(size), sum(len(text[1:] if text.startswith(b"..") else text) + 2 for text in lines)))
    p.rset()
    p.quit()
    return out


def test_a_file_found_by_a_folders_load_is_made_crlf_before_the_folder_is_shown(start_hub):
    hub = start_hub()
    cur = os.path.join(hub.maildir("alice@localhost"), "cur")
    os.makedirs(cur, exist_ok=True)
    path = os.path.join(cur, "1700000002.M2P1.maildrop,S=%d:2,S" % len(LF))  # S= of the LF file
    with open(path, "wb") as f:
        f.write(LF)
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    c.logout()
    crlf = LF.replace(b"\n", b"\r\n")
    with open(path, "rb") as f:
        # read and made CRLF in place by the load's check, in a worker
        # thread, before SELECT was answered (not in the reactor at the
        # first FETCH of its size)
        assert f.read() == crlf
    hub.restart()
    assert _sizes(hub) == [len(crlf)]  # the size as sent
    assert _bodies(hub) == [crlf]
    with open(path, "rb") as f:
        assert f.read() == crlf
    hub.restart()
    assert _sizes(hub) == [len(crlf)]
    assert _pop3_list(hub) == [(len(crlf), len(crlf))]


def test_a_big_bare_lf_file_an_older_hub_listed_at_its_stored_size_is_told_at_its_size_as_sent(start_hub):
    hub = start_hub()
    maildir = hub.maildir("alice@localhost")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    base = "1700000001.M1P1.maildrop,S=%d" % len(BIG_LF)
    small_base = "1700000002.M2P1.maildrop,S=%d" % len(LF)
    for name, data in ((base, BIG_LF), (small_base, LF)):
        with open(os.path.join(maildir, "cur", name + ":2,S"), "wb") as f:
            f.write(data)
    # the UID list as a hub before these checks left it: S= taken on trust
    # (and no mailhub-unchecked beside it)
    assert not os.path.exists(os.path.join(maildir, "mailhub-unchecked"))
    with open(os.path.join(maildir, "mailhub-uidlist"), "w") as f:
        f.write("mailhub-uidlist 1 1700000000 3\n")
        f.write(f"1 {base} {len(BIG_LF)} 1700000001\n")
        f.write(f"2 {small_base} {len(LF)} 1700000002\n")
    hub.restart()
    big, small = BIG_LF.replace(b"\n", b"\r\n"), LF.replace(b"\n", b"\r\n")
    assert len(big) > 1024 * 1024  # (streamed by FETCH in slices)
    assert _pop3_list(hub) == [(len(big), len(big)), (len(small), len(small))]
    assert _sizes(hub) == [len(big), len(small)]
    bodies = _bodies(hub)
    assert bodies == [big, small]
    hub.restart()
    assert _sizes(hub) == [len(big), len(small)]


def test_under_workers_a_file_listed_on_trust_is_told_at_its_size_as_sent_by_every_worker(start_hub):
    hub = start_hub("--workers", "2")
    cur = os.path.join(hub.maildir("alice@localhost"), "cur")
    os.makedirs(cur, exist_ok=True)
    with open(os.path.join(cur, "1700000002.M2P1.maildrop,S=%d:2,S" % len(LF)), "wb") as f:
        f.write(LF)
    crlf = LF.replace(b"\n", b"\r\n")
    # several connections: the workers share them
    sessions = []
    for _ in range(6):
        c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
        c.login("alice", "secret")
        c.select("INBOX", readonly=True)  # (was BAD [SERVERBUG] on the worker whose first load found the file)
        sessions.append(c)
    for c in sessions:
        _, data = c.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert int(re.search(rb"RFC822\.SIZE (\d+)", data[0][0]).group(1)) == len(crlf)
        assert data[0][1] == crlf
        c.logout()
    hub.restart()
    assert _sizes(hub) == [len(crlf)]


def test_after_a_whole_folder_is_checked_no_name_stays_listed_on_trust_not_even_a_file_gone_meanwhile(start_hub):
    hub = start_hub()
    maildir = hub.maildir("alice@localhost")
    cur = os.path.join(maildir, "cur")
    os.makedirs(cur, exist_ok=True)
    paths = []
    for n in range(3):
        paths.append(os.path.join(cur, "17000000%02d.M%dP1.maildrop,S=%d:2,S" % (n, n, len(LF))))
        with open(paths[-1], "wb") as f:
            f.write(LF)
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    assert c.select("INBOX", readonly=True) == ("OK", [b"3"])
    c.logout()
    hub.stop()
    unchecked = os.path.join(maildir, "mailhub-unchecked")
    with open(unchecked, encoding="utf-8") as f:
        header = f.readline()
        assert not any(line.startswith("? ") for line in f)  # checked by the load, before SELECT's answer
    # As a run stopped before its checks leaves it: all three on trust.
    with open(unchecked, "w", encoding="utf-8") as f:
        f.write(header + "".join("? %s\n" % os.path.basename(path).split(":")[0] for path in paths))
    for path in paths:
        with open(path, "wb") as f:
            f.write(LF)
    os.unlink(paths[1])  # the other program took one back while the hub was down
    hub.start()
    crlf = LF.replace(b"\n", b"\r\n")
    assert _sizes(hub) == [len(crlf), len(crlf)]
    with open(os.path.join(maildir, "mailhub-unchecked"), encoding="utf-8") as f:
        assert [line for line in f if line.startswith("? ")] == []
    for path in (paths[0], paths[2]):
        with open(path, "rb") as f:
            assert f.read() == crlf
