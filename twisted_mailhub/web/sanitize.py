# -*- test-case-name: tests.test_web_mail -*-
"""
HTML mail made safe to show: an allowlist of tags and attributes, built
into L{twisted.web.template} tags (so every text and attribute is escaped
by the flattener, and nothing the sender wrote is passed through raw).

Dropped with their content: script, style, svg, math, iframe, object,
embed, form, template, and the like. Dropped, content kept: any other tag
not on the list. No event handler (C{on*}), no C{style}, no C{class}/C{id}
(the page's own CSS must not be steered). Links only to http, https and
mailto, opened without a referrer. Remote images are not loaded unless the
reader asks (C{allow_remote=True}); inline C{cid:} images point at the
message's own parts.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Callable

from twisted.web.template import Tag

ALLOWED = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "code", "dd", "del", "div", "dl", "dt",
    "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "li", "ol", "p", "pre",
    "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "u", "ul",
}
DROP_WITH_CONTENT = {
    "script", "style", "svg", "math", "iframe", "frame", "frameset", "object", "embed", "applet", "form",
    "template", "noscript", "head", "title", "textarea", "select", "button", "video", "audio", "canvas",
    "link", "meta", "base", "input",
}
VOID = {"br", "hr", "img", "input", "meta", "link", "base"}
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height", "title"}, "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
SAFE_SCHEMES = ("http:", "https:", "mailto:")


def _scheme_ok(url: str) -> bool:
    compact = "".join(url.split()).lower()
    return compact.startswith(SAFE_SCHEMES) or compact.startswith("#")


class _DropsContent(HTMLParser):
    """
    An HTML parser that leaves out the elements of L{DROP_WITH_CONTENT}
    with all they hold: L{_dropped_start} and L{_dropped_end} say whether
    a tag is inside one (or starts or ends one), counting nested ones.
    """

    def __init__(self):
        HTMLParser.__init__(self, convert_charrefs=True)
        self.skipping = 0

    def _dropped_start(self, name: str) -> bool:
        """Whether the start tag C{name} (lower case) is left out."""
        if name in DROP_WITH_CONTENT:
            if name not in VOID:
                self.skipping += 1
            return True
        return bool(self.skipping)

    def _dropped_end(self, name: str) -> bool:
        """Whether the end tag C{name} (lower case) is left out."""
        if self.skipping:
            if name in DROP_WITH_CONTENT:
                self.skipping -= 1
            return True
        return False


class _Builder(_DropsContent):
    def __init__(self, cid_url: Callable[[str], str | None], allow_remote: bool):
        _DropsContent.__init__(self)
        self.root = Tag("div")
        self.stack: list[Tag] = [self.root]
        self.names: list[str] = ["div"]
        self.cid_url = cid_url
        self.allow_remote = allow_remote
        self.remote_images = 0

    def handle_starttag(self, name, attrs):
        name = name.lower()
        if self._dropped_start(name) or name not in ALLOWED:
            return
        kept = {}
        for key, value in attrs:
            key = key.lower()
            if value is None or key not in ATTRIBUTES.get(name, ()):
                continue
            if key == "href":
                if not _scheme_ok(value):
                    continue
            if key == "src":
                stripped = value.strip()
                if stripped.lower().startswith("cid:"):
                    local = self.cid_url(stripped[4:])
                    if local is None:
                        continue
                    value = local
                elif stripped.lower().startswith(("http:", "https:")) and self.allow_remote:
                    value = stripped
                else:
                    self.remote_images += 1
                    kept["alt"] = "[remote image blocked]"
                    continue
            kept[key] = value
        if name == "a" and "href" in kept:
            kept["rel"] = "noopener noreferrer"
            kept["target"] = "_blank"
        tag = Tag(name)(**kept)
        self.stack[-1](tag)
        if name not in VOID:
            self.stack.append(tag)
            self.names.append(name)

    def handle_startendtag(self, name, attrs):
        self.handle_starttag(name, attrs)
        if name.lower() not in VOID and not self.skipping and name.lower() in ALLOWED:
            self.handle_endtag(name)

    def handle_endtag(self, name):
        name = name.lower()
        if self._dropped_end(name):
            return
        if name in self.names[1:]:
            while self.names[-1] != name:
                self.names.pop()
                self.stack.pop()
            self.names.pop()
            self.stack.pop()

    def handle_data(self, data):
        if not self.skipping:
            self.stack[-1](data)


def sanitize_html(html: str, cid_url: Callable[[str], str | None] = lambda cid: None, allow_remote: bool = False) -> tuple[Tag, int]:
    """
    The safe rendering of C{html} as a C{<div>} L{Tag}, and the number of
    remote images that were blocked.
    """
    builder = _Builder(cid_url, allow_remote)
    builder.feed(html)
    builder.close()
    return builder.root(class_="body-html"), builder.remote_images


# Tags that start a line of their own in the plain text of HTML mail.
BLOCKS = {
    "address", "article", "blockquote", "center", "dd", "div", "dl", "dt", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "ol", "p", "pre", "section", "table", "tr", "ul",
}

PARAGRAPHS = {"blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "ol", "p", "pre", "table", "ul"}


class _Text(_DropsContent):
    def __init__(self):
        _DropsContent.__init__(self)
        self.lines: list[str] = [""]
        self.pre = 0
        self.href: list[str | None] = []

    def _break(self) -> None:
        if self.lines[-1].strip():
            self.lines.append("")

    def handle_starttag(self, name, attrs):
        name = name.lower()
        if self._dropped_start(name):
            return
        if name == "br":
            self.lines.append("")
        elif name in BLOCKS:
            self._break()
            if name == "li":
                self.lines[-1] = "- "
            elif name == "pre":
                self.pre += 1
        elif name in ("td", "th") and self.lines[-1].strip():
            self.lines[-1] += " "
        if name == "a":
            href = dict(attrs).get("href") or ""
            self.href.append(href if href.lower().startswith(("http:", "https:")) else None)

    def handle_startendtag(self, name, attrs):
        self.handle_starttag(name, attrs)
        if name.lower() not in VOID:
            self.handle_endtag(name)

    def handle_endtag(self, name):
        name = name.lower()
        if self._dropped_end(name):
            return
        if name == "a" and self.href:
            href = self.href.pop()
            if href and href not in self.lines[-1]:
                self.lines[-1] += f" <{href}>"
        elif name in BLOCKS:
            if name == "pre":
                self.pre = max(0, self.pre - 1)
            self._break()
            if name in PARAGRAPHS and self.lines[-2:-1] != [""]:
                self.lines.append("")  # (a blank line after a paragraph)

    def handle_data(self, data):
        if self.skipping:
            return
        if self.pre:
            first, *rest = data.split("\n")
            self.lines[-1] += first
            self.lines.extend(rest)
            return
        words = " ".join(data.split())
        if not words:
            if data and self.lines[-1] and not self.lines[-1].endswith(" "):
                self.lines[-1] += " "
            return
        if data[:1].isspace() and self.lines[-1] and not self.lines[-1].endswith(" "):
            self.lines[-1] += " "
        self.lines[-1] += words
        if data[-1:].isspace():
            self.lines[-1] += " "


def html_text(markup: str) -> str:
    """
    The plain text of HTML mail, for quoting it in a reply or a forward:
    a line per paragraph, list item ("- ") or row, C{<br>} as a line
    break, a link's http(s) address after its words, nothing of what
    L{sanitize_html} drops with its content (scripts, styles, ...).
    """
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [line.rstrip() for line in parser.lines]
    text = "\n".join(lines).strip("\n")
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text
