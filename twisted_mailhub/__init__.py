"""
twisted-mailhub: one Twisted process that is a small mail system and file
server (SMTP, submission, POP3, IMAP4, FTP) on one account realm.
"""

__version__ = "0.1.0"


def _hold_sighup_in_a_hub_process() -> None:
    # A hub process (twistd importing the hub for `twistd mailhub` or a
    # .tac, or a --workers worker) holds SIGHUP from this first moment its
    # own code runs: SIGHUP's default action would end it while it imports
    # and starts (twisted_mailhub.sighup). Any other process importing the
    # package (tests, mailhub-admin, a library user) is left alone.
    import os
    import sys

    if "twisted.scripts.twistd" in sys.modules or os.environ.get("MAILHUB_WORKER"):
        from twisted_mailhub import sighup

        sighup.hold()


_hold_sighup_in_a_hub_process()


def _bytecode_cache_of_a_test_hub() -> None:
    # A hub the test kit starts where no bytecode is written keeps this
    # package's compiled code in the kit's folder (twisted_mailhub.bytecode_cache).
    import os

    if os.environ.get("MAILHUB_BYTECODE_CACHE"):
        from twisted_mailhub import bytecode_cache

        bytecode_cache.install_from_environment()


_bytecode_cache_of_a_test_hub()
