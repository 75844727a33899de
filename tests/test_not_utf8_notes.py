"""
A line with an octet that is not UTF-8 (0xE9, e-acute typed through a
Latin-1 terminal) is noted as that, not as "a control character" (0xE9 is
none). (Not 0xFF: that is the Telnet IAC, taken out of a command line with
the command it starts, lines.telnet_text.)
"""

from __future__ import annotations

import socket


def test_a_non_utf8_octet_is_named_as_such_in_the_reply(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"USER \xe9\xfe\r\n")
        reply = sock.recv(1024)
    assert reply == b"+OK now send PASS for <E9><FE> (the line contained an octet that is not UTF-8: <E9>)\r\n"
