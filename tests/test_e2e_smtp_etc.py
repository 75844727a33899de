# -*- test-case-name: tests.test_e2e_smtp_etc -*-
"""
The examples in etc/ work: etc/mailhub.tac under ``twistd -y`` with the
accounts of etc/accounts.example, hashed password included.
"""

from __future__ import annotations

import shlex
import smtplib
import sys

import pytest

from tests.hubprocess import ROOT, HubProcess, client_context
from tests.smtp_helpers import stored_with
from twisted_mailhub import tap


class TacHub(HubProcess):
    """``twistd -y etc/mailhub.tac`` run from the checkout (the tac names
    etc/accounts.example relative to it); MAILHUB_ARGS moves the data and
    the listeners."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "-y", "etc/mailhub.tac"]

    def start(self, timeout: float = 30) -> "TacHub":
        data_dir, self.data_dir = self.data_dir, ROOT  # the process's cwd
        try:
            return super().start(timeout)
        finally:
            self.data_dir = data_dir


@pytest.fixture
def tac_hub(tmp_path):
    names = [spec.name for module in tap._components() for spec in getattr(module, "listeners", [])]
    args = ["--data", str(tmp_path), "--hostname", "mail.test"]
    for name in names:
        args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    hub = TacHub(str(tmp_path), env={"MAILHUB_ARGS": shlex.join(args)})
    hub.start()
    yield hub
    hub.stop()


def test_tac_file_runs_the_hub_with_the_example_accounts(tac_hub):
    with smtplib.SMTP_SSL("127.0.0.1", tac_hub.ports["smtps"], context=client_context()) as c:
        # carol's password is stored hashed: AUTH PLAIN (over TLS) works.
        c.login("carol@localhost", "correct horse")
        c.sendmail("carol@localhost", ["alice@localhost", "bob@localhost"], b"Subject: from the tac\r\n\r\nhi\r\n")
    assert len(stored_with(tac_hub, "alice@localhost", b"from the tac")) == 1
    assert len(stored_with(tac_hub, "bob@localhost", b"from the tac")) == 1
    with smtplib.SMTP("127.0.0.1", tac_hub.ports["smtp"]) as c:
        c.ehlo()
        # Without TLS only CRAM-MD5 is offered, and it needs a plain password.
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("carol@localhost", "correct horse")
        assert c.login("bob", "hungry")[0] == 235
