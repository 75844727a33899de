# -*- test-case-name: tests.test_web_sessions -*-
"""
Browser sessions: a random id in a cookie, a CSRF token, and the avatar.

Rules (OWASP's session and CSRF cheat sheets, RFC 6265bis):

 - The id is 32 random bytes (C{secrets.token_urlsafe}), in a cookie that
   is C{HttpOnly} (no script reads it), C{SameSite=Strict} (no other site's
   page sends it) and, over HTTPS, C{Secure} with the C{__Host-} prefix (the
   browser never sends it over plain HTTP, and no other host may set it).
 - A login always makes a new session id and drops the old one (no session
   fixation); a logout drops the session.
 - Every session, logged in or not, has its own CSRF token; every request
   that changes anything (every POST) must carry it in the C{csrf} form
   field or the C{X-CSRF-Token} header, compared in constant time.
 - A session whose account was removed ends at its next request
   (L{twisted_mailhub.web.site.WebFace.session}), as the account's API
   tokens stop working.
 - Sessions end after C{idle_timeout} seconds without a request, and at most
   C{max_sessions} are kept (the least recently used goes first).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from typing import Any

import attr

COOKIE_HTTP = b"mailhub_session"
COOKIE_HTTPS = b"__Host-mailhub_session"


@attr.s(auto_attribs=True)
class WebSession:
    """
    One browser's session.

    @ivar sid: the cookie value.
    @ivar csrf: the token every state-changing request must carry.
    @ivar user: the L{twisted_mailhub.web.avatar.IWebUser} after login, else L{None}.
    @ivar last_seen: seconds since the epoch of its last request.
    @ivar peer: the client address it logged in from.
    @ivar notice: a line the next page shows once ("Sent to bob@...").
    @ivar on_end: callables called (no arguments) when the session ends
        (logout, idle, replaced): e.g. the live console's sockets close.
    """

    sid: str
    csrf: str
    user: Any = None
    logout: Any = None
    last_seen: float = 0.0
    peer: str = ""
    on_end: list = attr.ib(factory=list, repr=False)
    # A line for the next page this session shows (e.g. "Sent to ..."), then gone.
    notice: str = ""

    def csrf_ok(self, token: str | bytes | None) -> bool:
        if not token:
            return False
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        return hmac.compare_digest(token.encode("ascii", "replace"), self.csrf.encode("ascii"))


class SessionStore:
    """
    Every live browser session, by id.

    @param clock: an L{IReactorTime}.
    @param idle_timeout: seconds without a request after which a session ends.
    @param max_sessions: most sessions kept at once.
    """

    def __init__(self, clock: Any, idle_timeout: float = 3600.0, max_sessions: int = 10_000):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def new(self, user: Any = None, logout: Any = None, peer: str = "") -> WebSession:
        """
        A fresh session with a new id and a new CSRF token.
        """
        while len(self._sessions) >= self.max_sessions:
            _, old = self._sessions.popitem(last=False)
            self._ended(old)
        session = WebSession(
            sid=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            user=user,
            logout=logout,
            last_seen=self.clock.seconds(),
            peer=peer,
        )
        self._sessions[session.sid] = session
        return session

    def get(self, sid: str | bytes | None) -> WebSession | None:
        """
        The live session with id C{sid}, touched; L{None} if unknown or idle
        too long.
        """
        if not sid:
            return None
        if isinstance(sid, bytes):
            sid = sid.decode("ascii", "replace")
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.last_seen > self.idle_timeout:
            self.end(session)
            return None
        session.last_seen = now
        self._sessions.move_to_end(sid)
        return session

    def end(self, session: WebSession) -> None:
        """
        Forget C{session} (logout, or replaced at login).
        """
        if self._sessions.pop(session.sid, None) is not None:
            self._ended(session)

    def _ended(self, session: WebSession) -> None:
        logout, session.logout = session.logout, None
        session.user = None
        if logout is not None:
            logout()
        ended, session.on_end = session.on_end, []
        for call in ended:
            call()
