"""
twisted-mailhub as a .tac file, for people who run services with
``twistd -y``:

    twistd -n -y etc/mailhub.tac

It builds the same service as ``twistd mailhub``; the command line lives in
ARGS below (any option of ``twistd mailhub --help``). MAILHUB_ARGS in the
environment, if set, is added to it (shell-quoted), which is handy for
trying a change without editing this file.
"""

import os
import shlex

from twisted.application import service

from twisted_mailhub import tap

ARGS = [
    "--data", "mailhub-data",
    "--domain", "localhost",
    "--auth", "file:etc/accounts.example",
]

options = tap.Options()
options.parseOptions(ARGS + shlex.split(os.environ.get("MAILHUB_ARGS", "")))

application = service.Application("mailhub")
tap.makeService(options).setServiceParent(application)
