"""
COMPRESS=DEFLATE (RFC 4978) end to end: the real hub, imaplib with the
socket wrapped by hand, a raw socket (STARTTLS before, IDLE, literals,
pipelining, a corrupt stream), and offlineimap's own COMPRESS
(C{usecompression}) in tests/test_e2e_imap_sync.py.
"""

from __future__ import annotations

import imaplib
import socket
import zlib

from tests.hubprocess import client_context
from tests.test_e2e_imap import MESSAGE, Raw, login
from tests.test_e2e_imap_rfc import raw_append, raw_login


class DeflateSocket:
    """
    A socket whose octets are raw DEFLATE both ways (wbits -15), each send
    ended with a sync flush, as RFC 4978 clients do.
    """

    def __init__(self, sock, pending: bytes = b""):
        self.sock = sock
        self.deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.compressed_in = 0
        self.pending = pending

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.compress(data))

    def compress(self, data: bytes) -> bytes:
        return self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def recv(self, n: int) -> bytes:
        while True:
            data, self.pending = (self.pending, b"") if self.pending else (self.sock.recv(65536), b"")
            if not data:
                return b""
            self.compressed_in += len(data)
            plain = self.inflate.decompress(data)
            if plain:
                return plain

    def close(self) -> None:
        self.sock.close()


def compress(r: Raw, tag: bytes = b"z") -> list[bytes]:
    """COMPRESS DEFLATE on a raw client; its socket is compressed from the tagged OK on."""
    r.send(tag + b" COMPRESS DEFLATE\r\n")
    lines = r.until_tag(tag)
    assert lines[-1].startswith(tag + b" OK"), lines
    r.sock = DeflateSocket(r.sock, r.buf)
    r.buf = b""
    return lines


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with COMPRESS DEFLATE: imaplib's own reading and sending, through zlib."""

    inflate = deflate = None
    _plain = b""

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self.deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self._plain = b""  # nothing follows the OK until the next command
        return typ, data

    def send(self, data):
        if self.deflate is None:
            return super().send(data)
        self.sock.sendall(self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("socket closed")
        self._plain += self.inflate.decompress(chunk)

    def read(self, size):
        if self.inflate is None:
            return super().read(size)
        while len(self._plain) < size:
            self._fill()
        data, self._plain = self._plain[:size], self._plain[size:]
        return data

    def readline(self):
        if self.inflate is None:
            return super().readline()
        while b"\n" not in self._plain:
            self._fill()
        line, _, self._plain = self._plain.partition(b"\n")
        return line + b"\n"


imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


def test_imaplib_works_over_compress_deflate(hub):
    c = DeflateIMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    assert b"COMPRESS=DEFLATE" in c.capability()[1][0].split()
    typ, data = c.compress()
    assert data == [b"DEFLATE active"]
    # a synchronizing literal: the continuation request comes compressed
    big = MESSAGE + b"line of the body\r\n" * 20000
    assert c.append("INBOX", None, None, big)[0] == "OK"
    assert c.select("INBOX") == ("OK", [b"1"])
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == big
    typ, data = c._simple_command("COMPRESS", "DEFLATE")
    assert typ == "NO" and data[-1].startswith(b"[COMPRESSIONACTIVE]"), data
    assert c.noop()[0] == "OK"  # the session goes on
    c.logout()


def test_compress_output_is_smaller_and_a_sync_flush_ends_each_reply(hub):
    r = raw_login(hub)
    for _ in range(3):
        raw_append(r, b"INBOX", MESSAGE + b"the same words again and again\r\n" * 2000)
    compress(r)
    lines = r.cmd(b"s", b"SELECT INBOX")
    assert lines[-1].startswith(b"s OK")
    # every reply ends in a sync flush (00 00 ff ff): the client can read it whole
    before = r.sock.compressed_in
    lines = r.cmd(b"f", b"FETCH 1:3 BODY.PEEK[]")
    assert lines[-1] == b"f OK FETCH completed", lines[-1]
    assert r.sock.compressed_in - before < 3 * 2000 * 32 / 10
    r.close()


def test_compress_after_starttls_carries_idle_updates(hub):
    r = Raw(hub.ports["imap"])
    assert r.cmd(b"t", b"STARTTLS")[-1].startswith(b"t OK")
    r.sock = client_context().wrap_socket(r.sock, server_hostname="localhost")
    assert r.cmd(b"l", b"LOGIN alice secret")[-1].startswith(b"l OK")
    compress(r)
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")
    other = login(hub)
    assert other.append("INBOX", None, None, MESSAGE)[0] == "OK"
    other.logout()
    assert r.line() == b"* 1 EXISTS"
    r.send(b"DONE\r\n")
    lines = r.until_tag(b"i")
    assert lines[-1] == b"i OK IDLE terminated", lines
    r.send(b"o LOGOUT\r\n")
    assert r.until_tag(b"o")[-1].startswith(b"o OK")
    r.close()


def test_commands_pipelined_behind_compress_are_read_compressed(hub):
    r = raw_login(hub)
    deflating = DeflateSocket(r.sock)
    # COMPRESS and, in the same packet, two compressed commands, one with a literal+
    r.send(b"z COMPRESS DEFLATE\r\n" + deflating.compress(b"n NOOP\r\na APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"))
    assert r.until_tag(b"z")[-1] == b"z OK DEFLATE active"
    deflating.pending, r.buf = r.buf, b""
    r.sock = deflating
    assert r.until_tag(b"n")[-1] == b"n OK NOOP completed"
    assert r.until_tag(b"a")[-1].startswith(b"a OK [APPENDUID")
    r.close()


def test_compress_is_refused_before_login_and_for_other_mechanisms(hub):
    r = Raw(hub.ports["imap"])
    assert b"COMPRESS=DEFLATE" not in r.greeting
    assert r.cmd(b"a", b"COMPRESS DEFLATE")[-1].startswith(b"a BAD COMPRESS not allowed now: log in first")
    assert r.cmd(b"l", b"LOGIN alice secret")[-1].startswith(b"l OK")
    assert r.cmd(b"b", b"COMPRESS GZIP")[-1] == b"b BAD COMPRESS knows only DEFLATE (RFC 4978)"
    assert r.cmd(b"c", b"NOOP")[-1].startswith(b"c OK")  # still in the clear
    r.close()


def test_a_corrupt_compressed_stream_ends_the_connection_with_bye(hub):
    r = raw_login(hub)
    compress(r)
    r.sock.sock.sendall(b"\xff\xff\xff\xff not deflate at all\r\n")
    lines = []
    try:
        while True:
            lines.append(r.line())
    except (EOFError, ConnectionError, socket.timeout, zlib.error):
        pass
    assert lines == [b"* BYE compressed stream is corrupt"], lines
    # the hub goes on
    c = login(hub)
    assert c.noop()[0] == "OK"
    c.logout()
