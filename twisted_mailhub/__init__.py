"""
twisted-mailhub: one Twisted process that is a small mail system and file
server (SMTP, submission, POP3, IMAP4, FTP) on one account realm.
"""

__version__ = "0.1.0"
