# -*- test-case-name: tests.test_e2e_imap_rev2 -*-
"""
IMAP4rev2 (RFC 9051) beside IMAP4rev1, and the ENABLE names a session
turns modes on with (RFC 5161): C{IMAP4rev2} and C{UTF8=ACCEPT} (RFC 6855,
L{twisted_mailhub.imap.utf8}).

Rules: a session speaks IMAP4rev1 until C{ENABLE IMAP4rev2}; from then on
(RFC 9051 Appendix E, item by item):

 1. Mailbox names are UTF-8 both ways, not modified UTF-7 (§5.1).
 2. No C{\\Recent} flag and no C{* n RECENT} response, at SELECT or later
    (L{Rev2View}); STATUS RECENT is a BAD (§6.3.11 has no RECENT item).
 3. SEARCH answers with ESEARCH (§7.3.4), with ALL when no RETURN was
    given; the untagged SEARCH response is not used.
 4. LIST shows a parent that does not exist as C{\\NonExistent} (§7.3.1).
 5. LSUB is still accepted (rev1 clients and rev2 servers both have it);
    LIST (SUBSCRIBED) is what rev2 clients use.
 6. The rev2 base extensions are all here: NAMESPACE, UNSELECT, UIDPLUS,
    ESEARCH, ENABLE, IDLE, SASL-IR, LIST-EXTENDED, LIST-STATUS, MOVE,
    LITERAL+ (a superset of LITERAL-), BINARY, SPECIAL-USE, STATUS SIZE and
    DELETED, SEARCHRES (L{twisted_mailhub.imap.searchres}).
 7. Keywords C{$Forwarded}, C{$MDNSent}, C{$Junk}, C{$NotJunk},
    C{$Phishing} are ordinary keywords (PERMANENTFLAGS has C{\\*}).
 8. RFC822, RFC822.HEADER, RFC822.TEXT, CHECK and LSUB, deprecated in
    rev2, still work.
 9. Response codes of §7.1 for both revisions: C{[AUTHENTICATIONFAILED]}
    for a wrong password (LOGIN and AUTHENTICATE), C{[HASCHILDREN]} for
    DELETE of a name that is only a parent, C{[CANNOT]} for a RENAME of a
    mailbox under itself (L{twisted_mailhub.imap.mailboxes}); after RENAME
    (and a canonicalised CREATE) a rev2 session gets C{LIST} with OLDNAME.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.logger import Logger
from twisted.mail import imap4

from twisted_mailhub.imap.view import SelectedFolder

log = Logger()

ENABLE_NAMES = {b"UTF8=ACCEPT": b"UTF8=ACCEPT", b"IMAP4REV2": b"IMAP4rev2"}


class _NeverRecent(set):
    """A set of recent UIDs that stays empty: IMAP4rev2 has no \\Recent."""

    def add(self, uid: Any) -> None:
        pass

    def update(self, *others: Any) -> None:
        pass


class Rev2View(SelectedFolder):
    """The selected-mailbox view of an IMAP4rev2 session: no \\Recent, no RECENT responses."""

    def __init__(self, *args: Any, **kwargs: Any):
        SelectedFolder.__init__(self, *args, **kwargs)
        self.recent = _NeverRecent()

    def untagged(self, *args: Any, **kwargs: Any) -> list[bytes]:
        return [line for line in SelectedFolder.untagged(self, *args, **kwargs) if not (line.startswith(b"* ") and line.endswith(b" RECENT\r\n"))]


class SessionModes:
    """ENABLE's IMAP4rev2 and UTF8=ACCEPT, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    rev2 = False
    utf8_accept = False

    def enable_offered(self) -> dict[bytes, bytes]:
        """Names ENABLE takes besides CONDSTORE/QRESYNC: upper case -> as answered."""
        return ENABLE_NAMES

    def enabled_now(self, names: list[bytes]) -> None:
        if b"UTF8=ACCEPT" in names:
            self.utf8_accept = True
            self.utf8_names = True
        if b"IMAP4REV2" in names:
            self.rev2 = True
            self.utf8_names = True

    def view_class(self) -> type:
        return Rev2View if self.rev2 else SelectedFolder

    # RFC 5530 §3 / RFC 9051 §7.1: a wrong user name or password is
    # AUTHENTICATIONFAILED (what Dovecot answers), in place of Twisted's
    # bare "LOGIN failed" / "Authentication failed: unauthorized".

    def _IMAP4Server__ebLogin(self, reason: Any, tag: bytes) -> None:
        if reason.check(UnauthorizedLogin):
            self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] LOGIN failed: wrong user name or password")
            return
        # Twisted's answer is "BAD Server error: " and the exception's own
        # words (Python's); the hub's fault is said as every other one.
        log.failure("IMAP LOGIN failed", reason)
        self.sendBadResponse(tag, b"[SERVERBUG] LOGIN failed; see the server log")

    def _IMAP4Server__ebAuthResp(self, reason: Any, tag: bytes) -> None:
        if reason.check(UnauthorizedLogin):
            self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] AUTHENTICATE failed: wrong user name or password")
            return
        imap4.IMAP4Server._IMAP4Server__ebAuthResp(self, reason, tag)
