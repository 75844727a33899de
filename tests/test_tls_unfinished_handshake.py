"""
A client that connects to an implicit-TLS listener (POP3S, IMAPS, SMTPS)
and never finishes the TLS handshake (sends nothing, or half a
ClientHello), or asks for STLS and then sends nothing, must be dropped
once its time limit has passed and the hub's grace for the handshake
(twisted_mailhub.tls.UNFINISHED_HANDSHAKE_GRACE) is over. Before, the
time limit's close waited for the handshake for ever (the greeting was
written before it), so each such connection held a slot of
--max-connections-per-ip and --max-connections for good.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from twisted_mailhub.tls import UNFINISHED_HANDSHAKE_GRACE

HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def seconds_until_closed(port: int, first: bytes = b"", after_greeting: bytes = b"", limit: float = 60) -> float | None:
    """Seconds from connecting until the hub closes the connection (None: still open after C{limit})."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        if after_greeting:
            sock.recv(4096)
            sock.sendall(after_greeting)
            sock.recv(4096)
        if first:
            sock.sendall(first)
        try:
            while sock.recv(4096):
                pass
        except socket.timeout:
            return None
        except OSError:
            pass
    return time.monotonic() - started


def test_a_client_that_never_finishes_the_tls_handshake_is_dropped(start_hub):
    hub = start_hub("--pop3-login-timeout", "1", "--imap-login-timeout", "1", "--smtp-login-timeout", "1")
    cases = {
        "pop3s, nothing sent": (hub.ports["pop3s"], b"", b""),
        "imaps, half a ClientHello": (hub.ports["imaps"], HALF_CLIENT_HELLO, b""),
        "smtps, nothing sent": (hub.ports["smtps"], b"", b""),
        "pop3 STLS, then nothing": (hub.ports["pop3"], b"", b"STLS\r\n"),
    }
    took: dict = {}
    threads = [threading.Thread(target=lambda name=name, args=args: took.__setitem__(name, seconds_until_closed(*args))) for name, args in cases.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    for name in cases:
        assert took[name] is not None and took[name] < 1 + UNFINISHED_HANDSHAKE_GRACE + 10, (name, took)
    # A client that does finish its handshake still reads the greeting.
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", hub.ports["pop3s"]), timeout=10) as raw, context.wrap_socket(raw) as tls:
        assert tls.recv(4096).startswith(b"+OK ")
