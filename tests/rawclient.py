"""
The CRLF line reader the raw-socket tests share (IMAP, POP3, the fuzzers):
for what a library client will not send.
"""

from __future__ import annotations


class LineReader:
    """
    Reads CRLF-terminated lines from C{self.sock} (a connected socket),
    keeping what follows the line in C{self.buf}.
    """

    sock = None
    buf = b""

    def line(self) -> bytes:
        """The next line without its CRLF; EOFError(bytes so far) when the server closes."""
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line
