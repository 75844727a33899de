# -*- test-case-name: tests.test_web_login -*-
"""
The page layout every HTML page of the web face shares
(C{templates/layout.html}), rendered with L{twisted.web.template}: every
string put into a page is escaped by the flattener, so a subject or a
protocol line can never become markup.

No page has inline script or inline event handlers (the Content-Security-
Policy forbids them); behaviour comes from the C{static/*.js} files a page
names, and data for them travels in C{data-*} attributes.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Iterable

from twisted.python.filepath import FilePath
from twisted.web.template import Element, XMLFile, flatten, renderer, tags

PACKAGE_DIR = FilePath(str(resources.files("twisted_mailhub.web")))
TEMPLATES = PACKAGE_DIR.child("templates")
STATIC = PACKAGE_DIR.child("static")


class Layout(Element):
    """
    One HTML page: a title, the navigation for the signed-in user, the
    C{content} (any flattenable: tags, strings), and the scripts it loads.

    @param data: C{data-*} attributes for C{<body>} (page data for scripts).
    """

    loader = XMLFile(TEMPLATES.child("layout.html"))

    def __init__(
        self,
        title: str,
        content: Any,
        session: Any = None,
        scripts: Iterable[str] = (),
        data: dict[str, str] | None = None,
    ):
        Element.__init__(self)
        self.title = title
        self.body = content
        self.session = session
        self.script_names = list(scripts)
        self.data = dict(data or {})

    @renderer
    def scripts(self, request, tag):
        names = (["live.js"] if any(n in ("console.js", "session.js", "mail.js") for n in self.script_names) else []) + self.script_names
        return [tags.script(src=f"/static/{name}", defer="defer") for name in names]

    @renderer
    def body_attributes(self, request, tag):
        attributes = {f"data-{key}": value for key, value in self.data.items()}
        if self.session is not None:
            attributes["data-csrf"] = self.session.csrf
        return tag(**attributes)

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(title=self.title)

    @renderer
    def nav(self, request, tag):
        user = self.session.user if self.session is not None else None
        if user is None:
            return tag(tags.a("Log in", href="/login"))
        links = [tags.a("Mail", href="/mail"), " ", tags.a("Compose", href="/compose"), " ", tags.a("Console", href="/console"), " "]
        role = " (teacher)" if user.is_teacher else ""
        return tag(
            *links,
            tags.span(user.address + role, class_="who"),
            " ",
            post_form("/logout", self.session, tags.button("Log out", type="submit"), class_="inline"),
        )

    @renderer
    def content(self, request, tag):
        notice = ""
        if self.session is not None and getattr(self.session, "notice", ""):
            # (shown once: the line a form's redirect left, e.g. "Sent to ...")
            notice, self.session.notice = self.session.notice, ""
            notice = tags.p(notice, class_="notice", role="status")
        return [notice, self.body]


def post_form(action: str, session: Any, *children: Any, **attributes: Any):
    """
    A C{<form method="post">} carrying the session's CSRF token.
    """
    return tags.form(
        tags.input(type="hidden", name="csrf", value=session.csrf if session is not None else ""),
        *children,
        method="post",
        action=action,
        **attributes,
    )


def render_page(request: Any, title: str, content: Any, session: Any = None, code: int = 200, **kwargs: Any) -> bytes:
    """
    A whole page with L{Layout}, as the bytes a resource's C{render_*} (or
    the Deferred it returns) answers with; C{request}'s status set to
    C{code}. The page is laid out whole before anything is written, so a
    failure while laying it out reaches the one error path
    (L{twisted_mailhub.web.errors}) instead of leaving half a page.
    """
    body = page_bytes(title, content, session, **kwargs)
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return body


def page_bytes(title: str, content: Any, session: Any = None, **kwargs: Any) -> bytes:
    """
    A whole page with L{Layout} as bytes (doctype included), flattened at
    once without a request: safe in a thread for content made of tags and
    strings (no Deferreds), so a large page is laid out off the reactor.
    Returned by L{render_page}.
    """
    out: list[bytes] = [b"<!DOCTYPE html>\n"]
    d = flatten(None, Layout(title, content, session, **kwargs), out.append)
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    if not d.called:  # only tags and strings come here: never waits
        raise RuntimeError("page content waited on a Deferred")
    return b"".join(out)
