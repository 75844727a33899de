#!/usr/bin/env python3
"""
Benchmark: what DKIM signing and the inbound SPF/DKIM/DMARC checks cost.

    python3 bench/mailauth.py                 # 8 clients x 100 messages, 3 rounds
    python3 bench/mailauth.py --clients 16 --messages 200 --rounds 5

Two hubs run side by side in the same run and are measured in alternation
(ABAB), with the same client: smtplib in N threads, one message per round
trip as ordinary clients send.

 - Submission: alice@a.test logs in (AUTH PLAIN) and sends 1 KB messages
   to herself: the hub with signing (two signatures, rsa-sha256 and
   ed25519-sha256) against the same hub with --no-dkim.
 - MX: 1 KB messages from outside (--trusted-networks leaves out
   loopback) for bob@b.test, from a sender whose domain publishes SPF,
   DKIM and DMARC on a twisted.names server on loopback: the hub with the
   checks against the same hub with --no-sender-checks.

Reported: messages/s (median of the rounds) and the server's CPU time per
message (user + system, all threads, from /proc), which moves far less
than messages/s when other processes load the machine.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.hubprocess import HubProcess  # noqa: E402
from tests.test_e2e_relay import loopback_dns  # noqa: E402

BODY = b"x" * 900 + b"\r\n"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, clients: int, messages: int, login=None, sender="alice@a.test", to="alice@a.test") -> int:
    sent = [0] * clients

    def client(i):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("bench.example")
            if login:
                s.login(*login)
            for n in range(messages):
                msg = (
                    f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: bench {i}-{n}\r\n"
                    f"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{i}.{n}@a.test>\r\n\r\n"
                ).encode() + BODY
                s.sendmail(sender, [to], msg)
                sent[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent)


def measure(hub: HubProcess, port_name: str, clients: int, messages: int, **kwargs) -> tuple[float, float]:
    pid = hub.process.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    n = load(hub.ports[port_name], clients, messages, **kwargs)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    return n / elapsed, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--messages", type=int, default=100, help="per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mailauth-bench-")

    # a.test's keys first, so the DNS server can publish them.
    import subprocess

    data_signed = os.path.join(work, "signed")
    os.makedirs(data_signed)
    out = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.mailauth", "make", "--data", data_signed, "--domain", "a.test", "--hostname", "mx.a.test"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True,
    ).stdout
    import re

    zones = {
        "a.test": {"a.test": [["TXT", "v=spf1 ip4:127.0.0.1 -all"]], "_dmarc.a.test": [["TXT", "v=DMARC1; p=reject"]]},
    }
    for line in out.splitlines():
        m = re.match(r"(\S+)\. IN TXT (.*)$", line)
        if m and "_domainkey" in m.group(1):
            zones["a.test"][m.group(1)] = [["TXT", "".join(re.findall(r'"([^"]*)"', m.group(2)))]]
    dns = loopback_dns(zones)
    server = next(dns)
    hubs = []
    try:
        def start(name, data, *extra):
            os.makedirs(data, exist_ok=True)
            hub = HubProcess(data, ["--domain", "a.test", "--domain", "b.test", "--dns-server", server, *extra], users=["alice@a.test:secret", "bob@b.test:hungry"])
            hubs.append(hub)
            return hub.start()

        signing = start("signing", data_signed)
        plain = start("plain", os.path.join(work, "plain"), "--no-dkim", "--no-sender-checks")
        outside = ["--trusted-networks", "192.0.2.0/24"]
        checking = start("checking", os.path.join(work, "checking"), "--no-dkim", *outside)
        unchecked = start("unchecked", os.path.join(work, "unchecked"), "--no-dkim", "--no-sender-checks", *outside)

        # A signed message from a.test, as the MX of b.test receives it.
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in ("signed", "unsigned", "checked", "unchecked")}
        for _ in range(args.rounds):
            results["signed"].append(measure(signing, "submission", args.clients, args.messages, login=("alice@a.test", "secret")))
            results["unsigned"].append(measure(plain, "submission", args.clients, args.messages, login=("alice@a.test", "secret")))
            results["checked"].append(measure(checking, "smtp", args.clients, args.messages, to="bob@b.test"))
            results["unchecked"].append(measure(unchecked, "smtp", args.clients, args.messages, to="bob@b.test"))
        print(f"{args.clients} clients x {args.messages} messages of 1 KB, {args.rounds} rounds, medians")
        for name, runs in results.items():
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"  {name:10s} {rate:8.0f} msg/s   {cpu:8.0f} us server CPU per message")
        s, u = (statistics.median(c for _, c in results[k]) for k in ("signed", "unsigned"))
        c, n = (statistics.median(x for _, x in results[k]) for k in ("checked", "unchecked"))
        print(f"  DKIM signing costs {s - u:.0f} us of server CPU per message; the inbound checks {c - n:.0f} us")
    finally:
        for hub in hubs:
            hub.stop()
        dns.close()


if __name__ == "__main__":
    main()
