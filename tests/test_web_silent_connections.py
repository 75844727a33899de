"""
A client that connects to the web listeners and sends no request (or, on
--webs, never finishes its TLS handshake) is cut at --web-header-timeout,
counted from the connection's start; before, it was kept for the idle
limit (--web-idle-timeout, 120 s), a slowloris the header limit was meant
to stop.
"""

from __future__ import annotations

import socket
import threading
import time

from twisted_mailhub.tls import UNFINISHED_HANDSHAKE_GRACE


def seconds_until_closed(port: int, first: bytes = b"", limit: float = 60) -> tuple[float | None, bytes]:
    started = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        if first:
            sock.sendall(first)
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            return None, got
        except OSError:
            pass
    return time.monotonic() - started, got


def test_a_silent_web_connection_is_cut_at_the_header_limit(start_hub):
    hub = start_hub("--web-header-timeout", "2", "--web-idle-timeout", "100")
    took: dict = {}
    runs = [
        threading.Thread(target=lambda: took.__setitem__("web", seconds_until_closed(hub.ports["web"]))),
        threading.Thread(target=lambda: took.__setitem__("webs", seconds_until_closed(hub.ports["webs"], b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(90)
    seconds, answer = took["web"]
    assert seconds is not None and seconds < 2 + 5, took
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]
    seconds, _ = took["webs"]
    assert seconds is not None and seconds < 2 + UNFINISHED_HANDSHAKE_GRACE + 10, took
    # A request that comes in time is answered as before.
    with socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=10) as sock:
        time.sleep(1)
        sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
