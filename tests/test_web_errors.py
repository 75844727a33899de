"""
The web listener answers errors in its own words (new-user finding): no
Twisted default page for 404, 405, 501 or 500; JSON errors under /api/.
"""

from __future__ import annotations

import json
import socket

TWISTED_TEXTS = (b"No Such Resource", b"No luck finding", b"Your browser approached me", b"Huh?", b"Processing Failed", b"web.Server")


def http(hub, request: bytes) -> tuple[int, dict, bytes]:
    s = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    s.sendall(request)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode("ascii")


def test_web_errors_are_the_hubs_own_pages_and_json_under_api(hub):
    status, headers, body = http(hub, request("GET", "/no/such/page"))
    assert status == 404
    assert headers[b"content-type"].startswith(b"text/html")
    assert b"404 Not found" in body and b'href="/static/mailhub.css"' in body

    status, headers, body = http(hub, request("DELETE", "/"))
    assert status == 405
    assert b"GET" in headers[b"allow"]
    assert b"405 Method not allowed" in body and b"not DELETE" in body

    status, headers, body = http(hub, request("BREW", "/"))
    assert status == 501
    assert b"501 Not implemented" in body

    status, headers, body = http(hub, request("GET", "/api/nothing-here"))
    assert status == 404
    assert headers[b"content-type"].startswith(b"application/json")
    assert json.loads(body)["error"]["status"] == 404
    assert json.loads(body)["error"]["code"] == "not_found"

    status, headers, body = http(hub, request("BREW", "/api/v1/messages"))
    assert status in (404, 405, 501)
    assert json.loads(body)["error"]["status"] == status

    for method, path in (("GET", "/no"), ("DELETE", "/"), ("BREW", "/"), ("GET", "/api/x"), ("PUT", "/login"), ("GET", "/static/nope.css")):
        _, _, body = http(hub, request(method, path))
        for text in TWISTED_TEXTS:
            assert text not in body, (method, path, text)
    assert "Traceback" not in hub.log
