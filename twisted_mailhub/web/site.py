# -*- test-case-name: tests.test_web_login -*-
"""
The HTTP side of the web face: the site, its security headers, login and
logout, static files, and where other parts mount their resources.

Theory of operation:

 - One L{WebFace} per hub (C{hub.web}) holds the browser sessions and the
   root resource; each web listener (C{--web}, C{--webs}) gets its own
   L{server.Site} on that root.
 - Every response carries the security headers of L{SECURITY_HEADERS}: a
   Content-Security-Policy with no inline script and C{frame-ancestors
   'none'}, C{nosniff}, no referrer.
 - Login goes through the hub's portal and login throttle like every other
   protocol (C{IWebUser} avatar). A password is accepted over plain HTTP only
   from C{--trusted-networks}; anyone else is redirected to the C{--webs}
   listener before a form is even shown.
 - Other parts add pages with C{hub.web_resources[PATH] = resource}, e.g.
   C{"api/v1"}: a request whose path starts with PATH goes to the resource
   (with C{request.postpath} the rest). They find the signed-in user with
   L{WebFace.user} and check a state-changing request with
   L{WebFace.csrf_ok}. The dict may be filled before or after this
   component installs: it is read at request time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger
from twisted.web import resource, server, static
from twisted.web.template import tags

from twisted_mailhub.hub import is_secure
from twisted_mailhub.login import ClientPortal
from twisted_mailhub.web.avatar import IWebUser
from twisted_mailhub.web.pages import STATIC, post_form, render_page
from twisted_mailhub.web.sessions import COOKIE_HTTP, COOKIE_HTTPS, SessionStore

log = Logger()

# 'self' covers the same origin's ws:/wss: in CSP Level 3 (Chromium, Firefox).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-opener-policy": b"same-origin",
    b"cache-control": b"no-store",
}

_HOSTNAME = re.compile(r"^[A-Za-z0-9.\-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")


class WebRequest(server.Request):
    """
    A request that carries the security headers, whatever renders it.
    """

    def process(self):
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        server.Request.process(self)

    _body_octets = 0

    def handleContentChunk(self, data):
        # A chunked body has no Content-Length to refuse at once: count it.
        channel = self.channel
        if getattr(channel, "refused", False):
            return  # answered 413/408; the rest of this read is dropped
        self._body_octets += len(data)
        limit = getattr(getattr(channel, "factory", None), "max_body", None)
        if limit is not None and self._body_octets > limit and hasattr(channel, "_too_large"):
            channel._too_large()
            return
        server.Request.handleContentChunk(self, data)

    def render(self, resrc):
        # The hub's own 404/405/501 answers, never Twisted's pages (errors.py).
        from twisted_mailhub.web import errors

        server.Request.render(self, errors.MethodGuard(errors.replace_error_page(resrc)))

    head_only = False  # a HEAD answered by rendering GET (errors.MethodGuard)

    def write(self, data):
        if self.head_only and not self.startedWriting:
            # The method is HEAD again for the first write: Twisted's
            # http.Request then sends the head alone and drops every body.
            self.method = b"HEAD"
        server.Request.write(self, data)

    def processingFailed(self, reason):
        """
        The one error path of the web face (L{errors}): whatever failed
        while answering this request is answered with a page (JSON under
        C{/api/}) and the status L{errors.refusal} gives it; only a fault of
        the hub (500) puts a traceback in the log, never on the page.
        """
        from twisted_mailhub.web import errors

        try:
            reason = errors.first_failure(reason)
            refused = errors.refusal(self, reason.value)
            if refused.code == 500:
                log.failure("web: {method} {path} failed", reason, method=self.method.decode("ascii", "replace"), path=errors._path(self))
            errors.write_answer(self, refused)
        except Exception:
            log.failure("web: answering a failed request failed")
            if not self.finished and not getattr(self, "_disconnected", False):
                self.loseConnection()
        return None


def client_host(request: Any) -> str:
    """The client's IP address as a string ('' when unknown)."""
    return getattr(request.getClientAddress(), "host", "") or ""


def request_secure(request: Any) -> bool:
    """Did C{request} come over TLS (the C{--webs} listener)?"""
    return is_secure(request.channel.transport) if request.channel is not None else request.isSecure()


def form_value(request: Any, name: str, default: str = "") -> str:
    """A form field of a POST (or query argument) as text; C{default} if absent."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def number_value(request: Any, name: str, default: int, low: int, high: int, clamp: bool = True) -> int:
    """
    A numeric query or form parameter of the web face (C{?page=},
    C{below}, C{after}): C{default} when absent or empty; a whole number
    in ASCII digits of any length is brought into C{low}..C{high} with
    C{clamp} (C{?page=99999999999999}: the last page), else refused;
    anything else (C{-1}, C{1.5}, C{abc}, C{²}) is refused. A refusal is
    L{errors.Refused} 400 naming the parameter and its range.
    """
    from twisted_mailhub.lines import quote as shown
    from twisted_mailhub.web.errors import Refused

    text = form_value(request, name, "")
    if text == "":
        return default
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        # (compared by length first: int() of 5,000 digits raises)
        number = high + 1 if len(digits) > len(str(high)) else int(digits)
        if low <= number <= high:
            return number
        if clamp:
            return min(max(number, low), high)
    raise Refused(400, f"{name} wants a whole number from {low} to {high}, not {shown(text, 40) or 'nothing'}.")


def redirect(request: Any, location: str, code: int = 303) -> bytes:
    """Answer C{request} with a redirect to C{location}."""
    request.setResponseCode(code)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"See " + location.encode("utf-8") + b"\n"


def cross_site(request: Any) -> bool:
    """
    Did a browser send C{request} from a page of another origin? True when
    its Fetch Metadata says so (C{Sec-Fetch-Site: cross-site} or
    C{same-site}: W3C Fetch Metadata Request Headers §2.1) or when its
    C{Origin} (RFC 6454 §7) is C{null} or is not this origin, the scheme of
    the listener and the C{Host} the request names. A request with neither
    header (curl, a program, a link typed into the address bar) is not.
    A browser sends credentials it has cached (HTTP Basic, RFC 7617 §2.2)
    with such a request whatever page sent it: this is how to tell.
    """
    site = (request.getHeader(b"sec-fetch-site") or b"").strip().lower()
    if site in (b"cross-site", b"same-site"):
        return True
    origin = request.getHeader(b"origin")
    if origin is None:
        return False
    scheme = b"https" if request_secure(request) else b"http"
    host = (request.getHeader(b"host") or b"").strip().lower()
    return origin.strip().lower() != scheme + b"://" + host


def local_path(target: str, default: str = "/") -> str:
    """C{target} if it is a path on this site (no scheme, no other host), else C{default}."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and not any(c < " " for c in target):
        return target
    return default


class StaticFiles(static.File):
    """
    The package's C{static/} folder: files only, no directory listings.
    L{static.File} already refuses C{..} and separators in a segment.
    """

    def directoryListing(self):
        return resource.NoResource("Not found.")

    def createSimilarFile(self, path):
        f = StaticFiles(path, self.defaultType, self.ignoredExts, self.registry)
        f.processors = {}
        f.indexNames = []
        f.childNotFound = self.childNotFound
        return f


class WebFace:
    """
    The web face of one hub: sessions, pages, and the sites its listeners serve.

    @ivar hub: the L{twisted_mailhub.hub.Hub}.
    @ivar sessions: the L{SessionStore} of browser sessions.
    @ivar pages: built-in resources by first path segment (C{mail}, C{console}, ...).
    """

    def __init__(self, hub: Any, idle_timeout: float = 3600.0):
        self.hub = hub
        self.sessions = SessionStore(hub.reactor, idle_timeout)
        self.pages: dict[str, resource.Resource] = {}
        self.root = Root(self)

    def site(self, name: str) -> server.Site:
        """A L{server.Site} for the listener called C{name}."""
        from twisted_mailhub.web import deadlines

        options = getattr(self.hub, "options", None) or {}
        site = deadlines.DeadlineSite(self.root, timeout=float(options.get("web-idle-timeout") or deadlines.IDLE_TIMEOUT), reactor=self.hub.reactor)
        site.header_timeout = float(options.get("web-header-timeout") or deadlines.HEADER_TIMEOUT)
        site.body_timeout = float(options.get("web-body-timeout") or deadlines.BODY_TIMEOUT)
        site.max_body = deadlines.max_body(int(getattr(self.hub, "max_message_size", 0) or 0))
        site.requestFactory = WebRequest
        site.displayTracebacks = False
        site.record_sessions = False  # the console's own traffic is not a session to watch
        return site

    # -- sessions ----------------------------------------------------------

    def session(self, request: Any):
        """The request's L{WebSession} (logged in or not), or L{None}."""
        cached = getattr(request, "_mailhub_session", False)
        if cached is not False:
            return cached
        name = COOKIE_HTTPS if request_secure(request) else COOKIE_HTTP
        found = self.sessions.get(request.getCookie(name))
        if found is not None and found.user is not None and not self._account_exists(found.user):
            # The account was removed (the API, mailhub-admin and a
            # SIGHUP): its sessions end, as its API tokens do.
            self.sessions.end(found)
            found = None
        request._mailhub_session = found
        return found

    def _account_exists(self, user: Any) -> bool:
        """Is the account of the signed-in L{IWebUser} C{user} still one of the hub's?"""
        accounts = getattr(self.hub, "accounts", None)
        if accounts is None or not hasattr(accounts, "find"):
            return True
        return accounts.find(user.address) is not None

    def user(self, request: Any):
        """The signed-in L{IWebUser} of C{request}, or L{None}."""
        session = self.session(request)
        return session.user if session is not None else None

    def csrf_ok(self, request: Any) -> bool:
        """
        Does C{request} carry its session's CSRF token (form field C{csrf} or
        header C{X-CSRF-Token})? A request without a session never does.
        """
        session = self.session(request)
        if session is None:
            return False
        token = request.getHeader(b"x-csrf-token") or form_value(request, "csrf")
        return session.csrf_ok(token)

    def start_session(self, request: Any, user: Any = None, logout: Any = None):
        """
        A new session with a new id (the old one, if any, ends) and its
        cookie set on C{request}.
        """
        old = self.session(request)
        if old is not None:
            self.sessions.end(old)
        session = self.sessions.new(user, logout, client_host(request))
        self._set_cookie(request, session.sid)
        request._mailhub_session = session
        return session

    def end_session(self, request: Any) -> None:
        session = self.session(request)
        if session is not None:
            self.sessions.end(session)
        self._set_cookie(request, "", expire=True)
        request._mailhub_session = None

    def _set_cookie(self, request: Any, value: str, expire: bool = False) -> None:
        secure = request_secure(request)
        request.addCookie(
            COOKIE_HTTPS if secure else COOKIE_HTTP,
            value,
            path=b"/",
            secure=secure,
            httpOnly=True,
            sameSite="Strict",
            max_age=b"0" if expire else None,
        )

    # -- transport rules -----------------------------------------------------

    def plain_http_refused(self, request: Any) -> bool:
        """
        Plain HTTP from outside C{--trusted-networks} carries no password or
        session: True (and the request answered with a redirect to HTTPS, or
        a page saying why not) when C{request} is such a one.
        """
        if request_secure(request) or client_host(request) in self.hub.trusted:
            return False
        webs = self.hub.listening.get("webs")
        if webs is None:
            from twisted_mailhub.web import errors

            errors.write_answer(request, errors.Refused(403, "Log in over HTTPS: this hub takes passwords over plain HTTP only from its trusted networks, and it has no HTTPS listener."))
            return True
        host = (request.getRequestHostname() or b"").decode("ascii", "replace")
        if not _HOSTNAME.match(host):
            host = self.hub.hostname
        target = f"https://{host}:{webs.port}{quote(request.uri.decode('utf-8', 'replace'), safe='/?&=%:@+,;')}"
        request.write(redirect(request, target, code=302))
        request.finish()
        return True


class Root(resource.Resource):
    """
    C{/}: the home page; children are the built-in pages, C{static/}, and
    whatever is in C{hub.web_resources}.
    """

    def __init__(self, face: WebFace):
        resource.Resource.__init__(self)
        self.face = face
        self.static = StaticFiles(STATIC.path)
        self.favicon = Favicon()

    def getChildWithDefault(self, path, request):
        name = path.decode("utf-8", "replace")
        if name == "static":
            return self.static
        if name == "favicon.ico" and not request.postpath:
            return self.favicon  # (asked for by every browser on every page, signed in or not)
        if self.face.plain_http_refused(request):
            return _Answered()
        mounted = self._mounted(name, request)
        if mounted is not None:
            return mounted
        if name == "":
            return self
        if name == "login":
            return LoginPage(self.face)
        if name == "logout":
            return LogoutPage(self.face)
        page = self.face.pages.get(name)
        if page is not None:
            return page
        return resource.NoResource("No such page.")

    def _mounted(self, name: str, request: Any):
        extra = getattr(self.face.hub, "web_resources", {}) or {}
        rest = [segment.decode("utf-8", "replace") for segment in request.postpath]
        for key in sorted(extra, key=len, reverse=True):
            parts = key.strip("/").split("/")
            if [name] + rest[: len(parts) - 1] == parts:
                for _ in parts[1:]:
                    request.prepath.append(request.postpath.pop(0))
                return extra[key]
        return None

    def render_GET(self, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            return redirect(request, "/login")
        user = session.user
        content = [
            tags.p("Signed in as ", tags.strong(user.address), " (teacher: sees every session)." if user.is_teacher else "."),
            tags.ul(
                tags.li(tags.a("Mail", href="/mail"), ": your folders and messages."),
                tags.li(tags.a("Console", href="/console"), ": live sessions on the hub, explained line by line."),
            ),
        ]
        return render_page(request, "mailhub", content, session)


class Favicon(resource.Resource):
    """
    C{/favicon.ico}: the hub's icon (an envelope, 32x32, a PNG in an ICO,
    C{static/favicon.ico}), which browsers ask for at this address on every
    page load; cached for a day, unlike the pages (C{no-store}).
    """

    isLeaf = True

    def __init__(self):
        resource.Resource.__init__(self)
        self.data = STATIC.child("favicon.ico").getContent()

    def render_GET(self, request):
        request.setHeader(b"content-type", b"image/vnd.microsoft.icon")
        request.setHeader(b"cache-control", b"public, max-age=86400")
        return self.data


class _Answered(resource.Resource):
    """A request already answered (and finished) while routing it."""

    isLeaf = True

    def render(self, request):
        return server.NOT_DONE_YET


class LoginPage(resource.Resource):
    """
    C{/login}: the form (GET) and the login itself (POST), through the
    hub's portal and failed-login throttle.
    """

    isLeaf = True

    def __init__(self, face: WebFace):
        resource.Resource.__init__(self)
        self.face = face

    def _form(self, request, session, message: str = "", code: int = 200, username: str = "", draft: dict[str, str] | None = None, next_path: str | None = None):
        next_path = next_path or local_path(form_value(request, "next", "/"))
        if draft is None:
            draft = _draft_in(request) if request.method == b"POST" else {}
        content = [
            tags.p(message, class_="error", role="alert") if message else "",
            post_form(
                "/login",
                session,
                tags.input(type="hidden", name="next", value=next_path),
                # A message typed before the session ended (login_keeping_draft).
                *(tags.input(type="hidden", name=DRAFT_PREFIX + name, value=value) for name, value in draft.items()),
                tags.label("Address ", tags.input(type="text", name="username", value=username, autocomplete="username", required="required", autofocus="autofocus")),
                tags.label("Password ", tags.input(type="password", name="password", autocomplete="current-password", required="required")),
                tags.button("Log in", type="submit"),
                class_="login",
            ),
        ]
        return render_page(request, "Log in", content, None, code=code)

    def render_GET(self, request):
        session = self.face.session(request)
        if session is not None and session.user is not None:
            return redirect(request, local_path(form_value(request, "next", "/")))
        if session is None:
            # A pre-login session, so the login form has a CSRF token too.
            session = self.face.start_session(request)
        return self._form(request, session)

    def render_POST(self, request):
        session = self.face.session(request)
        if session is None or not self.face.csrf_ok(request):
            session = self.face.start_session(request)
            return self._form(request, session, "The form had expired; please log in again.", code=403)
        username = form_value(request, "username").strip()
        password = form_value(request, "password")
        portal = ClientPortal(self.face.hub.portal, self.face.hub.throttle, client_host(request), "web", self.face.hub.metrics)
        d = portal.login(UsernamePassword(username.encode("utf-8"), password.encode("utf-8")), None, IWebUser)

        def ok(result):
            _, avatar, logout = result
            new = self.face.start_session(request, avatar, logout)
            draft = _draft_in(request)
            if draft:
                from twisted_mailhub.web.mail import draft_again

                return draft_again(self.face, new, request, draft, "Your message was not sent: here it is as you typed it. Check it and press Send.")
            return redirect(request, local_path(form_value(request, "next", "/")))

        def failed(reason):
            reason.trap(UnauthorizedLogin, UnhandledCredentials)
            return self._form(request, session, "Wrong address or password.", code=401, username=username)

        # (anything else, e.g. the accounts database down: the one error path)
        return d.addCallbacks(ok, failed)


#: The login form's hidden fields that hold a draft: draft-to, draft-body, ...
DRAFT_PREFIX = "draft-"


def _draft_in(request: Any) -> dict[str, str]:
    """The draft a login form carries (C{draft-NAME} fields), as compose form fields."""
    from twisted_mailhub.web.mail import DRAFT_FIELDS

    return {name: form_value(request, DRAFT_PREFIX + name) for name in DRAFT_FIELDS if form_value(request, DRAFT_PREFIX + name)}


def login_keeping_draft(face: WebFace, request: Any, draft: dict[str, str], attached: bool = False) -> bytes:
    """
    The answer to a compose form posted without a session: the login form
    (401) holding C{draft} (L{twisted_mailhub.web.mail.DRAFT_FIELDS}), so
    that what was typed is not lost; after the login it comes back in the
    compose form, unsent (a page of another site could post one: the user
    sees it and decides).
    """
    session = face.session(request)
    if session is None:
        session = face.start_session(request)
    words = "You were logged out (the server restarted, or the session ended): your message was not sent. Log in and it comes back, as you typed it, to send."
    if attached:
        words += " Its attachments could not be kept: attach them again."
    return LoginPage(face)._form(request, session, words, code=401, draft=draft, next_path="/compose")


class LogoutPage(resource.Resource):
    """C{/logout}: POST with the CSRF token ends the session."""

    isLeaf = True

    def __init__(self, face: WebFace):
        resource.Resource.__init__(self)
        self.face = face

    def render_POST(self, request):
        if not self.face.csrf_ok(request):
            from twisted_mailhub.web.errors import Refused

            raise Refused(403, "The form had expired, or did not come from this site's page: you are still logged in. Reload the page and try again.")
        self.face.end_session(request)
        return redirect(request, "/login")

    def render_GET(self, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            return redirect(request, "/login")  # (logged out already: the back button after logging out)
        content = post_form("/logout", session, tags.button("Log out", type="submit"))
        return render_page(request, "Log out", content, session)
