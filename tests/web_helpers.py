"""
A small HTTP client for the web face's end-to-end tests: keeps cookies as a
browser would (per scheme), finds the CSRF token in a page, logs in.
"""

from __future__ import annotations

import html
import http.client
import re
import urllib.parse
from http.cookies import SimpleCookie

from tests.hubprocess import client_context

_CSRF = re.compile(r'name="csrf" value="([^"]*)"|data-csrf="([^"]*)"')


class Response:
    def __init__(self, raw: http.client.HTTPResponse):
        self.status = raw.status
        self.headers = raw.headers
        self.body = raw.read()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


class WebClient:
    """
    One browser: C{get}/C{post} to the hub's C{web} (or C{webs}) listener.
    """

    def __init__(self, hub, secure: bool = False):
        self.hub = hub
        self.secure = secure
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def _connection(self):
        if self.secure:
            return http.client.HTTPSConnection("127.0.0.1", self.hub.ports["webs"], context=client_context(), timeout=15)
        return http.client.HTTPConnection("127.0.0.1", self.hub.ports["web"], timeout=15)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        conn = self._connection()
        try:
            all_headers = dict(headers or {})
            if self.cookies:
                all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=all_headers)
            response = Response(conn.getresponse())
        finally:
            conn.close()
        for line in response.set_cookies():
            cookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        m = _CSRF.search(response.text) if "html" in response.header("Content-Type") else None
        if m:
            self.csrf = html.unescape(m.group(1) or m.group(2))
        return response

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, fields: dict | None = None, csrf: bool = True, **kw) -> Response:
        data = dict(fields or {})
        if csrf and "csrf" not in data:
            data["csrf"] = self.csrf
        body = urllib.parse.urlencode(data).encode("utf-8")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.request("POST", path, body=body, headers=headers)

    def login(self, username: str, password: str) -> Response:
        self.get("/login")
        response = self.post("/login", {"username": username, "password": password})
        if response.status == 303:
            self.get(response.header("Location"))  # as a browser would: the new session's token
        return response
