# -*- test-case-name: tests.test_web_failures -*-
"""
Every web route answers a failure of the store with the one error path's
page (twisted_mailhub.web.errors), whatever call fails and wherever in the
route: the store's database down is 503 with Retry-After, a full disk or a
full quota 507, a message or folder gone meanwhile 404, a fault of the hub
500; never a traceback, an exception's name or a Python repr, on the page
or (but for the 500) in the log.

The routes are served in process by the web face's own site, over a
StringTransport, on a memory store wrapped so that its Nth call fails: each
route is run with N = 1, 2, ... until it no longer reaches the failing
call, for each kind of failure. The parsing threads (web.offload) run
inline here; the end-to-end tests (test_web_failures_e2e.py) use the real
hub with a real full disk, a message deleted by IMAP, and bad addresses.
"""

from __future__ import annotations

import errno
import json
import re
from urllib.parse import quote

from twisted.internet import address, defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub.store.interfaces import InsufficientStorage, NoSuchFolder, NoSuchMessage, StoreUnavailable

MESSAGE = (
    b"From: Carol <carol@example.org>\r\nTo: alice@localhost\r\nSubject: hello\r\n"
    b"Message-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nHi Alice\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nxyz\r\n--b--\r\n"
)

# What a page must never show: a traceback, an exception's class, a repr.
NEVER_SHOWN = re.compile(r"Traceback|File \"|Error\b|Exception|Failure|(?<![\w-])b['\"]|<twisted|<built-in|object at 0x|\bNone\b|Processing Failed|web\.Server")


class Injected(RuntimeError):
    """A fault of the hub's own code (a bug) for the 500 case."""


# kind of failure -> (exception made for call N, the status the client must see)
FAILURES = {
    "store unreachable": (lambda: StoreUnavailable("connection refused: is the database running?"), 503),
    "full disk": (lambda: OSError(errno.ENOSPC, "No space left on device"), 507),
    "full disk (store)": (lambda: InsufficientStorage("Insufficient system storage"), 507),
    "message gone": (lambda: NoSuchMessage(1), 404),
    "folder gone": (lambda: NoSuchFolder("INBOX"), 404),
    "fault of the hub": (lambda: Injected("object at 0x7f00 None b'x'"), 500),
}

# The calls of imap.prepare_account (the special-use folders a session's
# first page makes): on a full disk the page goes on without them.
PREPARING = {"folders", "create_folder", "subscriptions", "subscribe"}

# Store methods that answer with a Deferred: they fail it, as the real ones do.
DEFERRED = {"append", "append_many", "copy_to", "copy_for_move", "flush"}


class Faults:
    """Counts the store's calls and fails call number C{at} with C{make()}."""

    def __init__(self, at: int = 0, make=None):
        self.at = at
        self.make = make
        self.calls = 0
        self.failed = ""  # the name of the call made to fail

    def call(self, name: str, real):
        def called(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                self.failed = name
                if name in DEFERRED:
                    return defer.fail(self.make())
                raise self.make()
            result = real(*args, **kwargs)
            return wrap(result, self) if name in ("account", "folder", "create_folder") else result

        return called


class _Faulty:
    def __init__(self, real, faults: Faults):
        self._real = real
        self._faults = faults

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if callable(value) and not name.startswith("_"):
            return self._faults.call(name, value)
        return value


def wrap(thing, faults: Faults):
    return _Faulty(thing, faults)


def make_face(faults: Faults):
    """The web face of an in-process hub on a memory store (alice, teacher bob), and the store."""
    from twisted_mailhub.accounts import AccountBook
    from twisted_mailhub.hub import Hub
    from twisted_mailhub.store.memory import MemoryStore
    from twisted_mailhub.web import api, console, mail
    from twisted_mailhub.web.avatar import IWebUser, avatar_factory
    from twisted_mailhub.web.site import WebFace

    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    real = MemoryStore()
    store = wrap(real, faults)
    hub = Hub(task.Clock(), {}, accounts, store, "/nonexistent", "localhost")
    hub.realm.register(IWebUser, avatar_factory(store, frozenset()))
    hub.web = WebFace(hub)
    console.install(hub.web)
    mail.install(hub.web)
    api.install(hub)
    return hub, real


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


class Browser:
    """Requests to the face's site over a StringTransport, as a signed-in alice from 127.0.0.1."""

    def __init__(self, hub):
        from twisted_mailhub.web.avatar import WebUser
        from twisted_mailhub.web.api import Caller

        self.hub = hub
        self.site = hub.web.site("web")
        self.session = hub.web.sessions.new(WebUser("alice@localhost", False, hub.store), lambda: None, "127.0.0.1")
        self.token = "t0ken"
        hub.api.tokens[self.token] = Caller("alice@localhost", False)

    def request(self, method: str, path: str, fields: dict | None = None, api: bool = False) -> tuple[int, dict[str, str], bytes]:
        body = b""
        headers = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1"]
        if api:
            headers.append(f"Authorization: Bearer {self.token}")
        else:
            headers.append(f"Cookie: mailhub_session={self.session.sid}")
        if fields is not None:
            body = "&".join(f"{k}={quote(v)}" for k, v in {"csrf": self.session.csrf, **fields}.items()).encode()
            headers += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        self.hub.reactor.advance(0)  # (a long poll of no time)
        raw = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        assert raw, (method, path, "no answer at all")
        return parse(raw)


# Every webmail route, form post and download: (method, path, form fields).
ROUTES = [
    ("GET", "/", None),
    ("GET", "/mail", None),
    ("GET", "/mail/INBOX", None),
    ("GET", "/mail/INBOX?q=hello", None),
    ("GET", "/mail/INBOX/state", None),
    ("GET", "/mail/INBOX/1", None),
    ("HEAD", "/mail/INBOX/1", None),
    ("GET", "/mail/INBOX/1/anatomy", None),
    ("GET", "/mail/INBOX/1/raw", None),
    ("GET", "/mail/INBOX/1/part/2?download=1", None),
    ("GET", "/compose", None),
    ("GET", "/compose?reply=INBOX/1", None),
    ("GET", "/compose?replyall=INBOX/1", None),
    ("GET", "/compose?forward=INBOX/1", None),
    ("POST", "/mail/INBOX/1/action", {"action": "flag"}),
    ("POST", "/mail/INBOX/1/action", {"action": "unflag"}),
    ("POST", "/mail/INBOX/1/action", {"action": "unread"}),
    ("POST", "/mail/INBOX/1/action", {"action": "delete"}),
    ("POST", "/mail/INBOX/1/action", {"action": "move", "target": "Archive"}),
    ("POST", "/mail/Trash/1/action", {"action": "delete"}),
    ("GET", "/console", None),
]


def api_routes() -> list[tuple[str, str, dict | None]]:
    """Every route of the JSON API (api.ROUTES) with its parameters filled in."""
    from twisted_mailhub.web import api

    values = {"account": "me", "folder": "INBOX", "uid": "1", "part": "1", "id": "1", "path+": "notes.txt"}
    out = []
    for route in api.ROUTES:
        if route.auth == "admin" or route.method not in ("GET", "DELETE", "PUT", "POST") or route.handler.startswith("file") or route.handler.startswith("token"):
            continue  # (admin: the accounts file, not the store; files: the FTP file system, tests/test_api.py)
        path = "/".join(values.get(p.strip("{}"), p) if p.startswith("{") else p for p in route.path.split("/"))
        query = "?timeout=0" if route.handler == "wait" else ""
        body = {"flags_set": {"flags": ["\\Flagged"]}, "flags_change": {"add": ["\\Flagged"]}}.get(route.handler)
        out.append((route.method, f"{api.PREFIX}/{path}{query}", body))
    return out


class EveryRouteTests(SynchronousTestCase):
    def setUp(self):
        from twisted_mailhub.web import offload

        # The parsing threads, inline (the e2e tests run the real ones).
        self.patch(offload, "in_thread", lambda f, *a, **kw: defer.maybeDeferred(f, *a, **kw))

    def fresh(self, faults: Faults):
        hub, real = make_face(faults)
        account = real.account("alice@localhost")
        inbox = account.folder("INBOX")
        inbox.append(MESSAGE, [])
        for name in ("Trash", "Archive"):
            account.create_folder(name)
        account.folder("Trash").append(MESSAGE, [])
        return hub

    def check_page(self, route, kind, status, headers, body, want, failed=""):
        where = (route, kind, status, failed)
        if status < 400:
            # Only a thing gone meanwhile may be passed over (a folder or a
            # message row another client removed); never an outage. A full
            # disk only where a page reads and a write was optional: the
            # special-use folders a session's first page makes (as an IMAP
            # login, they are made later), or another folder's counts,
            # shown as "(?)" (test_web_disk_full_reading).
            if kind in ("full disk", "full disk (store)") and (failed in PREPARING or route[0] == "GET"):
                self.assertTrue(failed in PREPARING or " (?)</a>" in body.decode("utf-8", "replace"), where)
                return
            self.assertIn(kind, ("message gone", "folder gone"), where)
            return
        self.assertEqual(status, want, where)
        shown = body.decode("utf-8", "replace")
        self.assertIsNone(NEVER_SHOWN.search(shown), (where, shown))
        if route[1].startswith("/api/"):
            error = json.loads(body)["error"]
            self.assertEqual(error["status"], want, where)
            self.assertTrue(error["message"], where)
        elif route[0] != "HEAD":
            self.assertIn(f"<h1>{want} ", shown, where)
            self.assertTrue(shown.rstrip().endswith("</html>"), where)
            self.assertIn('href="/static/mailhub.css"', shown, where)
            self.assertIn("alice@localhost", shown, where)  # the user's own navigation, still signed in
        if want == 503:
            self.assertEqual(headers.get("retry-after"), "10", where)

    def run_routes(self, routes, api=False):
        reached = 0
        for route in routes:
            method, path, fields = route
            for kind, (make, want) in FAILURES.items():
                at = 1
                while True:
                    faults = Faults(at, make)
                    hub = self.fresh(faults)
                    faults.calls = 0
                    if api and fields is not None:
                        status, headers, body = self.request_json(hub, method, path, fields)
                    else:
                        status, headers, body = Browser(hub).request(method, path, fields, api=api)
                    if faults.calls < at:
                        break  # the route made fewer calls: every one has failed once
                    self.check_page(route, kind, status, headers, body, want, faults.failed)
                    reached += 1
                    at += 1
                if kind == "fault of the hub":
                    self.flushLoggedErrors(Injected)
        return reached

    def request_json(self, hub, method, path, payload):
        browser = Browser(hub)
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000))
        channel = browser.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        body = json.dumps(payload).encode()
        head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {browser.token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        channel.dataReceived(head.encode() + body)
        raw = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        return parse(raw)

    def test_every_webmail_page_form_and_download_answers_each_store_failure_with_its_status_and_a_clean_page(self):
        self.assertGreater(self.run_routes(ROUTES), 200)

    def test_every_api_route_answers_each_store_failure_with_its_status_and_a_json_error(self):
        self.assertGreater(self.run_routes(api_routes(), api=True), 50)

    def test_every_route_works_when_nothing_fails(self):
        # (the harness itself: each route reaches its end without a fault)
        for method, path, fields in ROUTES:
            hub = self.fresh(Faults())
            status, _, body = Browser(hub).request(method, path, fields)
            self.assertLess(status, 400, (method, path, fields, body[:2000]))
        for method, path, fields in api_routes():
            hub = self.fresh(Faults())
            if fields is not None:
                status, _, body = self.request_json(hub, method, path, fields)
            else:
                status, _, body = Browser(hub).request(method, path, None, api=True)
            self.assertLess(status, 400, (method, path, body[:2000]))
