# -*- test-case-name: tests.test_imap_server -*-
"""
IMAP extensions that are commands of their own, and the list of what the
server advertises (RFC 3501 §7.2.1 CAPABILITY).

Rules: an extension is advertised in L{EXTENSIONS} only once it fully
works, with end-to-end tests. Each entry below names where it lives:

 - LITERAL+ (RFC 7888): literal reading in L{twisted_mailhub.imap.server}.
 - SASL-IR (RFC 4959): C{do_AUTHENTICATE} in L{twisted_mailhub.imap.server}.
 - IDLE (RFC 2177): L{twisted_mailhub.imap.server}.
 - NAMESPACE (RFC 2342), ID (RFC 2971): here.
 - ENABLE (RFC 5161), CONDSTORE and QRESYNC (RFC 7162): L{twisted_mailhub.imap.condstore}
   (advertised after login where the store keeps modseqs).
 - ESEARCH (RFC 4731), WITHIN (RFC 5032): L{twisted_mailhub.imap.search}.
 - SORT, THREAD=ORDEREDSUBJECT, THREAD=REFERENCES (RFC 5256): L{twisted_mailhub.imap.sort}.
 - UIDPLUS (RFC 4315), MOVE (RFC 6851), UNSELECT (RFC 3691):
   L{twisted_mailhub.imap.changes}, L{twisted_mailhub.imap.mailboxes}.
 - SPECIAL-USE (RFC 6154), CHILDREN (RFC 3348), LIST-EXTENDED (RFC 5258),
   LIST-STATUS (RFC 5819): L{twisted_mailhub.imap.listing}.
 - STATUS=SIZE (RFC 8438): L{twisted_mailhub.imap.mailboxes}.
 - UTF8=ACCEPT (RFC 6855): L{twisted_mailhub.imap.utf8}; ENABLE of it and of
   IMAP4rev2 (RFC 9051): L{twisted_mailhub.imap.rev2}.
 - SEARCHRES (RFC 5182): L{twisted_mailhub.imap.searchres}.
 - BINARY (RFC 3516): L{twisted_mailhub.imap.binary} (FETCH), L{twisted_mailhub.imap.append} (literal8).
 - MULTIAPPEND (RFC 3502), CATENATE (RFC 4469): L{twisted_mailhub.imap.append},
   IMAP URLs in L{twisted_mailhub.imap.urls}.
 - COMPRESS=DEFLATE (RFC 4978): L{twisted_mailhub.imap.compress} (after login).
 - CONTEXT=SEARCH, CONTEXT=SORT, ESORT (RFC 5267), PARTIAL (RFC 9394): L{twisted_mailhub.imap.contexts}.
 - NOTIFY (RFC 5465): L{twisted_mailhub.imap.notify}.
"""

from __future__ import annotations

from twisted.mail import imap4

from twisted_mailhub.store.base import DELIMITER

EXTENSIONS = (
    b"SASL-IR", b"LITERAL+", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"ID", b"ENABLE", b"SPECIAL-USE", b"UNSELECT", b"CHILDREN",
    b"ESEARCH", b"WITHIN",
    b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"MULTIAPPEND", b"CATENATE",
    b"BINARY", b"UTF8=ACCEPT", b"SEARCHRES", b"IMAP4rev2",
)


class ExtensionCommands:
    """ID and NAMESPACE, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def do_ID(self, tag, args=None):
        self.sendUntaggedResponse(b'ID ("name" "twisted-mailhub" "vendor" "twisted-mailhub")')
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = auth_ID = select_ID = (do_ID, imap4.IMAP4Server.arg_line)

    def do_NAMESPACE(self, tag):
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)
