# -*- test-case-name: tests.test_imap_server -*-
"""
IMAP extensions that are commands of their own, and the list of what the
server advertises (RFC 3501 §7.2.1 CAPABILITY).

Rules: an extension is advertised in L{EXTENSIONS} only once it fully
works, with end-to-end tests. Each entry below names where it lives:

 - LITERAL+ (RFC 7888): literal reading in L{twisted_mailhub.imap.server}.
 - SASL-IR (RFC 4959): C{do_AUTHENTICATE} in L{twisted_mailhub.imap.server}.
 - IDLE (RFC 2177): L{twisted_mailhub.imap.server}.
 - NAMESPACE (RFC 2342), ID (RFC 2971), ENABLE (RFC 5161): here.
 - UIDPLUS (RFC 4315), MOVE (RFC 6851), UNSELECT (RFC 3691):
   L{twisted_mailhub.imap.changes}, L{twisted_mailhub.imap.mailboxes}.
 - SPECIAL-USE (RFC 6154), CHILDREN (RFC 3348): L{twisted_mailhub.imap.mailboxes}.
"""

from __future__ import annotations

from twisted.mail import imap4

from twisted_mailhub.store.base import DELIMITER

EXTENSIONS = (b"SASL-IR", b"LITERAL+", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"ID", b"ENABLE", b"SPECIAL-USE", b"UNSELECT", b"CHILDREN")


class ExtensionCommands:
    """ID, ENABLE and NAMESPACE, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def do_ID(self, tag, args=None):
        self.sendUntaggedResponse(b'ID ("name" "twisted-mailhub" "vendor" "twisted-mailhub")')
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = auth_ID = select_ID = (do_ID, imap4.IMAP4Server.arg_line)

    def do_ENABLE(self, tag, args=None):
        # No extension here changes behaviour when enabled (RFC 5161 §3.1:
        # an empty ENABLED list is a valid answer).
        self.sendUntaggedResponse(b"ENABLED")
        self.sendPositiveResponse(tag, b"ENABLE completed")

    auth_ENABLE = select_ENABLE = (do_ENABLE, imap4.IMAP4Server.arg_line)

    def do_NAMESPACE(self, tag):
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)
