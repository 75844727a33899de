"""
Octet 255 in an FTP path from a client that does not double it (RFC 959's
control connection is Telnet, where 255 is IAC): a name in Latin-1 ending
in or holding "y" with diaeresis. Only IAC before a Telnet command (240-
255: IP, DM, WILL...) is a Telnet command; before any other octet it is
data and that octet stays. Before, "MKD x\\xffa" made "/x" (the IAC and
the letter after it taken for a command) and "CWD \\xffabc" asked for "/bc".
"""

from __future__ import annotations

import os
import socket

from tests.test_e2e_sftp import home


def test_an_undoubled_255_and_the_letter_after_it_stay_in_the_name(hub):
    control = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=20)
    lines = control.makefile("rb")

    def command(text: bytes) -> bytes:
        control.sendall(text + b"\r\n")
        return lines.readline()

    try:
        lines.readline()
        command(b"USER alice")
        assert command(b"PASS secret").startswith(b"230")
        assert command(b"MKD x\xffa").startswith(b'257 "/x\xffa"')
        assert command(b"CWD x\xffa").startswith(b"250 ")
        assert command(b"CWD /\xffbc").startswith(b"550 CWD /<FF>bc: ")  # (not "/bc")
        # A doubled IAC is one octet 255, and Telnet commands still go.
        assert command(b"MKD /y\xff\xff").startswith(b'257 "/y\xff"')
        assert command(b"NOOP\xff\xf4\xff\xf2").startswith(b"200 ")
    finally:
        control.close()
    assert sorted(os.listdir(os.fsencode(home(hub)))) == [b"x\xffa", b"y\xff"]
