# The twistd dropin: `twistd mailhub` runs twisted_mailhub.tap.makeService.
from twisted.application.service import ServiceMaker

mailhub = ServiceMaker(
    "twisted-mailhub",
    "twisted_mailhub.tap",
    "SMTP, submission, POP3, IMAP4 and FTP on one account realm",
    "mailhub",
)
