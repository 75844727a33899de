# -*- test-case-name: tests.test_e2e_imap_notify -*-
"""
NOTIFY (RFC 5465): the client says which mailboxes it cares about and
which events; the server tells it as they happen, without IDLE and
without polling.

Rules:

 - C{NOTIFY SET [STATUS] (filter events) ...} replaces what was set before;
   C{NOTIFY NONE} ends it. Filters: SELECTED, SELECTED-DELAYED, INBOXES
   (INBOX: the only mailbox mail is delivered to), PERSONAL (every
   mailbox), SUBSCRIBED, SUBTREE (mailboxes and everything below them),
   MAILBOXES (exactly these). A mailbox takes the events of the first
   filter that covers it. Events: MessageNew [(fetch-att ...)],
   MessageExpunge, FlagChange, MailboxName, SubscriptionChange, or NONE.
 - BAD (RFC 5465 §5, §6.1): MessageNew without MessageExpunge or the other
   way round; FlagChange without both; mailbox events, or two of them,
   with SELECTED/SELECTED-DELAYED; fetch attributes anywhere but after
   MessageNew of a selected filter; an empty event or mailbox list; SET
   without a filter. AnnotationChange, MailboxMetadataChange and
   ServerMetadataChange (no METADATA or ANNOTATE here) and unknown events
   get C{NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName
   SubscriptionChange)]}.
 - The selected mailbox, under SELECTED: its EXISTS, EXPUNGE (VANISHED)
   and FETCH (FLAGS) come at once when no command is running, as during
   IDLE; under SELECTED-DELAYED, EXPUNGE waits for a command that may
   carry it (RFC 5465 §5.1). MessageNew's fetch attributes are sent as a
   FETCH of each new message after its EXISTS (never setting \\Seen).
   A message costly to take apart (thousands of MIME parts, over 1 MiB:
   L{twisted_mailhub.imap.fetch.costly_to_parse}) is parsed in a parsing
   thread, as FETCH's are: meanwhile the session reads no command and
   writes nothing of the selected mailbox (its sequence numbers stay
   what that FETCH says), and every other client is served.
   Without a selected filter the selected mailbox is told as in IMAP4rev1
   (before tagged replies, and during IDLE).
 - Other mailboxes: new and expunged messages as C{* STATUS name
   (MESSAGES n UIDNEXT n UNSEEN n)}, flag changes as C{(UNSEEN n)}, with
   HIGHESTMODSEQ for a CONDSTORE session (what Dovecot sends). STATUS in
   SET first sends that for each such mailbox (UIDVALIDITY too). A
   mailbox whose UID list was made again at this load (lost or damaged)
   is told only once the list is durable (its folder's C{unsettled()}):
   SET STATUS then answers OK after that notice, input held meanwhile.
 - MailboxName: C{* LIST () "/" name} for a new mailbox, C{* LIST
   (\\NonExistent) "/" name} for a deleted one and C{* LIST () "/" new
   ("OLDNAME" (old))} for a renamed one, each inferior included (RFC 5465
   §5.4): a name that left the list and one that joined it with the same
   identity (the store's C{folder_identity}: a Maildir folder's directory
   inode) are one rename, whoever made it. SubscriptionChange: C{* LIST
   (\\Subscribed) "/" name} or C{* LIST () "/" name}.
 - Where the notices come from: the store's folder listeners
   (L{IFolder.add_listener}) for messages, at once for changes made in
   this process; for the rest (other C{--workers} processes, the web
   face, mail dropped into a Maildir, a folder renamed with C{mv}) the
   store's change signal (L{twisted_mailhub.store.watch}: inotify on the
   account's directory and each watched folder's C{new/} and C{cur/}),
   or the store's push (memory: everything; PostgreSQL: the selected
   mailbox deleted or renamed), and where there is none (PostgreSQL's
   mailbox list, not Linux) a look every
   L{POLL} seconds at the mailbox list, the subscriptions and each
   watched folder (C{refresh}, two stat calls).
 - Notices are written when no command is running; otherwise they wait
   for the next place untagged responses may go (before a tagged reply).
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from twisted_mailhub.imap.condstore import has_modseqs
from twisted_mailhub.imap.wire import client_text, mailbox_name, shown, wire_name
from twisted_mailhub.store.base import DELIMITER
from twisted_mailhub.store.interfaces import INBOX, SEEN, NoSuchFolder, StoreError
from twisted_mailhub.store.watch import ChangeSignal, account_paths, change_signal, folder_paths

log = Logger()

CAPABILITIES = (b"NOTIFY",)
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_KNOWN = {name.upper(): name for name in SUPPORTED + ("AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")}
_MESSAGE_EVENTS = {"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"}
_SELECTED = (b"SELECTED", b"SELECTED-DELAYED")
_FILTERS = _SELECTED + (b"INBOXES", b"PERSONAL", b"SUBSCRIBED", b"SUBTREE", b"MAILBOXES")
POLL = 0.5  # seconds between looks at what the listeners cannot see, where nothing signals a change
SUBSCRIPTIONS = b"subscriptions"  # the Maildir++ account's subscriptions file (store/maildir.py)


def _account_entry(name: bytes) -> bool:
    """Does a change of this entry of the account's directory change the mailbox list or the subscriptions?"""
    return name.startswith(b".") or name.startswith(SUBSCRIPTIONS)


class NotifyError(Exception):
    """A NOTIFY command refused: C{state} is b"BAD" or b"NO", C{text} the reason."""

    def __init__(self, state: bytes, text: bytes):
        Exception.__init__(self, text)
        self.state = state
        self.text = text


def _bad(text: str) -> NotifyError:
    return NotifyError(b"BAD", client_text(text))


class EventGroup:
    """
    One C{(filter events)} of NOTIFY SET: C{kind} is the filter in lower
    case, C{names} its mailboxes (SUBTREE, MAILBOXES), C{events} the event
    names, C{fetch} MessageNew's fetch attributes (bytes, or None).
    """

    def __init__(self, kind: str, names: list[str], events: frozenset, fetch: bytes | None):
        self.kind = kind
        self.names = names
        self.events = events
        self.fetch = fetch

    @property
    def selected(self) -> bool:
        return self.kind in ("selected", "selected-delayed")

    def covers(self, name: str, subscriptions: set[str]) -> bool:
        """Does this (non-selected) filter name mailbox C{name}?"""
        if self.kind == "personal":
            return True
        if self.kind == "inboxes":
            return name == INBOX
        if self.kind == "subscribed":
            return name in subscriptions
        if self.kind == "mailboxes":
            return name in self.names
        if self.kind == "subtree":
            return any(name == top or name.startswith(top + DELIMITER) for top in self.names)
        return False


# Fetch attributes that take a section (RFC 9051 §6.4.5): the list
# Twisted's parser makes of "[...]" right after one is that section.
_SECTIONED = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


def _fetch_text(items: list) -> bytes:
    """
    A parsed fetch-att list back as the text FETCH takes: C{(UID FLAGS
    BODY.PEEK[HEADER])}. Twisted's C{parseNestedParens} makes a list of
    a section's brackets as of parentheses (C{BODY.PEEK[]} is
    C{b"BODY.PEEK", []}); one right after a word that takes a section is
    put back in brackets, with its partial (C{<0.100>}), so MessageNew's
    C{(UID BODY.PEEK[])} is fetched as it was sent, not refused.
    """
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, list):
            inner = _fetch_text(item)[1:-1]
            if parts and parts[-1].upper() in _SECTIONED:
                parts[-1] += b"[" + inner + b"]"
                continue
            parts.append(b"(" + inner + b")")
        elif isinstance(item, bytes):
            if item.startswith(b"<") and parts and parts[-1].endswith(b"]"):
                parts[-1] += item
                continue
            parts.append(item)
        else:
            raise _bad("bad fetch attribute after MessageNew")
    return b"(" + b" ".join(parts) + b")"


def parse_notify(tokens: list) -> tuple[list[EventGroup], bool] | None:
    """
    The parsed words of a NOTIFY command (after its name): None for
    C{NONE}, else (event groups, whether STATUS was asked for).

    @raise NotifyError: BAD or NO, with the reason (see the module's rules).
    """
    if not tokens or not isinstance(tokens[0], bytes):
        raise _bad("NOTIFY wants SET or NONE")
    verb = tokens[0].upper()
    if verb == b"NONE":
        if len(tokens) != 1:
            raise _bad("nothing may follow NOTIFY NONE")
        return None
    if verb != b"SET":
        raise _bad("NOTIFY wants SET or NONE")
    rest = tokens[1:]
    status = False
    if rest and isinstance(rest[0], bytes) and rest[0].upper() == b"STATUS":
        status = True
        rest = rest[1:]
    if not rest:
        raise _bad("NOTIFY SET wants at least one (filter events) group")
    groups: list[EventGroup] = []
    unsupported = False
    for group in rest:
        if not isinstance(group, list) or len(group) < 2:
            raise _bad("each NOTIFY group is (filter events), e.g. (SELECTED (MessageNew MessageExpunge))")
        kind = group[0].upper() if isinstance(group[0], bytes) else b""
        if kind not in _FILTERS:
            raise _bad("unknown NOTIFY filter: use SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE or MAILBOXES")
        names: list[str] = []
        position = 1
        if kind in (b"SUBTREE", b"MAILBOXES"):
            given = group[1]
            given = given if isinstance(given, list) else [given]
            if not given or not all(isinstance(n, bytes) for n in given):
                raise _bad(kind.decode() + " wants one mailbox or a list of them")
            try:
                names = [mailbox_name(n) for n in given]
            except imap4.IllegalMailboxEncoding:
                raise _bad("mailbox names are modified UTF-7 (RFC 3501 section 5.1.3)") from None
            position = 2
        if len(group) != position + 1:
            raise _bad("each NOTIFY group is (filter [mailboxes] events)")
        events_token = group[position]
        selected = kind in _SELECTED
        if selected and any(g.selected for g in groups):
            raise _bad("only one SELECTED or SELECTED-DELAYED group (RFC 5465 section 6.1)")
        events: set[str] = set()
        fetch = None
        if isinstance(events_token, bytes) and events_token.upper() == b"NONE":
            pass
        elif isinstance(events_token, list) and events_token:
            i = 0
            while i < len(events_token):
                word = events_token[i]
                if not isinstance(word, bytes):
                    raise _bad("fetch attributes go right after MessageNew")
                name = _KNOWN.get(word.decode("ascii", "replace").upper())
                if name is None or name not in SUPPORTED:
                    unsupported = True
                    name = name or word.decode("ascii", "replace")
                if i + 1 < len(events_token) and isinstance(events_token[i + 1], list):
                    if name != "MessageNew" or not selected:
                        raise _bad("fetch attributes are allowed only after MessageNew of SELECTED or SELECTED-DELAYED (RFC 5465 section 5.1)")
                    fetch = _fetch_text(events_token[i + 1])
                    i += 1
                if selected and name in _KNOWN.values() and name not in _MESSAGE_EVENTS:
                    raise _bad(name + " cannot be asked for the selected mailbox (RFC 5465 section 6.1)")
                events.add(name)
                i += 1
        else:
            raise _bad("events are a list, e.g. (MessageNew MessageExpunge), or NONE")
        if ("MessageNew" in events) != ("MessageExpunge" in events):
            raise _bad("MessageNew and MessageExpunge go together (RFC 5465 section 5)")
        if ({"FlagChange", "AnnotationChange"} & events) and "MessageNew" not in events:
            raise _bad("FlagChange needs MessageNew and MessageExpunge (RFC 5465 section 5)")
        groups.append(EventGroup(kind.decode().lower(), names, frozenset(events), fetch))
    if unsupported:
        raise NotifyError(b"NO", b"[BADEVENT (" + b" ".join(e.encode() for e in SUPPORTED) + b")] these events are not available here")
    return groups, status


class Notifier:
    """
    One session's NOTIFY SET: which mailboxes it watches and the notices
    waiting to be written.
    """

    def __init__(self, session: Any, groups: list[EventGroup]):
        self.session = session
        self.groups = groups
        self.selected_group = next((g for g in groups if g.selected), None)
        self.others = [g for g in groups if not g.selected]
        self.account = session._store()
        self.folders = set(self._list_folders())
        self.subscriptions = set(self._list_subscriptions())
        self.watched: dict[str, tuple[Any, Any]] = {}
        self.identities = self._identities(self.folders)
        self.lines: list[bytes] = []  # LIST notices, in order
        self.status: dict[str, set[bytes]] = {}  # mailbox -> STATUS items to send
        # mailbox -> (its UID list's flush, STATUS items held until it fires)
        self.held: dict[str, tuple[defer.Deferred, set[bytes]]] = {}
        self.reactor = session.hub.reactor
        self.signals: dict[str, ChangeSignal] = {}  # watched folder -> its change signal
        self.selected_signal: Any = None  # a ChangeSignal or StoreSignal
        self._watch(initial=True)
        # The mailbox list and the subscriptions: the account's directory
        # (inotify), else a look every POLL seconds at everything.
        # (the memory store pushes: L{twisted_mailhub.store.watch.change_signal})
        self.poller = change_signal(self.reactor, self.account, account_paths(self.account), self.poll, POLL, names=_account_entry)
        self.selection_changed()

    # -- what is watched ------------------------------------------------------------

    def _list_folders(self) -> list[str]:
        try:
            return list(self.account.folders())
        except (StoreError, OSError):
            return list(getattr(self, "folders", ()))

    def _identities(self, names) -> dict[str, Any]:
        """What each folder keeps across a RENAME (the store's C{folder_identity}), where the store can say."""
        many = getattr(self.account, "folder_identities", None)
        if many is not None:
            return many(list(names))  # (PostgreSQL: one query, not one per folder)
        identity = getattr(self.account, "folder_identity", None)
        if identity is None:
            return {}
        found = {}
        for name in names:
            value = identity(name)
            if value is not None:
                found[name] = value
        return found

    def _list_subscriptions(self) -> list[str]:
        try:
            return list(self.account.subscriptions())
        except (StoreError, OSError):
            return list(getattr(self, "subscriptions", ()))

    def group_of(self, name: str) -> EventGroup | None:
        """The first non-selected filter covering mailbox C{name}."""
        for group in self.others:
            if group.covers(name, self.subscriptions):
                return group
        return None

    def message_events(self, name: str) -> frozenset:
        group = self.group_of(name)
        return group.events if group is not None else frozenset()

    def _watch(self, initial: bool = False) -> None:
        """
        Listen to the mailboxes with message events. One found later (made
        since) may have had messages put in before the listener was there:
        its STATUS is sent then.
        """
        wanted = {name for name in self.folders if self.message_events(name) & _MESSAGE_EVENTS}
        for name in list(self.watched):
            if name not in wanted:
                folder, listener = self.watched.pop(name)
                folder.remove_listener(listener)
                signal = self.signals.pop(name, None)
                if signal is not None:
                    signal.stop()
        for name in wanted - set(self.watched):
            try:
                folder = self.account.folder(name)
            except (StoreError, OSError):
                continue

            def listener(change, name=name):
                self.folder_changed(name, change)

            folder.add_listener(listener)
            self.watched[name] = (folder, listener)
            paths = folder_paths(folder)
            if paths:
                # Changes from outside this process: the folder's own
                # directories tell (inotify); refresh() then reaches the
                # listener. Folders with no directories are looked at by
                # poll().
                self.signals[name] = ChangeSignal(self.reactor, paths, lambda folder=folder: self._refresh(folder), POLL)
            if not initial and "MessageNew" in self.message_events(name) and not self._is_selected(name):
                try:
                    if folder.messages():
                        self.status.setdefault(name, set()).update((b"MESSAGES", b"UIDNEXT", b"UNSEEN"))
                except (StoreError, OSError):
                    pass

    def _refresh(self, folder: Any) -> None:
        try:
            folder.refresh()  # what changed arrives through the listener
        except (StoreError, OSError, NoSuchFolder):
            pass  # the mailbox list tells (poll)

    def selection_changed(self) -> None:
        """
        SELECT, EXAMINE, UNSELECT or CLOSE happened: under a SELECTED
        filter the selected mailbox's outside changes are told at once,
        so its directories are watched (or looked at every POLL seconds).
        """
        if self.selected_signal is not None:
            self.selected_signal.stop()
            self.selected_signal = None
        view = self.session.selected
        if self.selected_group is None or view is None:
            return
        self.selected_signal = change_signal(self.reactor, view.folder, folder_paths(view.folder), self._selected_changed, POLL)

    def _selected_changed(self) -> None:
        session = self.session
        if session.selected is None:
            return
        try:
            session.selected.poll()
        except NoSuchFolder:
            return  # told at the next command
        session.notices_arrived()

    def close(self) -> None:
        self.poller.stop()
        if self.selected_signal is not None:
            self.selected_signal.stop()
            self.selected_signal = None
        for signal in self.signals.values():
            signal.stop()
        self.signals.clear()
        for folder, listener in self.watched.values():
            folder.remove_listener(listener)
        self.watched.clear()
        self.lines.clear()
        self.status.clear()

    # -- notices ---------------------------------------------------------------------

    def _is_selected(self, name: str) -> bool:
        view = self.session.selected
        return view is not None and view.folder.name == name

    def folder_changed(self, name: str, change: Any) -> None:
        """A store notice for a watched mailbox other than the selected one."""
        if self._is_selected(name):
            return  # the selected mailbox is told by its view
        events = self.message_events(name)
        items = self.status.setdefault(name, set())
        if (change.added and "MessageNew" in events) or (change.expunged and "MessageExpunge" in events):
            items.update((b"MESSAGES", b"UIDNEXT", b"UNSEEN"))
        if change.flags and "FlagChange" in events:
            items.add(b"UNSEEN")
        if items and getattr(self.session, "condstore", False):
            items.add(b"HIGHESTMODSEQ")
        if not items:
            del self.status[name]
            return
        self.session.notices_arrived()

    def status_all(self) -> None:
        """NOTIFY SET STATUS: the state of every watched mailbox but the selected one."""
        for name in sorted(self.watched):
            if not self._is_selected(name):
                self.status.setdefault(name, set()).update((b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"))
                if getattr(self.session, "condstore", False):
                    self.status[name].add(b"HIGHESTMODSEQ")

    def poll(self) -> None:
        """What the listeners cannot see: the mailbox list, subscriptions, other processes."""
        try:
            self._poll()
        except Exception:
            log.failure("NOTIFY: looking for changes failed")

    def _poll(self) -> None:
        folders = set(self._list_folders())
        if folders != self.folders:
            self._mailbox_names(self.folders, folders)
            self.folders = folders
        subscriptions = set(self._list_subscriptions())
        if subscriptions != self.subscriptions:
            changed = subscriptions ^ self.subscriptions
            before = self.subscriptions
            self.subscriptions = subscriptions
            for name in sorted(changed):
                if "SubscriptionChange" in self.message_events(name) or (
                    name in before and any(g.kind == "subscribed" and "SubscriptionChange" in g.events for g in self.others)
                ):
                    # a name with no mailbox (a RENAME's old one, or only
                    # subscribed) is \NonExistent, as LIST says (RFC 5258 §3)
                    attributes = ([b"\\NonExistent"] if name not in folders else []) + ([b"\\Subscribed"] if name in subscriptions else [])
                    self.lines.append(b"* LIST (" + b" ".join(attributes) + b") " + _delimiter() + b" " + wire_name(name) + b"\r\n")
        self._watch()
        for name, (folder, _) in list(self.watched.items()):
            if name not in self.signals:
                self._refresh(folder)  # no directories to watch: look
        session = self.session
        if self.selected_group is not None and session.selected is not None and (self.selected_signal is None or self.selected_signal.polling):
            try:
                session.selected.poll()
            except NoSuchFolder:
                pass  # told at the next command
        session.notices_arrived()

    def _mailbox_names(self, before: set[str], after: set[str]) -> None:
        """
        MailboxName (RFC 5465 §5.4) for what changed in the mailbox list: a
        mailbox that left one name and appeared under another with the same
        identity (L{_identities}) was renamed, C{* LIST () "/" new
        ("OLDNAME" (old))}; the rest were created or deleted.
        """
        born = sorted(after - before)
        gone = sorted(before - after)
        new_identities = self._identities(born)
        by_identity = {self.identities[name]: name for name in gone if name in self.identities}
        renamed_from = set()
        for name in born:
            old = by_identity.get(new_identities.get(name))
            if old is not None:
                renamed_from.add(old)
                if "MailboxName" in self.message_events(name) or "MailboxName" in self.message_events(old):
                    self.lines.append(b"* LIST () " + _delimiter() + b" " + wire_name(name) + b' ("OLDNAME" (' + wire_name(old) + b"))\r\n")
            elif "MailboxName" in self.message_events(name):
                self.lines.append(b"* LIST () " + _delimiter() + b" " + wire_name(name) + b"\r\n")
        for name in gone:
            if name not in renamed_from and "MailboxName" in self.message_events(name):
                self.lines.append(b"* LIST (\\NonExistent) " + _delimiter() + b" " + wire_name(name) + b"\r\n")
        for name in gone:
            self.identities.pop(name, None)
        self.identities.update(new_identities)

    def take(self) -> list[bytes]:
        """The notices to write now (LIST lines, then one STATUS per mailbox)."""
        out, self.lines = self.lines, []
        pending, self.status = self.status, {}
        for name, items in pending.items():
            line = self._status_line(name, items)
            if line:
                out.append(line)
        return out

    def settling(self) -> defer.Deferred | None:
        """
        None, or a Deferred that fires (never failing) once every mailbox
        whose STATUS L{take} held back (its UID list not durable yet) is
        settled and its notice is waiting again.
        """
        if not self.held:
            return None
        return defer.DeferredList([d for d, _ in self.held.values()], consumeErrors=True)

    def _hold_back(self, name: str, items: set[bytes], flush: defer.Deferred) -> None:
        """
        Keep mailbox C{name}'s STATUS notice until C{flush} (its folder's
        C{unsettled()}) fires: a UIDVALIDITY or UIDNEXT of a UID list made
        again at this load is told only once the list is durable (design
        rule 6, imap/settling.py). A flush that failed drops the notice
        (the account logs the failure; SELECT or STATUS then answer NO).
        """
        if name in self.held:
            self.held[name][1].update(items)
            flush.addErrback(lambda _: None)
            return
        self.held[name] = (flush, set(items))

        def settled(result: Any) -> None:
            _, waiting = self.held.pop(name, (None, set()))
            if isinstance(result, Failure) or self.session.notifier is not self:
                return
            self.status.setdefault(name, set()).update(waiting)
            self.session.notices_arrived()

        flush.addBoth(settled)

    def _status_line(self, name: str, items: set[bytes]) -> bytes:
        try:
            folder = self.account.folder(name)
            unsettled = getattr(folder, "unsettled", None)
            flush = unsettled() if unsettled is not None else None
            if flush is not None:
                self._hold_back(name, items, flush)
                return b""
            infos = folder.messages()
        except (StoreError, OSError):
            return b""
        values = []
        for item in (b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ"):
            if item not in items:
                continue
            if item == b"MESSAGES":
                value = len(infos)
            elif item == b"UIDNEXT":
                value = folder.uid_next
            elif item == b"UIDVALIDITY":
                value = folder.uid_validity
            elif item == b"UNSEEN":
                value = sum(1 for i in infos if SEEN not in i.flags)
            elif has_modseqs(folder):
                value = folder.highest_modseq
            else:
                continue
            values.append(item + b" %d" % value)
        return b"* STATUS " + wire_name(name) + b" (" + b" ".join(values) + b")\r\n"


def _delimiter() -> bytes:
    return b'"' + DELIMITER.encode() + b'"'


class NotifyCommands:
    """NOTIFY, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    notifier: Notifier | None = None

    def do_NOTIFY(self, tag, line):
        try:
            tokens = imap4.parseNestedParens(line or b"")
        except Exception:
            self.sendBadResponse(tag, b"NOTIFY: unbalanced parentheses or quotes in " + client_text(shown(line or b"", 40)))
            return
        try:
            parsed = parse_notify(tokens)
        except NotifyError as e:
            (self.sendBadResponse if e.state == b"BAD" else self.sendNegativeResponse)(tag, e.text)
            return
        self.end_notify()
        if parsed is None:
            self.sendPositiveResponse(tag, b"NOTIFY NONE completed: no more notices")
            return
        groups, status = parsed
        from twisted_mailhub.imap.fetch import parse_fetch_items

        for group in groups:
            if group.fetch is not None:
                try:
                    parse_fetch_items(group.fetch)
                except imap4.IllegalClientResponse as e:
                    self.sendBadResponse(tag, b"MessageNew's fetch attributes: " + client_text(str(e)))
                    return
        self.notifier = Notifier(self, groups)
        if status:
            notifier = self.notifier
            notifier.status_all()
            self.transport.write(b"".join(notifier.take()))
            settling = notifier.settling()
            if settling is not None:
                # (a mailbox whose UID list was made again at this load:
                # its STATUS comes once the list is durable, before the OK)
                self._hold_input()

                def settled(_: Any) -> None:
                    if self.transport is None or self.transport.disconnecting:
                        return
                    if self.notifier is notifier:
                        self.write_notices()
                    self.sendPositiveResponse(tag, b"NOTIFY completed")

                settling.addCallback(settled)
                settling.addErrback(lambda f: log.failure("NOTIFY: after a UID list's flush", f))
                settling.addBoth(lambda _: self._release_input())
                return
        self.sendPositiveResponse(tag, b"NOTIFY completed")

    auth_NOTIFY = select_NOTIFY = (do_NOTIFY, imap4.IMAP4Server.arg_line)

    def end_notify(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None

    def notify_selected(self) -> EventGroup | None:
        """The SELECTED or SELECTED-DELAYED group, when the selected mailbox is told at once."""
        notifier = self.notifier
        if notifier is None or notifier.selected_group is None or not notifier.selected_group.events:
            return None
        return notifier.selected_group

    def write_notices(self) -> None:
        """Write what NOTIFY has waiting (LIST and STATUS of other mailboxes)."""
        if self.notifier is not None:
            lines = self.notifier.take()
            if lines:
                self.transport.write(b"".join(lines))

    def new_message_fetches(self, uids: list[int]) -> bytes:
        """MessageNew's fetch attributes (RFC 5465 §5.2) for messages just told in EXISTS."""
        group = self.notify_selected()
        if group is None or group.fetch is None or not uids or self.selected is None:
            return b""
        from twisted_mailhub.imap.fetch import parse_fetch_items

        view = self.selected
        try:
            items = parse_fetch_items(group.fetch)
        except imap4.IllegalClientResponse:
            return b""
        targets = [(view.seq_of(u), u) for u in uids if view.seq_of(u)]
        return self._notify_fetch_pieces(self._fetch_responses(view, targets, items, False))

    # While a new message's fetch attributes are parsed in a thread: that
    # Deferred (imap/server.py's bring_up_to_date waits for it).
    notify_parsing: defer.Deferred | None = None

    def _notify_fetch_pieces(self, pieces: Iterator) -> bytes:
        """
        The octets of C{pieces} (FETCH's, L{_fetch_responses}) up to the
        first that is a L{Deferred} (a message parsed in a thread); the
        rest is written when it fires (L{_notify_parsed}), input held.
        """
        out = []
        try:
            for piece in pieces:
                if isinstance(piece, defer.Deferred):
                    self.notify_parsing = piece
                    self._hold_input()
                    piece.addBoth(lambda _: self._notify_parsed(pieces))
                    break
                out.append(piece[0] if type(piece) is tuple else piece)
        except Exception:
            log.failure("NOTIFY: MessageNew's fetch attributes could not be made")
        return b"".join(out)

    def _notify_parsed(self, pieces: Iterator) -> None:
        self.notify_parsing = None
        try:
            data = self._notify_fetch_pieces(pieces)
            if data and self.transport is not None and not self.transport.disconnecting:
                self.transport.write(data)
        finally:
            self._release_input()
        if self.notify_parsing is None and self.selected is not None and self.selected.pending:
            self.changes_arrived()  # what came meanwhile
