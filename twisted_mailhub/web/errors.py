# -*- test-case-name: tests.test_web_errors -*-
"""
The web listener's own error answers, in place of Twisted's default pages
(C{404 - No Such Resource}, C{405 Method Not Allowed: Your browser
approached me...}, C{501 Huh?}, C{Processing Failed}).

 - A path under C{/api/} gets the JSON API's error shape,
   C{{"error": {"status": N, "code": "...", "message": "..."}}}, whatever
   answered it (L{twisted_mailhub.web.api} keeps the same shape).
 - Anything else gets a page in the hub's own layout, with a line of what
   to do.
 - 405 carries C{Allow} (RFC 9110 §15.5.6); 501 is for a method the server
   does not know at all (RFC 9110 §15.6.2).

The one error path: whatever a resource raises, or the Deferred it returns
fails with, reaches L{twisted_mailhub.web.site.WebRequest.processingFailed},
which asks L{refusal} what it means and answers with L{answer}:

 - L{Refused} (a resource's own refusal: a bad id, a form from another
   site, an unknown action): its status and words, nothing logged.
 - The store or its database cannot be reached: 503 with C{Retry-After}
   (RFC 9110 §15.6.4), one line in the log (L{outage.refused}).
 - A full disk, or the account's quota: 507 (RFC 4918 §11.5), one line.
 - A message or folder that is not there (another client deleted or
   moved it meanwhile, or the address names none): 404.
 - A folder that exists already: 409 (RFC 9110 §15.5.10).
 - Anything else is a fault of the hub: 500, and its traceback goes to
   the log only.

No answer shows a traceback, an exception's name or a Python repr: the
words are the hub's, chosen here by status. L{twisted_mailhub.web.site.
WebRequest} calls L{replace_error_page} on the resource it is about to
render and L{MethodGuard} around every one.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web import http, resource
from twisted.web.error import UnsupportedMethod

from twisted_mailhub.errorwords import no_room

log = Logger()

# RFC 9110 §9 and RFC 5789: a method the server knows, refused at one
# address, is 405; any other is 501.
KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")

# What each status means, for the page's title and the API's "code".
_NAMES = {
    400: ("Bad request", "bad_request"),
    403: ("Forbidden", "forbidden"),
    404: ("Not found", "not_found"),
    405: ("Method not allowed", "method_not_allowed"),
    408: ("Request timeout", "request_timeout"),
    409: ("Conflict", "conflict"),
    413: ("Too large", "too_large"),
    414: ("Address too long", "uri_too_long"),
    431: ("Header fields too large", "header_fields_too_large"),
    500: ("Server error", "internal_error"),
    501: ("Not implemented", "not_implemented"),
    503: ("Unavailable", "unavailable"),
    507: ("Insufficient storage", "insufficient_storage"),
}

# A line of what to do, by status.
_ADVICE = {
    400: "The request could not be read.",
    403: "This is not yours to see or change.",
    404: "There is no page at this address. The home page lists what there is.",
    409: "That conflicts with what is there now; nothing was changed.",
    503: "The mail store cannot be reached now; nothing was changed. Try again in a moment.",
    405: "This address does not take that method.",
    501: "The web listener does not know this HTTP method.",
    500: "Something went wrong on the server; nothing more is shown here, its log says more.",
    507: "The server's disk is full: nothing was changed. Try again later.",
}

# Seconds a client is asked to wait after a 503 (RFC 9110 §10.2.3).
RETRY_AFTER = b"10"


class Refused(Exception):
    """
    A request a resource refuses on purpose: raise it (or fail the
    Deferred a resource returns with it) and the one error path answers
    with C{code} and C{message} (plain text, for people; the status's own
    advice when None), and C{headers} (e.g. C{Allow}); nothing is logged.
    C{back} is a local path the page links to (e.g. the folder).
    """

    def __init__(self, code: int, message: str | None = None, headers: dict[bytes, bytes] | None = None, back: str | None = None):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.back = back


def _cause(error: BaseException) -> BaseException:
    """The failure inside a L{defer.FirstError} (a DeferredList that failed on its first error)."""
    from twisted.internet.defer import FirstError

    while isinstance(error, FirstError):
        error = error.subFailure.value
    return error


def first_failure(reason: Any) -> Any:
    """The failure inside a failure of L{defer.FirstError}, for the log: the one that happened."""
    from twisted.internet.defer import FirstError

    while isinstance(reason.value, FirstError):
        reason = reason.value.subFailure
    return reason


def refusal(request: Any, error: BaseException) -> Refused:
    """
    What C{error}, raised while answering C{request}, means for the
    client, as a L{Refused}: see the module's list. Logs what the hub's
    operator needs (one line for a known condition, the traceback for a
    fault of the hub: the caller logs that one, with the failure).
    """
    from twisted_mailhub.store.interfaces import BadFolderName, FolderExists, NoSuchFolder, NoSuchMessage, is_not_writable, is_out_of_space, not_writable_reason
    from twisted_mailhub.store.outage import refused, unavailable

    error = _cause(error)
    method = request.method.decode("ascii", "replace")
    if isinstance(error, Refused):
        return error
    if unavailable(error):
        refused("web", _what(request), error)
        return Refused(503, None, {b"retry-after": RETRY_AFTER})
    if is_out_of_space(error):
        from twisted_mailhub.quota import QuotaExceeded

        log.warn("web: {method} {path}: {why}", method=method, path=_path(request), why=no_room(error))
        if isinstance(error, QuotaExceeded):
            # (said once: "Your mailbox is full (mailbox full (...))" was the reason's words again)
            if error.incoming > error.limit:
                return Refused(507, f"That is too large for your mailbox: {error.detail}. Nothing was changed.")
            return Refused(507, f"Your mailbox is full ({error.detail}): nothing was changed. Delete some mail (empty the Trash) and try again.")
        return Refused(507)
    if is_not_writable(error):
        # (a Maildir the hub may not write: a read-only mount, other owners)
        log.warn("web: {method} {path}: the mailbox cannot be written ({why})", method=method, path=_path(request), why=not_writable_reason(error))
        return Refused(403, f"The server may not write this mailbox ({not_writable_reason(error)}): nothing was changed. Its administrator can let it.")
    if isinstance(error, NoSuchMessage):
        return Refused(404, "That message is not here (any more): another mail program may have deleted or moved it meanwhile. Nothing was changed.", back=_folder_of(request))
    if isinstance(error, (NoSuchFolder, BadFolderName)):
        return Refused(404, "There is no such folder (another mail program may have deleted or renamed it). Nothing was changed.")
    if isinstance(error, FolderExists):
        return Refused(409, "That folder exists already; nothing was changed.")
    return Refused(500)


def _folder_of(request: Any) -> str | None:
    """C{/mail/FOLDER} for a request under C{/mail/FOLDER/...} (as the client wrote it, percent-encoded), else None."""
    parts = (request.path or b"").split(b"/")
    if len(parts) > 3 and parts[1] == b"mail" and parts[2] != b"":
        return "/mail/" + parts[2].decode("ascii", "replace")
    return None


def _what(request: Any) -> str:
    """What was refused, for the log, never client data: "API folders", "mail page GET"."""
    if is_api(request):
        return f"API {getattr(request, 'mailhub_route', 'request')}"
    first = (request.path or b"/").split(b"/")[1:2]
    name = first[0].decode("ascii", "replace") if first and first[0] in (b"mail", b"console", b"login", b"logout") else ""
    return f"{name + ' ' if name else ''}page {request.method.decode('ascii', 'replace')}"


def _path(request: Any) -> str:
    """The request's path for the log: never more than 200 characters, controls escaped."""
    text = (request.path or b"").decode("utf-8", "replace")[:200]
    return "".join(c if c.isprintable() else f"<U+{ord(c):04X}>" for c in text)


def is_api(request: Any) -> bool:
    """Is C{request} for the JSON API (a path under C{/api/})?"""
    path = request.path or b""
    return path == b"/api" or path.startswith(b"/api/")


def answer(request: Any, code: int, message: str | None = None, back: str | None = None) -> bytes:
    """
    Set C{request}'s status and content type for an error C{code} and
    return its body: JSON under C{/api/}, else an HTML page in the hub's
    layout (with the signed-in user's navigation, when the request has
    found its session). C{message} defaults to the status's own advice;
    it is plain text (escaped here). C{back}: a local path to link to
    besides the home page (e.g. the folder of a message that is gone).
    """
    title, slug = _NAMES.get(code, (http.RESPONSES.get(code, b"Error").decode("ascii", "replace"), "error"))
    text = message or _ADVICE.get(code, title + ".")
    request.setResponseCode(code)
    if is_api(request):
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps({"error": {"status": code, "code": slug, "message": text}}).encode("utf-8")
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    try:
        from twisted.web.template import tags

        from twisted_mailhub.web.pages import page_bytes

        session = _session_of(request)
        links = [tags.a("Home", href="/")]
        if back:
            links = [tags.a("Back", href=back), " · "] + links
        return page_bytes(f"{code} {title}", [tags.p(text, class_="error", role="alert"), tags.p(*links)], session)
    except Exception:
        # (the layout itself failed: the plain page, never a traceback)
        log.failure("web: the error page's layout failed")
    return _bare_page(code, title, text)


def _bare_page(code: int, title: str, text: str) -> bytes:
    """An error page in the hub's style without the layout (no request, or the layout failed)."""
    from html import escape

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />"
        f"<title>{code} {escape(title)} · mailhub</title>"
        "<link rel=\"stylesheet\" href=\"/static/mailhub.css\" /><link rel=\"icon\" href=\"/favicon.ico\" /></head>\n"
        "<body><header class=\"bar\"><a class=\"brand\" href=\"/\">mailhub</a></header>\n"
        f"<main><h1>{code} {escape(title)}</h1><p class=\"error\" role=\"alert\">{escape(text)}</p>"
        "<p><a href=\"/\">Home</a></p></main></body></html>\n"
    ).encode("utf-8")


def standalone(path: bytes, code: int, text: str) -> tuple[bytes, bytes]:
    """
    (content type, body) of an error C{code} answered before a request
    exists (the connection's own limits, L{twisted_mailhub.web.deadlines}):
    the API's JSON error under C{/api/}, else a page in the hub's style.
    """
    title, slug = _NAMES.get(code, (http.RESPONSES.get(code, b"Error").decode("ascii", "replace"), "error"))
    if path == b"/api" or path.startswith(b"/api/"):
        return b"application/json; charset=utf-8", json.dumps({"error": {"status": code, "code": slug, "message": text}}).encode("utf-8")
    return b"text/html; charset=utf-8", _bare_page(code, title, text)


def _session_of(request: Any) -> Any:
    """The request's browser session (its user's navigation on the page), or None."""
    found = getattr(request, "_mailhub_session", False)
    if found is False:
        face = getattr(getattr(getattr(request, "site", None), "resource", None), "face", None)
        found = face.session(request) if face is not None else None
    return found or None


def write_answer(request: Any, refused: Refused) -> None:
    """
    Answer C{request} with C{refused} (L{answer}'s body and its headers) and
    finish it; a request whose answer had begun is cut off instead (its
    client sees a broken response, never half a page that looks whole).
    Nothing is written to a request already finished or whose client has gone.
    """
    if request.finished or getattr(request, "_disconnected", False):
        return
    if request.startedWriting:
        request.loseConnection()
        return
    for name, value in refused.headers.items():
        request.setHeader(name, value)
    body = answer(request, refused.code, refused.message, refused.back)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class HubErrorPage(resource.Resource):
    """An error answer (any method) with L{answer}'s body."""

    isLeaf = True

    def __init__(self, code: int, message: str | None = None):
        resource.Resource.__init__(self)
        self.code = code
        self.message = message

    def render(self, request):
        return answer(request, self.code, self.message)

    def getChildWithDefault(self, path, request):
        return self


# Twisted's own default texts: never shown.
_TWISTED_DETAILS = ("Sorry. No luck finding that resource.", "Sorry, resource is forbidden.")


def replace_error_page(resrc: Any) -> Any:
    """
    C{resrc}, or a L{HubErrorPage} in place of one of Twisted's error pages
    (L{resource.NoResource} and friends): same status, the hub's words
    (Twisted's detail text is kept only where a part of the hub chose it,
    e.g. C{NoResource("No such page.")}).
    """
    if isinstance(resrc, resource._UnsafeErrorPageBase):
        detail = resrc.detail if isinstance(resrc.detail, str) and resrc.detail not in _TWISTED_DETAILS else None
        return HubErrorPage(resrc.code, detail if resrc.code != 404 else None)
    return resrc


class MethodGuard:
    """
    Wraps a resource for one render, so that every resource answers the
    same way:

     - an unsupported method is answered with L{answer}'s 405 (with
       C{Allow}) or 501 instead of Twisted's page; HEAD of a resource with
       only GET renders its GET and sends the head alone, also when the
       answer comes later;
     - a resource may return its body (bytes), C{NOT_DONE_YET} (it answers
       the request itself), or a L{Deferred} or coroutine that fires with
       the body (or C{NOT_DONE_YET}/None once it has answered): a failure
       goes to the request's C{processingFailed}, the one error path;
     - anything else is a fault, answered as one (never Twisted's page with
       the value's repr).
    """

    def __init__(self, wrapped: Any):
        self.wrapped = wrapped

    def render(self, request):
        try:
            body = self.wrapped.render(request)
        except UnsupportedMethod as e:
            allowed = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                # RFC 9110 §9.3.2: the head GET would send, without the body.
                request.method = b"GET"
                request.head_only = True
                body = self.wrapped.render(request)
            elif request.method in KNOWN_METHODS:
                shown = ", ".join(m.decode("ascii", "replace") for m in allowed)
                raise Refused(405, f"This address takes {shown}, not {request.method.decode('ascii', 'replace')}.", {b"allow": b", ".join(allowed)})
            else:
                raise Refused(501)
        return settle(request, body)


def settle(request: Any, body: Any) -> Any:
    """
    What L{twisted.web.server.Request.render} may take for C{body}, a
    resource's answer: bytes and C{NOT_DONE_YET} as they are; a Deferred
    or coroutine is waited for here (see L{MethodGuard}). Raises
    C{TypeError} for anything else.
    """
    from inspect import iscoroutine

    from twisted.internet import defer
    from twisted.web import server

    if isinstance(body, bytes) or body is server.NOT_DONE_YET:
        return body
    if iscoroutine(body):
        body = defer.Deferred.fromCoroutine(body)
    if not isinstance(body, defer.Deferred):
        raise TypeError(f"a resource answered with a {type(body).__name__}, not bytes")

    def done(result):
        if request.finished or getattr(request, "_disconnected", False) or result is server.NOT_DONE_YET:
            return
        if isinstance(result, bytes):
            request.setHeader(b"content-length", b"%d" % len(result))
            request.write(result)
            request.finish()
        else:
            raise TypeError(f"a resource answered later with a {type(result).__name__}, not bytes, and did not answer itself")

    body.addCallback(done).addErrback(request.processingFailed)
    return server.NOT_DONE_YET
