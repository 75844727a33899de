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

L{twisted_mailhub.web.site.WebRequest} calls L{replace_error_page} on the
resource it is about to render and L{guard_methods} around every other.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web import http, resource
from twisted.web.error import UnsupportedMethod

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
    500: ("Server error", "internal_error"),
    501: ("Not implemented", "not_implemented"),
    503: ("Unavailable", "unavailable"),
    507: ("Insufficient storage", "insufficient_storage"),
}

# A line of what to do, by status.
_ADVICE = {
    404: "There is no page at this address. The home page lists what there is.",
    405: "This address does not take that method.",
    501: "The web listener does not know this HTTP method.",
    500: "Something went wrong on the server; its log says more.",
    507: "The server's disk is full: nothing was changed. Try again later.",
}


def is_api(request: Any) -> bool:
    """Is C{request} for the JSON API (a path under C{/api/})?"""
    path = request.path or b""
    return path == b"/api" or path.startswith(b"/api/")


def answer(request: Any, code: int, message: str | None = None) -> bytes:
    """
    Set C{request}'s status and content type for an error C{code} and
    return its body: JSON under C{/api/}, else an HTML page. C{message}
    defaults to the status's own advice; it is plain text (escaped here).
    """
    title, slug = _NAMES.get(code, (http.RESPONSES.get(code, b"Error").decode("ascii", "replace"), "error"))
    text = message or _ADVICE.get(code, title + ".")
    request.setResponseCode(code)
    if is_api(request):
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps({"error": {"status": code, "code": slug, "message": text}}).encode("utf-8")
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    from html import escape

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />"
        f"<title>{code} {escape(title)} · mailhub</title>"
        "<link rel=\"stylesheet\" href=\"/static/mailhub.css\" /></head>\n"
        "<body><header class=\"bar\"><a class=\"brand\" href=\"/\">mailhub</a></header>\n"
        f"<main><h1>{code} {escape(title)}</h1><p>{escape(text)}</p>"
        "<p><a href=\"/\">Home</a></p></main></body></html>\n"
    ).encode("utf-8")


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
    Wraps a resource for one render: an unsupported method is answered
    with L{answer}'s 405 (with C{Allow}) or 501 instead of Twisted's page.
    HEAD of a resource with only GET still goes through Twisted's own
    faking (the exception is passed on for that case).
    """

    def __init__(self, wrapped: Any):
        self.wrapped = wrapped

    def render(self, request):
        try:
            return self.wrapped.render(request)
        except UnsupportedMethod as e:
            allowed = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise
            if request.method in KNOWN_METHODS:
                request.setHeader(b"allow", b", ".join(allowed))
                shown = ", ".join(m.decode("ascii", "replace") for m in allowed)
                return answer(request, 405, f"This address takes {shown}, not {request.method.decode('ascii', 'replace')}.")
            return answer(request, 501)
