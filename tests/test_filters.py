# -*- test-case-name: tests.test_filters -*-
"""
Delivery filters: the hook runner, and etc/example_filter.py installed as a
third-party plugin into a real hub.
"""

from __future__ import annotations

import os
import shutil
import smtplib

import pytest
from twisted.internet import defer

from tests.smtp_helpers import stored_with
from twisted_mailhub.filters import Envelope, Reject, Rewrite
from twisted_mailhub.smtp.delivery import run_filters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder:
    def __init__(self, name, result=None):
        self.name = name
        self.result = result
        self.seen = []

    def end_of_data(self, envelope, message):
        self.seen.append(message)
        return self.result


def _result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    return out[0]


def test_rewrites_chain_and_later_filters_see_the_new_message():
    first = Recorder("a", Rewrite(b"X-A: 1\r\nbody"))
    second = Recorder("b", defer.succeed(Rewrite(b"X-B: 2\r\n" + b"X-A: 1\r\nbody")))
    result = _result(run_filters([first, second], "end_of_data", Envelope("s"), b"body"))
    assert result == b"X-B: 2\r\nX-A: 1\r\nbody"
    assert first.seen == [b"body"] and second.seen == [b"X-A: 1\r\nbody"]


def test_first_reject_wins_and_later_filters_do_not_run():
    first = Recorder("a", Reject(550, "5.7.1 no"))
    second = Recorder("b", Rewrite(b"x"))
    assert _result(run_filters([first, second], "end_of_data", Envelope("s"), b"m")) == Reject(550, "5.7.1 no")
    assert second.seen == []


def test_missing_hook_accepts():
    class OnlyRcpt:
        name = "r"

        def rcpt_to(self, envelope, recipient):
            return Reject(550, "5.7.1 not " + recipient) if recipient.startswith("x") else None

    assert _result(run_filters([OnlyRcpt()], "mail_from", Envelope("s"))) is None
    assert _result(run_filters([OnlyRcpt()], "rcpt_to", Envelope("s"), "xy@z")) == Reject(550, "5.7.1 not xy@z")
    assert _result(run_filters([OnlyRcpt()], "end_of_data", Envelope("s"), b"m")) == b"m"


def test_filters_that_answer_at_once_run_without_a_coroutine(monkeypatch):
    from twisted_mailhub.smtp import delivery

    def no_coroutine(*args):
        raise AssertionError("a coroutine for filters that answered at once")

    monkeypatch.setattr(delivery, "_run_the_rest", no_coroutine)
    first, second = Recorder("a"), Recorder("b", Rewrite(b"X: 1\r\nm"))
    assert _result(run_filters([first, second], "end_of_data", Envelope("s"), b"m")) == b"X: 1\r\nm"


def test_after_a_filter_that_waits_the_rest_run_in_order_with_its_answer():
    waiting = defer.Deferred()
    first = Recorder("a", waiting)
    second = Recorder("b", Rewrite(b"X-B: 2\r\nY\r\nm"))
    third = Recorder("c")
    d = run_filters([first, second, third], "end_of_data", Envelope("s"), b"m")
    assert not d.called and second.seen == []
    waiting.callback(Rewrite(b"Y\r\nm"))
    assert _result(d) == b"X-B: 2\r\nY\r\nm"
    assert second.seen == [b"Y\r\nm"] and third.seen == [b"X-B: 2\r\nY\r\nm"]


def test_a_filter_that_raises_fails_the_deferred():
    class Broken:
        def end_of_data(self, envelope, message):
            raise RuntimeError("bug")

    failure = _result(run_filters([Broken()], "end_of_data", Envelope("s"), b"m"))
    assert failure.check(RuntimeError)


@pytest.fixture
def plugin_path(tmp_path):
    plugins = tmp_path / "plugins"
    target = plugins / "twisted_mailhub" / "plugins"
    target.mkdir(parents=True)
    # A third-party plugin directory: no __init__.py anywhere.
    shutil.copy(os.path.join(ROOT, "etc", "example_filter.py"), target / "example_filter.py")
    return str(plugins)


def test_example_filter_installed_as_plugin_rejects_and_marks(start_hub, plugin_path):
    hub = start_hub(
        "--filter", "subject-words",
        env={"PYTHONPATH": os.pathsep.join([ROOT, plugin_path]), "MAILHUB_BANNED_WORDS": "lottery,prize"},
    )
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("spam@example.org", ["alice@localhost"], b"Subject: You won the LOTTERY\r\n\r\nclaim now\r\n")
        assert refused.value.smtp_code == 550
        assert b"5.7.1 Message refused: the subject mentions 'lottery'" in refused.value.smtp_error
        c.sendmail("friend@example.org", ["alice@localhost"], b"Subject: lunch?\r\n\r\nnoon\r\n")
    assert stored_with(hub, "alice@localhost", b"claim now") == []
    [message] = stored_with(hub, "alice@localhost", b"lunch?")
    assert b"\r\nX-Mailhub-Filter: subject-words; passed\r\nSubject: lunch?\r\n" in message
