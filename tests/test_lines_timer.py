"""
The line engine's idle and login deadlines share one timer: each still ends
the session at its own time, and a session that has logged in holds one
pending call, not a cancelled login timer beside its idle timer.
"""

from __future__ import annotations

from tests.test_lines import Owner


def test_a_logged_in_idle_session_holds_one_pending_call():
    o = Owner(idle_timeout=300).start(login_timeout=300)
    o.lines.data_received(b"user alice\n")
    o.lines.logged_in()
    assert len(o.clock.getDelayedCalls()) == 1
    o.clock.advance(301)
    assert o.timeouts == ["idle"]
    assert o.clock.getDelayedCalls() == []


def test_the_login_deadline_ends_a_session_that_keeps_talking_without_logging_in():
    o = Owner(idle_timeout=30).start(login_timeout=100)
    for _ in range(9):
        o.clock.advance(11)
        o.lines.data_received(b"noop\n")
    assert o.timeouts == []
    o.clock.advance(2)
    assert o.timeouts == ["login"]


def test_the_login_deadline_applies_without_an_idle_limit():
    o = Owner().start(login_timeout=60)
    o.clock.advance(59)
    assert o.timeouts == []
    o.clock.advance(1)
    assert o.timeouts == ["login"]


def test_an_idle_limit_shorter_than_the_login_deadline_comes_first():
    o = Owner(idle_timeout=30).start(login_timeout=300)
    o.clock.advance(30)
    assert o.timeouts == ["idle"]


def test_idle_wins_a_tie_with_the_login_deadline():
    o = Owner(idle_timeout=300).start(login_timeout=300)
    o.clock.advance(300)
    assert o.timeouts == ["idle"]


def test_after_login_the_idle_limit_still_counts_from_the_last_input():
    o = Owner(idle_timeout=300).start(login_timeout=60)
    o.clock.advance(50)
    o.lines.data_received(b"pass secret\n")
    o.lines.logged_in()
    o.clock.advance(200)  # past the login deadline: nothing
    assert o.timeouts == []
    o.clock.advance(99)
    assert o.timeouts == []
    o.clock.advance(2)
    assert o.timeouts == ["idle"]


def test_a_new_idle_limit_keeps_the_login_deadline():
    o = Owner(idle_timeout=300).start(login_timeout=60)
    o.lines.set_idle_timeout(1000)
    o.clock.advance(60)
    assert o.timeouts == ["login"]


def test_an_owner_that_goes_on_when_idle_is_asked_again_after_the_idle_limit():
    o = Owner(idle_timeout=10).start()
    o.timed_out = lambda kind: o.timeouts.append(kind)  # goes on (a transfer runs)
    o.clock.advance(10)
    assert o.timeouts == ["idle"]
    o.clock.advance(9)
    assert o.timeouts == ["idle"]
    o.clock.advance(1)
    assert o.timeouts == ["idle", "idle"]


def test_a_stopped_engine_leaves_no_timer():
    o = Owner(idle_timeout=300).start(login_timeout=60)
    o.lines.close()
    assert o.clock.getDelayedCalls() == []
