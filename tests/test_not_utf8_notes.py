"""
A line with an octet that is not UTF-8 (0xFF, typed through a Latin-1
terminal) is noted as that, not as "a control character" (0xFF is none).
"""

from __future__ import annotations

import socket


def test_a_non_utf8_octet_is_named_as_such_in_the_reply(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"USER \xff\xfe\r\n")
        reply = sock.recv(1024)
    assert reply == b"+OK now send PASS for <FF><FE> (the line contained an octet that is not UTF-8: <FF>)\r\n"
