# The twistd dropin: `twistd mailhub` runs twisted_mailhub.tap.makeService.
#
# twistd imports this module while it reads its command line: the first
# code of the hub it runs. Importing the package here holds SIGHUP from
# that moment in a twistd process (twisted_mailhub/__init__.py,
# twisted_mailhub/sighup.py); any other process that lists plugins is left
# alone.
import twisted_mailhub  # noqa: F401
from twisted.application.service import ServiceMaker

mailhub = ServiceMaker(
    "twisted-mailhub",
    "twisted_mailhub.tap",
    "SMTP, submission, POP3, IMAP4 and FTP on one account realm",
    "mailhub",
)
