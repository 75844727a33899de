"""
An example delivery filter for twisted-mailhub.

Copy this file into a directory called C{twisted_mailhub/plugins/} (with no
C{__init__.py}) somewhere on C{sys.path}, then start the hub with
C{--filter subject-words}:

    mkdir -p ~/mailhub-plugins/twisted_mailhub/plugins
    cp etc/example_filter.py ~/mailhub-plugins/twisted_mailhub/plugins/
    PYTHONPATH=~/mailhub-plugins MAILHUB_BANNED_WORDS=lottery,prize \\
        twistd -n mailhub --user alice:secret --filter subject-words

It refuses a message whose Subject contains one of the words in
C{MAILHUB_BANNED_WORDS} (comma-separated, default C{lottery}) with
C{550 5.7.1}, and marks every other message with an C{X-Mailhub-Filter:}
header. A filter implements only the hooks it needs (C{mail_from},
C{rcpt_to}, C{end_of_data}); each may return a Deferred.
"""

import os
from email.parser import BytesHeaderParser
from email.policy import default

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.filters import IDeliveryFilter, Reject, Rewrite


@implementer(IPlugin, IDeliveryFilter)
class SubjectWords:
    name = "subject-words"

    def banned(self):
        words = os.environ.get("MAILHUB_BANNED_WORDS", "lottery")
        return [w.strip().lower() for w in words.split(",") if w.strip()]

    def end_of_data(self, envelope, message):
        headers = BytesHeaderParser(policy=default).parsebytes(message)
        subject = str(headers.get("Subject", "")).lower()
        for word in self.banned():
            if word in subject:
                return Reject(550, f"5.7.1 Message refused: the subject mentions {word!r}")
        return Rewrite(b"X-Mailhub-Filter: subject-words; passed\r\n" + message)


subject_words = SubjectWords()
