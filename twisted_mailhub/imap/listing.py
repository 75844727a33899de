# -*- test-case-name: tests.test_e2e_imap_listing -*-
"""
LIST and LSUB (RFC 3501 §6.3.8, §6.3.9) with LIST-EXTENDED (RFC 5258),
LIST-STATUS (RFC 5819) and the SPECIAL-USE selection and return options
(RFC 6154).

Rules:

 - C{LIST ref pattern} is RFC 3501's. It becomes extended (RFC 5258 §3)
   with selection options in parentheses before the reference, several
   patterns in parentheses, or C{RETURN (...)} after them.
 - Selection options: SUBSCRIBED (the subscribed names, existing or not;
   implies the SUBSCRIBED return option), REMOTE (no effect: there are no
   remote mailboxes), SPECIAL-USE (only mailboxes with a special-use
   attribute), RECURSIVEMATCH (only with SUBSCRIBED or SPECIAL-USE, else
   BAD: RFC 5258 §3): a name the pattern matches that does not itself meet
   the selection but has a descendant that does and that the pattern does
   not reach is returned with C{("CHILDINFO" ("SUBSCRIBED"))}. An unknown
   selection option is BAD.
 - Return options: SUBSCRIBED (C{\\Subscribed}), CHILDREN
   (C{\\HasChildren}/C{\\HasNoChildren}, sent always, which RFC 5258 §4
   allows), SPECIAL-USE (sent always, RFC 6154 §2), STATUS (items) (RFC
   5819: a C{* STATUS} after each selectable mailbox's C{* LIST}). An
   unknown return option is BAD.
 - A name shown that does not exist (a parent of existing mailboxes, or a
   subscribed name) is C{\\NonExistent} (implies C{\\Noselect}) in an
   extended LIST and C{\\Noselect} in RFC 3501's LIST and LSUB.
 - Each mailbox appears once however many patterns match it; INBOX first.
 - Names go out and come in as modified UTF-7, or UTF-8 once the session
   enabled UTF8=ACCEPT (L{twisted_mailhub.imap.utf8}).
"""

from __future__ import annotations

import re

from twisted.mail import imap4

from twisted_mailhub.imap.arguments import Atom, String, arg_everything
from twisted_mailhub.imap.settling import settled_folder, when_settled
from twisted_mailhub.imap.wire import arg_astring, arg_finalastring, client_text, shown
from twisted_mailhub.store.base import DELIMITER
from twisted_mailhub.store.interfaces import INBOX, StoreError

# RFC 6154 special-use folders, made at first login.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}

SELECTION_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}


def list_pattern(wildcard: str) -> re.Pattern[str]:
    """
    LIST's pattern as a regular expression over whole names: C{*} matches
    anything, C{%} anything but the delimiter (RFC 3501 §6.3.8).
    """
    out = []
    for piece in re.split(r"([*%])", wildcard):
        if piece == "*":
            out.append(".*")
        elif piece == "%":
            out.append("[^" + re.escape(DELIMITER) + "]*")
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out) + r"\Z", re.S)


def full_pattern(reference: str, pattern: str) -> str:
    """Reference and pattern joined, with INBOX's case folded (RFC 3501 §5.1)."""
    full = reference + pattern
    if full[:5].upper() == INBOX and (len(full) == 5 or full[5] in DELIMITER + "%*"):
        full = INBOX + full[5:]
    return full


class ListRequest:
    """
    A parsed LIST: C{reference} and C{patterns} (wire bytes), the
    C{selection} and C{returns} option names (upper case), the STATUS items
    asked for (C{status}, or None) and whether any extended syntax was used.
    """

    def __init__(self) -> None:
        self.selection: set[bytes] = set()
        self.returns: set[bytes] = set()
        self.status: list[bytes] | None = None
        self.reference = b""
        self.patterns: list[bytes] = []
        self.extended = False


def parse_list(tree: list) -> ListRequest:
    """
    LIST's arguments (RFC 5258 §6 list grammar) from L{arg_everything}'s
    tree. Raises L{imap4.IllegalClientResponse}.
    """
    request = ListRequest()
    i = 0
    if tree and isinstance(tree[0], list):
        request.extended = True
        for word in tree[0]:
            name = word.upper() if isinstance(word, Atom) else b""
            if name not in SELECTION_OPTIONS:
                raise imap4.IllegalClientResponse("unknown LIST selection option " + shown(bytes(word) if isinstance(word, bytes) else b"(...)", 30) + ": use SUBSCRIBED, REMOTE, RECURSIVEMATCH or SPECIAL-USE")
            request.selection.add(name)
        if b"RECURSIVEMATCH" in request.selection and not request.selection & {b"SUBSCRIBED", b"SPECIAL-USE"}:
            raise imap4.IllegalClientResponse("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE beside it (RFC 5258 section 3)")
        i = 1
    if len(tree) < i + 2 or not isinstance(tree[i], bytes):
        raise imap4.IllegalClientResponse("LIST wants a reference and a mailbox pattern, e.g. LIST \"\" \"*\"")
    request.reference = bytes(tree[i])
    patterns = tree[i + 1]
    if isinstance(patterns, list):
        request.extended = True
        if not patterns or not all(isinstance(p, bytes) for p in patterns):
            raise imap4.IllegalClientResponse("LIST's pattern list wants one or more patterns")
        request.patterns = [bytes(p) for p in patterns]
    else:
        request.patterns = [bytes(patterns)]
    rest = tree[i + 2 :]
    if rest:
        if len(rest) != 2 or not isinstance(rest[0], Atom) or rest[0].upper() != b"RETURN" or not isinstance(rest[1], list):
            raise imap4.IllegalClientResponse("after the patterns LIST takes only RETURN (options)")
        request.extended = True
        options = rest[1]
        j = 0
        while j < len(options):
            word = options[j]
            name = word.upper() if isinstance(word, Atom) else b""
            if name not in RETURN_OPTIONS:
                raise imap4.IllegalClientResponse("unknown LIST return option " + shown(bytes(word) if isinstance(word, bytes) else b"(...)", 30) + ": use SUBSCRIBED, CHILDREN, SPECIAL-USE or STATUS (items)")
            if name == b"STATUS":
                if j + 1 >= len(options) or not isinstance(options[j + 1], list) or not options[j + 1]:
                    raise imap4.IllegalClientResponse("RETURN (STATUS ...) wants a list of status items, e.g. STATUS (MESSAGES UNSEEN)")
                request.status = [bytes(w).upper() if isinstance(w, bytes) else b"" for w in options[j + 1]]
                j += 2
            else:
                j += 1
            request.returns.add(name)
    if b"SUBSCRIBED" in request.selection:
        request.returns.add(b"SUBSCRIBED")  # RFC 5258 §3: implied
    return request


class ListCommands:
    """LIST and LSUB, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    @when_settled
    def do_LIST(self, tag, tree):
        try:
            request = parse_list(tree)
            if request.status is not None:
                self.check_status_items(request.status)
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        self._list(tag, request, b"LIST")

    def do_LSUB(self, tag, reference, pattern):
        request = ListRequest()
        request.reference = reference
        request.patterns = [pattern]
        self._list(tag, request, b"LSUB")

    auth_LIST = select_LIST = (do_LIST, arg_everything)
    auth_LSUB = select_LSUB = (do_LSUB, arg_astring, arg_finalastring)

    def _list(self, tag: bytes, request: ListRequest, command: bytes) -> None:
        try:
            reference = self.name_from_wire_pattern(request.reference)
            patterns = [self.name_from_wire_pattern(p) for p in request.patterns]
        except imap4.IllegalMailboxEncoding:
            # No mailbox has such a name (CREATE refuses it): nothing
            # matches, as Dovecot answers.
            self.sendPositiveResponse(tag, command + b" completed (no mailbox name matches a pattern that is not modified UTF-7)")
            return
        delimiter = b'"' + DELIMITER.encode() + b'"'
        if command == b"LIST" and patterns == [""] and not request.selection:
            # RFC 3501 §6.3.8: an empty pattern asks for the delimiter.
            self.sendUntaggedResponse(b"LIST (\\Noselect) " + delimiter + b' ""')
            self.sendPositiveResponse(tag, b"LIST completed")
            return
        fulls = [full_pattern(reference, p) for p in patterns]
        regexes = [list_pattern(f) for f in fulls]
        store = self._store()
        existing = store.folders()
        if command == b"LSUB":
            entries = lsub_entries(existing, store.subscriptions(), regexes[0], "%" in fulls[0])
        else:
            subscribed = set(store.subscriptions()) if request.returns & {b"SUBSCRIBED"} else set()
            entries = list_entries(existing, subscribed, regexes, request, self.rev2_names())
        lines = []
        for name, attributes, extra in entries:
            line = b"* " + command + b" (" + b" ".join(attributes) + b") " + delimiter + b" " + self.name_to_wire(name) + extra + b"\r\n"
            lines.append(line)
            if request.status is not None and b"\\Noselect" not in attributes and b"\\NonExistent" not in attributes:
                try:
                    lines.append(b"* " + self.status_response(settled_folder(store.folder(name)), request.status) + b"\r\n")
                except (StoreError, OSError):
                    continue  # gone meanwhile: its LIST line stands, RFC 5819 §2 allows no STATUS
        self.write_lines(lines)
        self.sendPositiveResponse(tag, command + b" completed")

    def rev2_names(self) -> bool:
        """Does this session call a missing parent C{\\NonExistent} in a plain LIST (IMAP4rev2)?"""
        return bool(getattr(self, "rev2", False))


def list_entries(existing: list[str], subscribed: set[str], regexes: list[re.Pattern[str]], request: ListRequest, nonexistent: bool = False):
    """
    (name, attributes, extended data) of every mailbox LIST shows. A
    parent that does not exist but has children (a DELETE of a folder with
    children, RFC 3501 §6.3.4, or a child made by another program) is
    shown, so a client that walks the tree level by level still reaches
    the children.
    """
    names = set(existing)
    implied = set()
    for name in existing:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent not in names:
                implied.add(parent)
    missing = (b"\\NonExistent",) if request.extended or nonexistent else (b"\\Noselect",)

    def matches(name: str) -> bool:
        return any(r.match(name) for r in regexes)

    by_subscription = b"SUBSCRIBED" in request.selection
    by_special = b"SPECIAL-USE" in request.selection
    recursive = b"RECURSIVEMATCH" in request.selection
    candidates = set(names | implied)
    if by_subscription:
        candidates |= subscribed
    parents = {name.rpartition(DELIMITER)[0] for name in names | implied if DELIMITER in name}

    def selected(name: str) -> bool:
        if by_subscription and name not in subscribed:
            return False
        if by_special and name not in SPECIAL_USE:
            return False
        return True

    childinfo: dict[str, list[bytes]] = {}
    if recursive:
        for name in candidates:
            if not selected(name) or DELIMITER not in name:
                continue
            parts = name.split(DELIMITER)
            for i in range(len(parts) - 1, 0, -1):
                parent = DELIMITER.join(parts[:i])
                if matches(parent) and not matches(name):
                    kinds = childinfo.setdefault(parent, [])
                    for kind in ([b'"SUBSCRIBED"'] if by_subscription else []) + ([b'"SPECIAL-USE"'] if by_special else []):
                        if kind not in kinds:
                            kinds.append(kind)
    for name in sorted(candidates | set(childinfo), key=lambda n: (n != INBOX, n)):
        if not matches(name):
            continue
        if not selected(name) and name not in childinfo:
            continue
        if name in names:
            attributes = []
        else:
            attributes = list(missing)
        if name in names or name in implied:
            attributes.append(b"\\HasChildren" if name in parents else b"\\HasNoChildren")
        if name in subscribed and b"SUBSCRIBED" in request.returns:
            attributes.append(b"\\Subscribed")
        special = SPECIAL_USE.get(name)
        if special and name in names:
            attributes.append(special.encode())
        extra = b""
        if name in childinfo:
            extra = b' ("CHILDINFO" (' + b" ".join(childinfo[name]) + b"))"
        yield name, attributes, extra


def lsub_entries(existing: list[str], subscribed: list[str], regex: re.Pattern[str], has_percent: bool):
    """
    (name, attributes, b"") of every subscribed name LSUB shows. RFC 3501
    §6.3.9: when C{%} stops a pattern above a subscribed name whose parent
    is not subscribed, the parent is shown, C{\\Noselect}.
    """
    shown_names: dict[str, list[bytes]] = {}
    names = set(subscribed)
    for name in subscribed:
        if regex.match(name):
            shown_names[name] = [] if name in existing else [b"\\Noselect"]
        elif has_percent:
            parts = name.split(DELIMITER)
            for i in range(len(parts) - 1, 0, -1):
                parent = DELIMITER.join(parts[:i])
                if regex.match(parent) and parent not in names:
                    shown_names.setdefault(parent, [b"\\Noselect"])
                    break
    for name in sorted(shown_names, key=lambda n: (n != INBOX, n)):
        yield name, shown_names[name], b""


__all__ = ["ListCommands", "SPECIAL_USE", "list_pattern", "parse_list", "String"]
