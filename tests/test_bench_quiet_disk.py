"""
bench/quiet_disk.py: the wait for a quiet disk and machine that
bench/smtp_pop3.py makes before every server's round alike.
"""

from __future__ import annotations

import os

from bench.quiet_disk import idle_share, probe, settle


def test_probe_creates_files_and_gives_a_cost_per_file(tmp_path):
    cost = probe(str(tmp_path / "probe"), files=50)
    assert cost > 0
    (made,) = os.listdir(tmp_path / "probe")
    assert sorted(os.listdir(tmp_path / "probe" / made), key=int) == [str(n) for n in range(50)]
    assert os.path.getsize(tmp_path / "probe" / made / "0") == 1024


def test_idle_share_is_a_share_of_the_cpus_time():
    assert 0.0 <= idle_share(0.05) <= 1.0


class Scripted:
    """A clock, and a probe and an idle measure that give figures from lists (each idle measure takes its seconds), for settle()."""

    def __init__(self, costs, shares=None):
        self.costs = list(costs)
        self.shares = list(shares) if shares is not None else [1.0] * len(self.costs)
        self.now = 0.0
        self.calls = []

    def measure(self, folder):
        self.calls.append(("probe", self.now))
        return self.costs.pop(0)

    def idle_over(self, seconds):
        self.now += seconds
        return self.shares.pop(0)

    def sync(self):
        self.calls.append(("sync", self.now))

    def clock(self):
        return self.now


def settled(script, **options):
    return settle("unused", measure=script.measure, sync=script.sync, clock=script.clock, idle_over=script.idle_over, **options)


def test_settle_syncs_then_waits_until_file_creation_is_cheap_again():
    script = Scripted([900.0, 600.0, 120.0, 50.0])
    assert settled(script, quiet_us=150, most=60, pause=2) == (120.0, 1.0, 6.0)
    assert script.calls == [("sync", 0.0), ("probe", 0.0), ("probe", 2.0), ("probe", 4.0)]


def test_settle_waits_until_enough_of_the_cpus_are_idle_too():
    script = Scripted([50.0] * 4, [0.1, 0.5, 0.8, 0.9])
    assert settled(script, quiet_us=150, most=60, pause=2, idle=0.7) == (50.0, 0.8, 6.0)


def test_settle_gives_up_after_most_seconds_and_says_how_busy_the_disk_was():
    script = Scripted([900.0] * 100)
    cost, share, waited = settled(script, quiet_us=150, most=10, pause=2)
    assert (cost, share) == (900.0, 1.0)
    assert waited == 10.0
    assert len([c for c in script.calls if c[0] == "probe"]) == 5


def test_settle_with_no_wait_measures_once():
    script = Scripted([900.0], [0.2])
    assert settled(script, most=0, idle=0.7) == (900.0, 0.2, 2.0)
    assert script.calls == [("sync", 0.0), ("probe", 0.0)]
