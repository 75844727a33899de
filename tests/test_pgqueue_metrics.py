"""
/metrics on a hub whose queue is in PostgreSQL (C{--queue postgresql})
counts the whole queue, every hub's messages, from the table: a message
one hub queued shows on every hub's C{mailhub_queue_*}.
"""

from __future__ import annotations

from tests.test_metrics import scrape, value
from tests.test_pgqueue import queued_rows, sink, start_pair, submit, until  # noqa: F401 - sink is a fixture


def test_queue_metrics_count_every_hubs_messages_from_the_table(start_hub, pg_dsn, sink):  # noqa: F811
    port, peer = sink
    peer.refusing = True  # every message stays queued
    a, b = start_pair(start_hub, pg_dsn, port, "--retry-schedule", "1h")
    for n in range(3):
        submit(a, f"waiting {n}")
    assert until(lambda: queued_rows(pg_dsn) == 3)
    assert until(lambda: a.log.count("451") >= 3)  # tried once each; back in the table for an hour
    for hub in (a, b):
        samples = scrape(hub)
        assert value(samples, "mailhub_queue_messages") == 3, hub.log[-2000:]
        assert value(samples, "mailhub_queue_oldest_seconds") > 0
    assert "Traceback" not in a.log + b.log
