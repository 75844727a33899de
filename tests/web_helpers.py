"""
A small HTTP client for the web face's end-to-end tests: keeps cookies as a
browser would (per scheme), finds the CSRF token in a page, logs in.
"""

from __future__ import annotations

import html
import http.client
import http.server
import re
import threading
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


class LiveSocket:
    """
    A WebSocket client of C{/console/live} (wsproto over a plain socket),
    with the browser's cookie; C{receive()} returns the next list of updates.
    """

    def __init__(self, client: WebClient, query: str = "", origin: str | None = None):
        import json
        import socket

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        self._json = json
        self.sock = socket.create_connection(("127.0.0.1", client.hub.ports["web"]), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        host = f"127.0.0.1:{client.hub.ports['web']}"
        headers = [(b"cookie", "; ".join(f"{k}={v}" for k, v in client.cookies.items()).encode())]
        headers.append((b"origin", (origin or f"http://{host}").encode()))
        self.sock.sendall(self.ws.send(Request(host=host, target="/console/live" + query, extra_headers=headers)))
        self.accepted = None
        self._messages: list = []
        self._text = ""
        while self.accepted is None:
            data = self.sock.recv(65536)
            if not data:
                self.accepted = False
                break
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.accepted = True
                elif isinstance(event, RejectConnection):
                    self.accepted = False
                else:
                    self._handle(event)

    closed_with = None  # the close code the server sent, once it has

    def _handle(self, event) -> None:
        from wsproto.events import CloseConnection, Ping, TextMessage

        if isinstance(event, CloseConnection):
            self.closed_with = event.code
        elif isinstance(event, TextMessage):
            self._text += event.data
            if event.message_finished:
                self._messages.append(self._json.loads(self._text))
                self._text = ""
        elif isinstance(event, Ping):
            self.sock.sendall(self.ws.send(event.response()))

    def receive(self, timeout: float = 10) -> list:
        import time

        deadline = time.monotonic() + timeout
        while not self._messages:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no update from the console")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("console socket closed")
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._handle(event)
        return self._messages.pop(0)

    def wait_for(self, predicate, timeout: float = 10) -> dict:
        """The first update for which C{predicate(update)} is true."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            # Updates come in batches; what follows a match in its batch is
            # kept for the next wait, not dropped.
            pending = getattr(self, "_pending", None) or self.receive(max(0.01, deadline - time.monotonic()))
            while pending:
                update = pending.pop(0)
                if predicate(update):
                    self._pending = pending
                    return update
            self._pending = []

    def close(self) -> None:
        self.sock.close()


class WatchedSession:
    """
    The live console watching the one session of C{protocol} (C{"smtp"},
    C{"ftp"}, ...) open on C{hub}, in the browser of C{user} (a teacher):
    C{first} is the first update (the session's facts), C{live} gathers
    (seq, kind, text) of each event streamed after it, C{quoted} is the
    session's id as it stands in the console's URLs.
    """

    def __init__(self, hub, protocol: str, user: str = "alice", password: str = "secret"):
        self.browser = WebClient(hub)
        self.browser.login(user, password)
        [session_id] = re.findall(rf'data-id="({protocol}#\d+)"', self.browser.get("/console").text)
        self.quoted = urllib.parse.quote(session_id, safe="")
        self.watching = LiveSocket(self.browser, "?session=" + self.quoted)
        assert self.watching.accepted
        self.live: list = []  # what the console streams: the session so far, then each new event
        self.first = self.watching.wait_for(self._streamed)  # the session's facts follow what happened before it watched

    def _streamed(self, update) -> bool:
        if update["type"] == "event":
            self.live.append((update["seq"], update["kind"], update["text"]))
        return update["type"] == "session" or update.get("kind") == "end"

    def until_closed(self) -> None:
        """Read what is streamed until the session's end, then stop watching."""
        while not self.live or self.live[-1][1] != "end":
            self.watching.wait_for(self._streamed)
        self.watching.close()

    def assert_exported_as_streamed(self, expected: list, labels: dict) -> tuple[str, str]:
        """
        The session's exported transcript shows C{expected} ((label, text)
        pairs) after its connection line, its page numbers every line, and
        the events streamed live were the same lines (each kind shown by
        its label in C{labels}); returns (the transcript's text, the page).
        """
        text = self.browser.get("/console/session/" + self.quoted + "/transcript.txt").text
        shown = re.findall(r"^\+ *[\d.]+s (\S+) +(.*)$", text, re.M)
        assert shown[1:] == expected
        assert re.fullmatch(r"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+", shown[0][1])
        page = self.browser.get("/console/session/" + self.quoted).text
        seqs = [int(n) for n in re.findall(r'data-seq="(\d+)"', page)]
        assert seqs == list(range(1, len(expected) + 2))
        assert [(seq, labels[kind], line) for seq, kind, line in self.live] == [(n + 1, label, line) for n, (label, line) in enumerate(shown)]
        return text, page


def smtp_transcript(hub) -> str:
    """
    The exported transcript (C{transcript.txt}) of the one SMTP session
    the live console lists, as alice (password "secret") is given it.
    """
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text)
    return browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text


def serve_page(page: bytes) -> http.server.HTTPServer:
    """
    Serve C{page} (UTF-8 HTML) as the answer to every GET on 127.0.0.1, on
    a free port, from a daemon thread: the server (its port is
    C{server.server_address[1]}; call C{shutdown()} and C{server_close()}
    when done). A page of "another site" for browser tests.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
