"""
/metrics and /healthz on the web listener (issue 14): parsed with
prometheus_client's own parser, the counters move as a test logs in and
sends mail, and strangers are refused.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.hubprocess import client_context


def scrape(hub) -> dict:
    """Every sample as {(name, frozenset(labels.items())): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = reply.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_as_mail_is_sent_and_logins_fail(hub):
    before = scrape(hub)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as client:
        client.sendmail("judy@jbc.test", ["alice@localhost"], b"Subject: one\r\n\r\nhello\r\n")
        client.sendmail("judy@jbc.test", ["bob@localhost"], b"Subject: two\r\n\r\nhello again\r\n")
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    with pytest.raises(poplib.error_proto):
        pop.user("alice")
        pop.pass_("wrong")
    pop.close()
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("alice")
    pop.pass_("secret")
    pop.quit()
    after = scrape(hub)
    assert value(after, "mailhub_messages_total", result="accepted", reason="") - value(before, "mailhub_messages_total", result="accepted", reason="") == 2
    assert value(after, "mailhub_message_octets_received_total") - value(before, "mailhub_message_octets_received_total") >= 2 * len(b"Subject: one\r\n\r\nhello\r\n")
    assert value(after, "mailhub_delivery_durable_seconds_count") - value(before, "mailhub_delivery_durable_seconds_count") == 2
    assert value(after, "mailhub_logins_total", protocol="pop3", result="failed") == 1
    assert value(after, "mailhub_logins_total", protocol="pop3", result="ok") == 1
    assert value(after, "mailhub_connections_accepted_total", listener="smtp") >= 1
    assert value(after, "mailhub_connections_accepted_total", listener="pop3") == 2
    assert value(after, "mailhub_connections_open", listener="web") >= 0
    assert value(after, "mailhub_listener_up", listener="imap") == 1
    assert value(after, "mailhub_queue_messages") == 0
    assert value(after, "mailhub_data_free_bytes") > 0


def test_ftp_transfers_are_counted_by_direction_with_their_octets(hub):
    import ftplib
    import io

    before = scrape(hub)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    ftp.login("alice", "secret")
    ftp.storbinary("STOR notes.txt", io.BytesIO(b"x" * 3000))
    got = io.BytesIO()
    ftp.retrbinary("RETR notes.txt", got.write)
    ftp.nlst()
    ftp.quit()
    after = scrape(hub)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mailhub_ftp_transfers_total", direction="upload") == 1
    assert moved("mailhub_ftp_transfers_total", direction="download") == 1
    assert moved("mailhub_ftp_transfers_total", direction="listing") == 1
    assert moved("mailhub_ftp_octets_total", direction="upload") == 3000
    assert moved("mailhub_ftp_octets_total", direction="download") == 3000


def test_metrics_are_refused_outside_the_trusted_networks(start_hub):
    import http.client

    hub = start_hub("--trusted-networks", "192.0.2.0/24")
    # Plain HTTP from outside the trusted networks is sent to HTTPS...
    plain = http.client.HTTPConnection("127.0.0.1", hub.ports["web"], timeout=10)
    plain.request("GET", "/metrics")
    reply = plain.getresponse()
    assert 300 <= reply.status < 400 and reply.getheader("Location", "").startswith("https://")
    plain.close()
    # ...where a stranger is refused, with ALPN offered as every browser and
    # curl do (Twisted's own ALPN callback broke such handshakes).
    ctx = client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{hub.ports['webs']}/metrics", timeout=10, context=ctx)
    assert refused.value.code == 403


def test_healthz_is_ok_until_the_data_folder_takes_no_write(hub):
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/healthz", timeout=10) as reply:
        assert reply.status == 200 and reply.read() == b"ok\n"
    # The data folder gone (moved away, as a lost mount would leave it):
    # no write can succeed, whoever the hub runs as.
    moved = hub.data_dir + ".away"
    os.rename(hub.data_dir, moved)
    try:
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/healthz", timeout=10)
        assert unhealthy.value.code == 503 and b"the data folder takes no write" in unhealthy.value.read()
    finally:
        os.rename(moved, hub.data_dir)
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/healthz", timeout=10) as reply:
        assert reply.status == 200


def test_web_and_sftp_logins_are_counted_too(hub):
    import paramiko

    from tests.web_helpers import WebClient

    before = scrape(hub)
    WebClient(hub).login("alice", "secret")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="bob", password="hungry", look_for_keys=False, allow_agent=False, timeout=10)
    client.close()
    after = scrape(hub)
    for protocol in ("web", "sftp"):
        assert value(after, "mailhub_logins_total", protocol=protocol, result="ok") - value(before, "mailhub_logins_total", protocol=protocol, result="ok") == 1


def test_accepted_messages_counted_in_plain_integers_read_as_prometheus_would_count_each(tmp_path):
    """
    message_accepted counts in plain integers and hands them over when
    /metrics is made: the text is what a Prometheus observe() per
    message gives (every bucket, sum, count, octets), and counting goes
    on after a scrape.
    """
    from types import SimpleNamespace

    from twisted_mailhub.metrics import HubMetrics

    hub = SimpleNamespace(relay=None, data_dir=str(tmp_path), _listeners=[], listening=set())
    folded, direct = HubMetrics(hub), HubMetrics(hub)
    hub.metrics = folded
    # On bucket bounds, between them, above the last (+Inf).
    deliveries = [(1024, 0.0004), (10, 0.001), (2048, 0.0011), (5, 0.3), (7, 10.0), (9, 12.5), (100, 0.02)]

    def exposed(metrics) -> dict:
        samples = {}
        for family in text_string_to_metric_families(metrics.exposition().decode("utf-8")):
            for s in family.samples:
                if not s.name.endswith("_created") and s.name.startswith(("mailhub_messages", "mailhub_message_octets", "mailhub_delivery_durable")):
                    samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    for rounds in (deliveries[:4], deliveries[4:]):
        for octets, seconds in rounds:
            folded.message_accepted(octets, seconds)
            direct.accepted_messages.inc()
            direct.message_octets.inc(octets)
            direct.store_latency.observe(seconds)
        got, want = exposed(folded), exposed(direct)
        assert got.keys() == want.keys()
        for key, expected in want.items():
            assert got[key] == pytest.approx(expected), key
    assert value(got, "mailhub_messages_total", result="accepted", reason="") == len(deliveries)
    assert value(got, "mailhub_delivery_durable_seconds_bucket", le="0.001") == 2
    assert value(got, "mailhub_delivery_durable_seconds_bucket", le="+Inf") == len(deliveries)
    assert value(got, "mailhub_message_octets_received_total") == sum(o for o, _ in deliveries)
