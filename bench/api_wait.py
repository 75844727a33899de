#!/usr/bin/env python3
"""
Benchmark: how soon the JSON API's long poll
(GET /api/v1/accounts/me/folders/INBOX/wait) answers after a message is
delivered: from the moment the sender has the SMTP 250 to the moment the
waiter has the poll's reply. The hub answers both in the same reactor
turn (the store tells its listeners when the message is durable, just
before the 250), so the figure can be below zero: the waiter got its
answer before the sender got its 250.

    python3 bench/api_wait.py              # 20 rounds
    python3 bench/api_wait.py --rounds 5

Peer in the same run, alternating: waiting the way a test without the API
does, by polling IMAP (twisted_mailhub.testing.Mailhub.wait_for_message,
one SELECT + UID FETCH every 50 ms). Reported: median, best and worst in
milliseconds. The target is under 100 ms for the long poll. The machine's
load moves these; the ratio between the two moves less.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import smtplib
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_mailhub.testing import Mailhub  # noqa: E402

AUTH = "Basic " + base64.b64encode(b"alice@localhost:secret").decode()


def send(hub: Mailhub, subject: str) -> float:
    """Send one message; the time its 250 arrived (perf_counter)."""
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("bench@example.net")
        s.rcpt("alice@localhost")
        code, _ = s.data(f"Subject: {subject}\r\n\r\nx\r\n".encode())
        arrived = time.perf_counter()
        assert code == 250
        return arrived


def long_poll(hub: Mailhub, token: str, subject: str) -> float:
    result: dict[str, float] = {}
    connected = threading.Event()

    def wait():
        connection = http.client.HTTPConnection(hub.host, hub.ports["web"], timeout=30)
        connection.connect()
        connected.set()
        connection.request("GET", f"/api/v1/accounts/me/folders/INBOX/wait?timeout=20&search=SUBJECT%20{subject}", headers={"Authorization": f"Bearer {token}"})
        body = json.loads(connection.getresponse().read())
        result["at"] = time.perf_counter()
        assert body["message"]["subject"] == subject, body

    waiter = threading.Thread(target=wait)
    waiter.start()
    connected.wait(5)
    time.sleep(0.05)  # let the request reach the hub (a bench, not a test: no other signal from outside)
    sent = send(hub, subject)
    waiter.join(30)
    return result["at"] - sent


def imap_poll(hub: Mailhub, subject: str) -> float:
    result: dict[str, float] = {}

    def wait():
        hub.wait_for_message(to="alice@localhost", subject=subject, timeout=20)
        result["at"] = time.perf_counter()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    sent = send(hub, subject)
    waiter.join(30)
    return result["at"] - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with Mailhub(accounts=["alice:secret"]) as hub:
        connection = http.client.HTTPConnection(hub.host, hub.ports["web"], timeout=10)
        connection.request("POST", "/api/v1/tokens", headers={"Authorization": AUTH})
        token = json.loads(connection.getresponse().read())["token"]
        connection.close()
        results: dict[str, list[float]] = {"API long poll": [], "IMAP polling (50 ms)": []}
        for i in range(args.rounds):
            results["API long poll"].append(long_poll(hub, token, f"lp{i}"))
            results["IMAP polling (50 ms)"].append(imap_poll(hub, f"ip{i}"))
            hub.purge()
    print(f"delivery (SMTP 250) to the waiter's answer, {args.rounds} rounds (ms): median / best / worst")
    for name, runs in results.items():
        ms = [r * 1000 for r in runs]
        print(f"  {name:24s} {statistics.median(ms):7.1f} / {min(ms):6.1f} / {max(ms):6.1f}")
    median = statistics.median(results["API long poll"]) * 1000
    print(f"target: long poll under 100 ms -> {'met' if median < 100 else 'NOT met'} ({median:.1f} ms)")


if __name__ == "__main__":
    main()
