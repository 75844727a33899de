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
        assert command(b"MKD x\xffa").startswith(b'257 "/x\xff\xffa"')  # (doubled in the reply: below)
        assert command(b"CWD x\xffa").startswith(b"250 ")
        assert command(b"CWD /\xffbc").startswith(b"550 CWD /<FF>bc: ")  # (not "/bc")
        # A doubled IAC is one octet 255, and Telnet commands still go.
        assert command(b"MKD /y\xff\xff").startswith(b'257 "/y\xff\xff"')
        assert command(b"NOOP\xff\xf4\xff\xf2").startswith(b"200 ")
    finally:
        control.close()
    assert sorted(os.listdir(os.fsencode(home(hub)))) == [b"x\xffa", b"y\xff"]


def test_octet_255_in_a_name_is_doubled_in_replies(hub):
    # RFC 959 §4 (the control connection is Telnet) and RFC 2640 §3.1: a
    # pathname in a reply has IAC doubled, or the client's Telnet layer
    # takes the 255 and the octet after it for a command. Before, the 257
    # of MKD and STAT's listing of a folder sent it single.
    control = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=20)
    lines = control.makefile("rb")

    def reply() -> list[bytes]:
        got = [lines.readline()]
        while got[-1][3:4] == b"-" or not got[-1][:3].isdigit():
            got.append(lines.readline())
        return got

    def command(text: bytes) -> list[bytes]:
        control.sendall(text + b"\r\n")
        return reply()

    try:
        reply()
        command(b"USER alice")
        assert command(b"PASS secret")[0].startswith(b"230")
        assert command(b"MKD /d\xff\xffe") == [b'257 "/d\xff\xffe" created.\r\n']
        assert command(b"CWD /d\xff\xffe")[0].startswith(b"250 ")
        assert command(b"PWD")[0].startswith(b'257 "/d\xff\xffe"')
        control.sendall(b"STOR caf\xff\xff.txt\r\n")  # (no data connection: refused, nothing made)
        reply()
        assert command(b"MKD sub\xff\xff")[0].startswith(b'257 "/d\xff\xffe/sub\xff\xff"')
        listing = command(b"STAT /d\xff\xffe")
        names = [line for line in listing if b"sub" in line]
        assert len(names) == 1 and names[0].rstrip().endswith(b" sub\xff\xff"), listing
        # No single 255 anywhere: every one is half of a pair.
        for line in listing:
            assert line.replace(b"\xff\xff", b"").count(b"\xff") == 0, line
    finally:
        control.close()
    assert os.path.isdir(os.path.join(os.fsencode(home(hub)), b"d\xffe", b"sub\xff"))
