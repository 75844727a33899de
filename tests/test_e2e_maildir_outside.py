# -*- test-case-name: tests.test_e2e_maildir_outside -*-
"""
Files another program puts into a Maildir (an MDA such as maildrop or
Dovecot's LDA, a restore): the sizes the hub tells are those of what it
sends (RFC 3501 §2.3.4: RFC822.SIZE; RFC 1939 §5: LIST), with CRLF line
ends, whatever their name's C{S=} says (store/maildir.py: _register).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re

LF = b"From: a@example.org\nSubject: stored with LF\n\nline one\nline two\n"
UTF8 = "From: a@example.org\r\nSubject: caf\u00e9 \u00fcber alles\r\n\r\nbody\r\n".encode()

# (sub-directory, file name, octets): as other programs name them
DROPS = [
    ("cur", "1700000001.M1P1.outside:2,S", LF),  # no S=
    ("cur", "1700000002.M2P1.outside,S=%d:2,S" % len(LF), LF),  # maildrop: S= of the LF file
    ("cur", "1700000003.M3P1.outside,S=%d,W=%d:2,S" % (len(LF), len(LF) + 5), LF),  # Dovecot's LDA
    ("new", "1700000004.M4P1.outside,S=%d" % len(LF), LF),
    ("cur", "1700000005.M5P1.outside,S=%d:2,S" % len(UTF8), UTF8),  # 8-bit headers
]


def _sizes_and_bodies(port: int, utf8: bool = False) -> list[tuple[int, bytes]]:
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login("alice", "secret")
    if utf8:
        c._simple_command("ENABLE", "UTF8=ACCEPT")
    c.select("INBOX")
    _, sizes = c.fetch("1:*", "(RFC822.SIZE)")  # the index alone, no file read
    _, bodies = c.fetch("1:*", "(BODY.PEEK[])")
    c.logout()
    told = [int(re.search(rb"RFC822\.SIZE (\d+)", line).group(1)) for line in sizes]
    return list(zip(told, [part[1] for part in bodies if isinstance(part, tuple)]))


def _drop(hub) -> None:
    maildir = hub.maildir("alice@localhost")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for sub, name, data in DROPS:
        with open(os.path.join(maildir, sub, name), "wb") as f:
            f.write(data)


def test_rfc822_size_of_files_dropped_in_by_another_program_is_the_size_sent(start_hub):
    hub = start_hub()
    _drop(hub)
    for _ in range(2):  # as first found, and after a restart (the UID list and index)
        told = _sizes_and_bodies(hub.ports["imap"])
        assert len(told) == len(DROPS)
        for size, body in told:
            assert size == len(body)
            assert body.count(b"\n") == body.count(b"\r\n")  # CRLF only (RFC 3501 §4.3)
        # the 8-bit one, downgraded for this session (RFC 6857), is bigger than stored
        assert told[-1][0] > len(UTF8) and b"=?utf-8?" in told[-1][1].lower()
        hub.restart()


def test_a_utf8_session_is_told_the_stored_size_of_an_8bit_file_dropped_in(start_hub):
    hub = start_hub()
    _drop(hub)
    size, body = _sizes_and_bodies(hub.ports["imap"], utf8=True)[-1]
    assert body == UTF8 and size == len(UTF8)


def test_pop3_list_of_files_dropped_in_is_the_size_retr_sends(start_hub):
    hub = start_hub()
    _drop(hub)
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("alice")
    p.pass_("secret")
    _, listing, _ = p.list()
    # (the files stored with LF; the 8-bit one is downgraded by POP3 for a
    # session without UTF8, RFC 6856, which its LIST does not count yet)
    for line in listing[:4]:
        number, size = line.split()
        _, lines, _ = p.retr(int(number))
        # poplib strips the line ends: each line was sent with CRLF
        assert int(size) == sum(len(text) + 2 for text in lines)
    p.quit()
