"""
BINARY (RFC 3516) end to end: FETCH BINARY[], BINARY.PEEK and BINARY.SIZE
decode base64 and quoted-printable parts; an unknown encoding is
NO [UNKNOWN-CTE]; the real hub, a raw socket and imaplib.
"""

from __future__ import annotations

import base64
import re

from tests.test_e2e_imap import login
from tests.test_e2e_imap_rfc import raw_append, raw_login

PAYLOAD = b"\x00\x01\x02binary\xff\r\n\x00end"
MESSAGE = (
    b"From: bob@localhost\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 =3D soft=\r\nbreak\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n`\r\nend\r\n"
    b"--b1\r\nContent-Type: text/plain\r\n\r\nplain seven bit\r\n"
    b"--b1--\r\n"
)


def read_literal(r, head: bytes) -> bytes:
    """The octets of the literal announced at the end of C{head} ({n} or ~{n})."""
    n = int(re.search(rb"~?\{(\d+)\}$", head).group(1))
    while len(r.buf) < n:
        r.buf += r.sock.recv(65536)
    data, r.buf = r.buf[:n], r.buf[n:]
    return data


def test_capability_advertises_binary(hub):
    r = raw_login(hub)
    assert b"BINARY" in r.cmd(b"c", b"CAPABILITY")[0].split()
    r.close()


def test_binary_peek_decodes_quoted_printable_and_base64(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", MESSAGE)
    r.cmd(b"s", b"SELECT INBOX")
    r.send(b"f FETCH 1 (BINARY.PEEK[1])\r\n")
    head = r.line()
    assert head.startswith(b"* 1 FETCH (BINARY[1] {"), head
    assert read_literal(r, head) == "café = softbreak".encode()
    r.until_tag(b"f")
    r.send(b"g FETCH 1 (BINARY.PEEK[2])\r\n")
    head = r.line()
    assert head.endswith(b"BINARY[2] ~{%d}" % len(PAYLOAD)), "NUL octets go out as a literal8"
    assert read_literal(r, head) == PAYLOAD
    assert r.until_tag(b"g")[-1] == b"g OK FETCH completed"
    lines = r.cmd(b"h", b"FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[4] FLAGS)")
    assert lines[0] == b"* 1 FETCH (BINARY.SIZE[1] %d BINARY.SIZE[2] %d BINARY.SIZE[4] 15 FLAGS (\\Recent))" % (len("café = softbreak".encode()), len(PAYLOAD)), lines
    r.close()


def test_binary_partial_counts_decoded_octets_and_binary_sets_seen(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", MESSAGE)
    r.cmd(b"s", b"SELECT INBOX")
    r.send(b"p FETCH 1 (BINARY[2]<3.6>)\r\n")
    head = r.line()
    assert b"BINARY[2]<3> {6}" in head, head
    assert read_literal(r, head) == PAYLOAD[3:9]
    rest = r.until_tag(b"p")
    assert b"\\Seen" in rest[0] and rest[-1] == b"p OK FETCH completed", rest
    r.close()


def test_unknown_transfer_encoding_is_no_unknown_cte(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", MESSAGE)
    r.cmd(b"s", b"EXAMINE INBOX")
    lines = r.cmd(b"u", b"FETCH 1 (BINARY.PEEK[3])")
    assert lines == [lines[-1]] and lines[-1].startswith(b"u NO [UNKNOWN-CTE]"), lines
    assert r.cmd(b"b", b"FETCH 1 (BINARY.PEEK[HEADER])")[-1].startswith(b"b BAD BINARY.PEEK takes part numbers only")
    assert r.cmd(b"z", b"FETCH 1 (BINARY.SIZE[1]<0.5>)")[-1].startswith(b"z BAD")
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()


def test_imaplib_fetches_binary_parts(hub):
    c = login(hub)
    c.append("INBOX", None, None, MESSAGE)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BINARY.PEEK[2] BINARY.PEEK[4])")
    assert typ == "OK", data
    assert data[0][1] == PAYLOAD
    assert data[1][1] == b"plain seven bit"
    c.logout()
