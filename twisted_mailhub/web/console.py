# -*- test-case-name: tests.test_web_console -*-
"""
The live teaching console: every session on the hub's listeners, updating
live, and each session's lines streamed with one-line explanations.

It reads the hub's session-event bus (C{hub.events}, L{twisted_mailhub.
transcript}) and nothing else. A browser watches over a WebSocket
(C{/console/live}, RFC 6455, L{twisted.web.websocket}); while nobody
watches, the console costs nothing but the bus's deque appends.

Who sees what (L{can_see}): a teacher (C{--teacher}) sees every session.
Any other account (a student) sees
 - the sessions that logged in as it, from wherever they came; and
 - the sessions that have not logged in (an SMTP session typed by hand
   with nc or telnet, a POP3 or FTP session before its USER/PASS) from
   the address its browser comes from: that is how one finds one's own
   typed session.
A session that logged in as another account is never shown to a student,
even from the same address (a class behind one NAT address, or everyone
on one machine): its lines are that account's mail. When an anonymous
session logs in as another account, it leaves the student's list and an
open page of it stops, at once (a C{hidden} update on the live socket).
Behind a shared address, students still see each other's anonymous
sessions (nothing in them is an account's mail: the SMTP envelope and a
summary of the message, secrets masked).

Pages:
 - C{/console}: the session list.
 - C{/console/session/ID}: one session, its lines and their meaning.
 - C{/console/session/ID/transcript.txt}, C{.../transcript.md}: exports.
 - C{/console/live}: the WebSocket (C{?session=ID&after=SEQ} for one session).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote, quote_plus

from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.template import tags

from twisted_mailhub.clientkey import client_key
from twisted_mailhub.web.errors import Refused
from twisted_mailhub.web.explain import FAMILY, explain
from twisted_mailhub.web.message import visible
from twisted_mailhub.web.pages import render_page
from twisted_mailhub.web.site import client_host, form_value, number_value, redirect

log = Logger()

# Explanations of the events that are not protocol lines.
EVENT_NOTES = {
    "start": {"text": "a TCP connection opened: client address:port -> server address:port", "ref": "RFC 9293 §3.5", "url": "https://www.rfc-editor.org/rfc/rfc9293#section-3.5"},
    "tls": {"text": "the TLS handshake is done: everything from here on is encrypted on the wire (shown here decrypted)", "ref": "RFC 8446 §2", "url": "https://www.rfc-editor.org/rfc/rfc8446#section-2"},
    "login": {"text": "the session is now logged in as this account", "ref": "RFC 4422 §3", "url": "https://www.rfc-editor.org/rfc/rfc4422#section-3"},
    "data": {"text": "an FTP data connection: separate from the control connection, one per transfer (active: the server connects from port L-1; passive: the client connects to the port the server gave)", "ref": "RFC 959 §3.2", "url": "https://www.rfc-editor.org/rfc/rfc959#section-3.2"},
    "end": {"text": "the TCP connection closed", "ref": "RFC 9293 §3.6", "url": "https://www.rfc-editor.org/rfc/rfc9293#section-3.6"},
}
# What ends an SMTP message depends on what the 354 asked for (the hub
# says so in it): in a session whose commands end in CRLF only CR LF "."
# CR LF does, and a "." line ending in a bare LF is message text (RFC 5321
# §4.1.1.4; the SMTP smuggling rule, CVE-2023-51764); in a session typed
# with bare LF (nc without -C) a line of "." ends it, however it ends.
DATA_SUMMARY_CRLF = {
    "text": "the message itself (headers, blank line, body), summarized here; it ends at a line of only '.' sent with CR LF, as the 354 asked "
    "(<CR><LF>.<CR><LF>): a '.' line that ends in a bare LF is message text here, and the message goes on",
    "ref": "RFC 5321 §4.1.1.4",
    "url": "https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4",
}
DATA_SUMMARY_BARE_LF = {
    "text": "the message itself (headers, blank line, body), summarized here; a line of only '.' ends it, with or without its CR: this session "
    "was typed with bare LF line ends (nc without -C), and the 354 said so",
    "ref": "RFC 5321 §4.1.1.4",
    "url": "https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4",
}
DATA_SUMMARY = {
    "text": "the message itself (headers, blank line, body), summarized here; it ends at a line of only '.' (<CR><LF>.<CR><LF>)",
    "ref": "RFC 5321 §4.1.1.4",
    "url": "https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4",
}
# What Answering gives for a message summary (the "command" of a C event
# "[message: ...]"): what the 354 before it asked for.
MESSAGE_AFTER_CRLF_354 = "[message after 354 <CR><LF>.<CR><LF>]"
MESSAGE_AFTER_LF_354 = "[message after 354 a line holding only a dot]"
# A POP3 RETR or TOP answer, summarised the same way by the transcript.
RETR_SUMMARY = {"text": "the message itself (headers, blank line, body), byte-stuffed, summarized here; a line with a lone '.' ends it", "ref": "RFC 1939 §3", "url": "https://www.rfc-editor.org/rfc/rfc1939#section-3"}

# What makes a session's row in the list change.
_LIST_KINDS = frozenset({"start", "login", "tls", "end"})
SHOWN_SESSIONS = 300
# The close code of a console socket whose browser session ended (RFC 6455
# §7.4.2: 4000-4999 are for applications).
SIGNED_OUT = 4001
FLUSH_SECONDS = 0.1


def event_explanation(record: Any, kind: str, text: str, command: str | None = None) -> dict[str, str] | None:
    """The explanation of one event of C{record}, or L{None}; C{command}: the client's last line before it."""
    if kind in EVENT_NOTES:
        return EVENT_NOTES[kind]
    if kind == "C" and text.startswith("[message:"):
        if command == MESSAGE_AFTER_CRLF_354:
            return DATA_SUMMARY_CRLF
        if command == MESSAGE_AFTER_LF_354:
            return DATA_SUMMARY_BARE_LF
        return DATA_SUMMARY
    if kind == "S" and text.startswith("[message:"):
        return RETR_SUMMARY
    if kind == "C" and command == IDLING:
        return IDLING_NOTE
    return explain(record.protocol, kind, text, command)


# How far back the command a reply answers is looked for (a reply of many
# lines, an FTP transfer's events): further, it is explained without it.
COMMAND_LOOKBACK = 200

# What Answering gives for the server's first line, said before any client
# line: the greeting (RFC 5321 §4.2, RFC 1939 §4, RFC 3501 §7.1, RFC 959 §5.4).
GREETING = "[greeting]"
# What Answering gives for an IMAP client line sent while IDLE runs that is
# not DONE: the server reads no command then (RFC 2177 §3).
IDLING = "[idling]"
IDLING_NOTE = {
    "text": "while IDLE runs the server reads only DONE: this line is no command (it answers * BAD and goes on idling); send DONE first",
    "ref": "RFC 2177 §3",
    "url": "https://www.rfc-editor.org/rfc/rfc2177#section-3",
}
_LOOK = object()


class Answering:
    """
    Which client line each server line answers, for the explanations
    (L{explain.explain}'s C{command}): SMTP and FTP answer every command
    once and in order (RFC 5321 §4.2, RFC 959 §4.2), also when the client
    pipelines them (RFC 2920), with a reply of one or more lines
    (C{250-...} continues, C{250 ...} ends it); an FTP C{1yz} reply is
    preliminary: the command's final reply follows. In IMAP a client line
    sent while IDLE runs that is not DONE gets L{IDLING} (it is no command,
    RFC 2177 §3). Fed a session's events in order; other lines get no
    context (None), but a server's first line is its L{GREETING}.
    """

    def __init__(self, protocol: str):
        self.paired = FAMILY.get(protocol) in ("smtp", "ftp")
        self.imap = FAMILY.get(protocol) == "imap"
        # IMAP: the tag of the IDLE command running, with its space ("": none).
        self.idle_tag = ""
        self.waiting: list[str] = []
        # Whether a line was said yet: a server line before any is the
        # greeting (L{GREETING}), which answers no command.
        self.spoken = False
        # SMTP: what the last 354 asked the message to end with (one of
        # MESSAGE_AFTER_*_354), for the message summary that follows.
        self.go_ahead: str | None = None

    def feed(self, event: tuple) -> str | None:
        """The command C{event} (a reply line) answers (L{GREETING}: none, it is the greeting), or None; and remember it if it is a command."""
        kind, text = event[2], event[3]
        if not self.spoken and kind in ("C", "S"):
            self.spoken = True
            if kind == "S":
                return GREETING
        if self.imap:
            return self._imap(kind, text)
        if not self.paired:
            return None
        if kind == "C":
            if text.startswith("[message:") and self.go_ahead is not None:
                go_ahead, self.go_ahead = self.go_ahead, None
                if len(self.waiting) < COMMAND_LOOKBACK:
                    self.waiting.append(text)
                return go_ahead
            if text == "." and self.waiting and self.waiting[-1].startswith("[message"):
                # The line that ends a message: with its summary, one thing
                # the server answers once (not a command of its own, which
                # would pair every later reply with the command before it).
                return None
            if len(self.waiting) < COMMAND_LOOKBACK:
                self.waiting.append(text)
            return None
        if kind != "S" or not self.waiting:
            return None
        if text.startswith("354 "):
            self.go_ahead = MESSAGE_AFTER_CRLF_354 if "<CR><LF>.<CR><LF>" in text else MESSAGE_AFTER_LF_354
        command = self.waiting[0]
        final = len(text) < 4 or text[3] != "-"
        if final and not text.startswith("1"):
            self.waiting.pop(0)
        return command

    def _imap(self, kind: str, text: str) -> str | None:
        """IMAP: L{IDLING} for a client line while IDLE runs that is not DONE (RFC 2177 §3); else None."""
        if kind == "C":
            if self.idle_tag:
                if text.strip().upper() == "DONE":
                    return None
                return IDLING
            words = text.split()
            if len(words) == 2 and words[1].upper() == "IDLE":
                self.idle_tag = words[0] + " "
        elif kind == "S" and self.idle_tag and text.startswith(self.idle_tag):
            self.idle_tag = ""  # its tagged answer: IDLE is over (DONE, or refused)
        return None

    @classmethod
    def before(cls, record: Any, seq: int) -> "Answering":
        """The state after C{record}'s kept events before C{seq} (at most L{COMMAND_LOOKBACK} of them)."""
        state = cls(record.protocol)
        events = list(record.events)
        # (Lines dropped from the record's start were said: the greeting among them.)
        state.spoken = record.dropped > 0 or any(e[0] < seq and e[2] in ("C", "S") for e in events)
        if state.paired or state.imap:
            earlier = [e for e in events if e[0] < seq][-COMMAND_LOOKBACK:]
            for event in earlier:
                state.feed(event)
        return state


def event_dicts(record: Any, events: list, answering: Answering | None = None) -> list[dict[str, Any]]:
    """
    L{event_dict} of each of C{events} (in order), each reply explained
    with the command it answers; C{answering}: the state before the first
    (made from C{record} when not given), fed these events.
    """
    if answering is None:
        answering = Answering.before(record, events[0][0]) if events else Answering(record.protocol)
    return [event_dict(record, event, answering.feed(event)) for event in events]


_QUEUED = re.compile(r"^250 .*queued as ([A-Za-z0-9._-]+)")


def stored_message_link(record: Any, kind: str, text: str) -> dict[str, str] | None:
    """
    For the reply that accepted a message (C{250 ... queued as QID}): a
    link that finds it, by the queue id in its C{Received:} field, in the
    viewer's own INBOX (where its anatomy is one click away). Only the
    viewer's own mail: a teacher sees sessions, not other people's mail.
    """
    if kind != "S" or FAMILY.get(record.protocol, record.protocol) != "smtp":
        return None
    m = _QUEUED.match(text)
    if m is None:
        return None
    query = f'HEADER Received "id {m.group(1)}"'
    return {"text": "find this message in your INBOX (and its anatomy)", "url": "/mail/INBOX?q=" + quote_plus(query)}


def record_next_seq(record: Any) -> int:
    """The seq the next event of C{record} will have."""
    events = record.events
    return events[-1][0] + 1 if events else 0


def event_dict(record: Any, event: tuple, command: Any = _LOOK) -> dict[str, Any]:
    """
    One event as the console shows it: C{seq}, C{offset} (seconds since
    the session began), C{kind}, C{text} (controls shown visibly) and
    C{explain}; C{command}: the client's last line before it (looked up in
    C{record} when not given).
    """
    seq, when, kind, text = event
    if command is _LOOK:
        command = Answering.before(record, seq).feed(event)
    found = {
        "seq": seq,
        "offset": round(when - record.started, 3),
        "kind": kind,
        # Control bytes are \x1b already (transcript.line_text); C1 controls
        # and bidirectional formatting characters shown too, never applied.
        "text": visible(text),
        "explain": event_explanation(record, kind, text, command),
    }
    link = stored_message_link(record, kind, text)
    if link is not None:
        found["link"] = link
    return found


def can_see(user: Any, browser_address: str, record: Any) -> bool:
    """
    May C{user} (browsing from C{browser_address}) see session C{record}?
    A teacher: every session. Anyone else: the sessions logged in as
    itself, and the sessions not logged in (yet) from C{browser_address}
    (the same client: for IPv6 the same /64, L{client_key}); never one logged in as another account (the module's "Who sees what").
    """
    if user is None:
        return False
    if user.is_teacher:
        return True
    if record.account:
        return record.account.lower() == user.address.lower()
    # One client: an IPv6 host is its /64 (clientkey.py), whose temporary
    # addresses a browser and a terminal pick apart.
    return client_key(record.client[0]) == client_key(browser_address)


def _client_words(browser_address: str) -> str:
    """C{address 192.0.2.7}, or for IPv6 C{network 2001:db8:1:2::/64 (your address 2001:db8:1:2::7)}."""
    key = client_key(browser_address)
    if key == browser_address:
        return f"address {browser_address}"
    return f"network {key} (your address {browser_address})"


def session_url(record_id: str) -> str:
    return "/console/session/" + quote(record_id, safe="")


def _when(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def _session_row(record: Any):
    s = record.summary()
    return tags.tr(
        tags.td(tags.a(s["id"], href=session_url(s["id"]))),
        tags.td(s["protocol"]),
        tags.td(s["client"]),
        tags.td(s["account"] or "-"),
        tags.td(s["tls"] or "no"),
        tags.td(_when(s["started"])),
        tags.td(f"{s['duration']:.1f} s"),
        tags.td(s["state"]),
        **{"data-id": s["id"], "class": s["state"]},
    )


class Console(resource.Resource):
    """C{/console} and its children."""

    def __init__(self, face: Any):
        resource.Resource.__init__(self)
        self.face = face
        self.live = LiveSocket(face)

    def getChild(self, path, request):
        if path == b"live":
            return self.live
        if path == b"session" and request.postpath:
            record_id = request.postpath.pop(0).decode("utf-8", "replace")
            request.prepath.append(record_id.encode("utf-8"))
            export = request.postpath.pop(0).decode("utf-8", "replace") if request.postpath else ""
            return SessionPage(self.face, record_id, export)
        if path == b"":
            return self
        return resource.NoResource("No such page.")

    def render_GET(self, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            return redirect(request, "/login?next=/console")
        browser = client_host(request)
        records = [r for r in self.face.hub.events.sessions() if can_see(session.user, browser, r)]
        records = records[-SHOWN_SESSIONS:][::-1]
        scope = (
            "every session on the hub (you are a teacher)" if session.user.is_teacher
            else f"your sessions: those logged in as {session.user.address}, and those from your {_client_words(browser)} that have not logged in (typed by hand, say with nc); a session that logs in as another account leaves this list"
        )
        content = [
            tags.p("Live: ", scope, ". New sessions appear at the top as they start; open one to watch its lines with their meaning.", class_="lead"),
            tags.table(
                tags.thead(tags.tr(*(tags.th(h) for h in ("session", "protocol", "client", "account", "TLS", "started", "duration", "state")))),
                tags.tbody(*(_session_row(r) for r in records), id="sessions"),
                class_="sessions",
            ),
        ]
        return render_page(request, "Console", content, session, scripts=["console.js"], data={"page": "console"})


class SessionPage(resource.Resource):
    """One session: its lines, explained; or its export as text or Markdown."""

    isLeaf = True

    def __init__(self, face: Any, record_id: str, export: str):
        resource.Resource.__init__(self)
        self.face = face
        self.record_id = record_id
        self.export = export

    def render_GET(self, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            return redirect(request, "/login?next=/console")
        record = self.face.hub.events.get(self.record_id)
        if record is None or not can_see(session.user, client_host(request), record):
            # The same answer for "gone" and "not yours": nothing to learn.
            raise Refused(404, "No such session, or it is not one of yours (the console keeps the most recent sessions).", back="/console")
        if self.export == "transcript.txt":
            return self._export(request, record, transcript_text(record), "text/plain", "txt")
        if self.export == "transcript.md":
            return self._export(request, record, transcript_markdown(record), "text/markdown", "md")
        if self.export:
            raise Refused(404, "There is no page at this address: a session's exports are transcript.txt and transcript.md.", back=session_url(record.id))
        events = event_dicts(record, list(record.events))
        s = record.summary()
        facts = tags.dl(
            tags.dt("protocol"), tags.dd(s["protocol"]),
            tags.dt("client"), tags.dd(s["client"]),
            tags.dt("server"), tags.dd(s["server"]),
            tags.dt("account"), tags.dd(s["account"] or "-", id="account"),
            tags.dt("TLS"), tags.dd(s["tls"] or "no", id="tls"),
            tags.dt("state"), tags.dd(s["state"], id="state"),
            class_="facts",
        )
        note = tags.p(f"{record.dropped} older lines are no longer kept.", class_="note") if record.dropped else ""
        content = [
            facts,
            tags.p(
                tags.a("export as text", href=session_url(record.id) + "/transcript.txt"), " · ",
                tags.a("export as Markdown", href=session_url(record.id) + "/transcript.md"), " · ",
                tags.a("all sessions", href="/console"),
            ),
            note,
            tags.table(
                tags.thead(tags.tr(tags.th("time"), tags.th(""), tags.th("line"), tags.th("meaning"))),
                tags.tbody(*(event_row(e) for e in events), id="lines"),
                class_="lines",
            ),
        ]
        last = events[-1]["seq"] if events else 0
        return render_page(
            request, f"Session {record.id}", content, session,
            scripts=["session.js"], data={"page": "session", "session": record.id, "after": str(last)},
        )

    def _export(self, request, record, text: str, mime: str, ext: str) -> bytes:
        request.setHeader(b"content-type", f"{mime}; charset=utf-8".encode("ascii"))
        name = record.id.replace("#", "-")
        request.setHeader(b"content-disposition", f'attachment; filename="{name}.{ext}"'.encode("ascii"))
        return text.encode("utf-8")


_KIND_LABEL = {"C": "C:", "S": "S:", "start": "--", "end": "--", "tls": "TLS", "login": "auth", "data": "data"}


def event_row(e: dict[str, Any]):
    meaning = ""
    if e["explain"]:
        meaning = [e["explain"]["text"], " (", tags.a(e["explain"]["ref"], href=e["explain"]["url"], rel="noreferrer", target="_blank"), ")"]
    if e.get("link"):
        meaning = [meaning, " ", tags.a(e["link"]["text"], href=e["link"]["url"], class_="stored")]
    return tags.tr(
        tags.td(f"+{e['offset']:.3f}s", class_="t"),
        tags.td(_KIND_LABEL.get(e["kind"], e["kind"]), class_="k"),
        tags.td(tags.code(e["text"]), class_="l"),
        tags.td(meaning, class_="m"),
        **{"class": "ev " + e["kind"], "data-seq": str(e["seq"])},
    )


def _heading(record: Any) -> list[str]:
    s = record.summary()
    return [
        f"Session {s['id']} ({s['protocol']})",
        f"client {s['client']} -> server {s['server']}",
        f"account: {s['account'] or '-'}; TLS: {s['tls'] or 'no'}; started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['started']))}; {s['duration']:.3f} s; {s['state']}",
        "Secrets are masked (****).",
    ]


def transcript_text(record: Any) -> str:
    """The session as annotated plain text (for handouts)."""
    out = _heading(record) + [""]
    for e in event_dicts(record, list(record.events)):
        line = f"+{e['offset']:8.3f}s {_KIND_LABEL.get(e['kind'], e['kind']):4} {e['text']}"
        if e["explain"]:
            line += f"\n{'':15}# {e['explain']['text']} ({e['explain']['ref']})"
        out.append(line)
    return "\n".join(out) + "\n"


def _md_cell(text: str, code: bool = False) -> str:
    # In a code span, text is literal (only a pipe must be escaped in a
    # table); elsewhere markup characters are escaped.
    text = text.replace("|", "\\|").replace("`", "'")
    if not code:
        text = text.replace("<", "&lt;").replace("*", "\\*").replace("_", "\\_")
    return text


def transcript_markdown(record: Any) -> str:
    """The session as a Markdown table (for handouts)."""
    head = _heading(record)
    out = [f"# {_md_cell(head[0])}", ""] + [f"- {_md_cell(h)}" for h in head[1:]] + ["", "| time | | line | meaning |", "|---:|---|---|---|"]
    for e in event_dicts(record, list(record.events)):
        meaning = ""
        if e["explain"]:
            meaning = f"{_md_cell(e['explain']['text'])} ([{e['explain']['ref']}]({e['explain']['url']}))"
        line = f"`{_md_cell(e['text'], code=True)}`" if e["text"] else ""
        out.append(f"| +{e['offset']:.3f}s | {_KIND_LABEL.get(e['kind'], e['kind'])} | {line} | {meaning} |")
    return "\n".join(out) + "\n"


#: The largest ?after= of the live socket: an event number of 63 bits.
AFTER_MOST = 2**63 - 1


class LiveSocket(resource.Resource):
    """
    C{/console/live}: the WebSocket. Only a signed-in browser of this very
    site may open it (the cookie, and an C{Origin} naming this host, against
    cross-site WebSocket hijacking).
    """

    isLeaf = True

    def __init__(self, face: Any):
        resource.Resource.__init__(self)
        self.face = face
        self._websocket: Any = None

    @property
    def websocket(self) -> Any:
        """
        The WebSocket upgrade (L{twisted.web.websocket}), made at the first
        watcher: a hub whose console nobody opens does not hold wsproto and
        h11 (about 4 MB).
        """
        if self._websocket is None:
            from twisted.web.websocket import WebSocketResource

            self._websocket = WebSocketResource(self)
        return self._websocket

    def render_GET(self, request):
        user = self.face.user(request)
        if user is None or not _same_origin(request):
            raise Refused(403, "The live console's socket is for a signed-in page of this site: log in and open /console.")
        # ?after=SEQ: the last event the page has (a number past every
        # event replays nothing; one that is no number is a 400, not 0,
        # which replayed the whole session).
        request.mailhub_after = number_value(request, "after", 0, 0, AFTER_MOST)
        return self.websocket.render_GET(request)

    def buildProtocol(self, request):
        """WebSocketServerFactory: one watcher per socket."""
        channel = request.channel
        channel.setTimeout(None)
        # The channel's own connectionLost (with the hub's connection
        # counting) is replaced by the upgrade; keep calling it.
        channel_lost = channel.connectionLost
        watcher = ConsoleWatcher(
            self.face.hub,
            self.face.user(request),
            client_host(request),
            form_value(request, "session") or None,
            getattr(request, "mailhub_after", 0),
            channel_lost,
        )
        watcher.channel = channel
        # Logging out (or the session's end) ends what it watches, at once.
        web_session = self.face.session(request)
        if web_session is not None:
            web_session.on_end.append(watcher.signed_out)
            watcher.web_session = web_session
        return watcher


def _update_session(update: dict[str, Any]) -> str:
    """The id of the session an update of the live socket is about."""
    about = update.get("session")
    return about.get("id", "") if isinstance(about, dict) else (about or update.get("id", ""))


def _same_origin(request: Any) -> bool:
    origin = request.getHeader(b"origin")
    if origin is None:
        return True  # not a browser: no cookie theft to stop
    host = request.getHeader(b"host") or b""
    return origin.split(b"://", 1)[-1] == host


# Octets a browser may send on a live console socket in all (it needs a
# close frame and pongs: the console reads nothing from it).
MAX_CLIENT_OCTETS = 1024 * 1024


class ConsoleWatcher:
    """
    One browser watching: the session list, or one session's lines. Sends
    JSON arrays of updates, at most every L{FLUSH_SECONDS}.
    """

    def __init__(self, hub: Any, user: Any, browser: str, session_id: str | None, after: int, channel_lost: Any):
        self.hub = hub
        self.user = user
        self.browser = browser
        self.session_id = session_id
        self.after = after
        self.channel_lost = channel_lost
        self.transport = None
        self.pending: list[dict[str, Any]] = []
        self.timer = None
        self.answering: Answering | None = None  # (one session's lines: which command each reply answers)

    # WebSocketProtocol
    def negotiationStarted(self, transport):
        self.transport = transport

    def negotiationFinished(self):
        self._bound_input()
        events = self.hub.events
        events.subscribe(self.event, session=self.session_id, lines=self.session_id is not None)
        if self.session_id is not None:
            record = events.get(self.session_id)
            if record is not None and can_see(self.user, self.browser, record):
                shown = [e for e in list(record.events) if e[0] > self.after]
                self.answering = Answering.before(record, shown[0][0] if shown else record_next_seq(record))
                for found in event_dicts(record, shown, self.answering):
                    self.pending.append({"type": "event", "session": record.id, **found})
                self.pending.append({"type": "session", "session": record.summary()})
        self._schedule()

    def _bound_input(self) -> None:
        """
        The console only sends; a browser's frames are a close and pongs.
        Twisted reassembles a message without limit, so a signed-in client
        sending one endless message grew the hub's memory without end: past
        L{MAX_CLIENT_OCTETS} in all, the connection is dropped. (The channel
        hands the socket's data to the WebSocket through its C{dataReceived},
        which Twisted's upgrade set: it is wrapped here.)
        """
        channel = getattr(self, "channel", None)
        if channel is None:
            return
        received = channel.dataReceived
        left = [MAX_CLIENT_OCTETS]

        def bounded(data: bytes) -> None:
            left[0] -= len(data)
            if left[0] < 0:
                log.warn("console: {user} sent over {n} octets on the live socket, which takes none: closed", user=getattr(self.user, "address", "?"), n=MAX_CLIENT_OCTETS)
                channel.transport.abortConnection()
                return
            received(data)

        channel.dataReceived = bounded

    def textMessageReceived(self, message):
        pass

    def bytesMessageReceived(self, data):
        pass

    def pongReceived(self, payload):
        pass

    web_session: Any = None

    def signed_out(self) -> None:
        """
        The browser session this socket belongs to has ended (logout, or
        idle): nothing more is sent; the socket closes with L{SIGNED_OUT}
        (the page then says so and does not reconnect).
        """
        self.hub.events.unsubscribe(self.event)
        self.pending = []
        if self.transport is not None:
            self.transport.loseConnection(SIGNED_OUT, "signed out")

    def connectionLost(self, reason):
        if self.web_session is not None and self.signed_out in self.web_session.on_end:
            self.web_session.on_end.remove(self.signed_out)
        self.hub.events.unsubscribe(self.event)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.transport = None
        lost, self.channel_lost = self.channel_lost, None
        if lost is not None:
            try:
                lost(reason)
            except Exception:
                pass

    # the bus
    def event(self, record: Any, event: tuple) -> None:
        kind = event[2]
        if self.session_id is not None and record.id != self.session_id:
            return
        if not can_see(self.user, self.browser, record):
            if kind == "login" and record.client[0] == self.browser:
                # An anonymous session from this browser's address (shown
                # until now) logged in as another account: it leaves this
                # browser at once, with what was not sent yet of it.
                self.pending = [u for u in self.pending if _update_session(u) != record.id]
                self.pending.append({"type": "hidden", "id": record.id})
                self._schedule()
            return
        if self.session_id is None:
            if kind not in _LIST_KINDS:
                return
            self.pending.append({"type": "session", "session": record.summary()})
        else:
            if self.answering is None:
                self.answering = Answering.before(record, event[0])
            self.pending.append({"type": "event", "session": record.id, **event_dict(record, event, self.answering.feed(event))})
            if kind in _LIST_KINDS:
                self.pending.append({"type": "session", "session": record.summary()})
        self._schedule()

    def _schedule(self) -> None:
        if self.timer is None and self.pending and self.transport is not None:
            self.timer = self.hub.reactor.callLater(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        self.timer = None
        if self.web_session is not None and self.hub.web.sessions.get(self.web_session.sid) is None:
            return  # (idle too long: ended, and this socket with it; else watching is activity: touched)
        pending, self.pending = self.pending, []
        if pending and self.transport is not None:
            self.transport.sendTextMessage(json.dumps(pending))


def install(face: Any) -> None:
    face.pages["console"] = Console(face)
