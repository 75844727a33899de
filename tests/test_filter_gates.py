"""
The built-in end-of-data filters (the sender checks and the DKIM signer,
twisted_mailhub/mailauth) say from the session alone whether they apply
(C{applies_to_session}); the SMTP delivery asks them, through gates found
once per list of filters (L{delivery.end_of_data_gates}), before it makes
an L{Envelope}. A message no filter applies to (a trusted client that did
not log in: what every local bench and most local delivery is) goes to
the store with no Envelope made and no filter called; every other one
goes through the filters as before.
"""

from __future__ import annotations

import pytest

from twisted_mailhub.hub import TrustedNetworks
from twisted_mailhub.mailauth.checks import InboundChecks
from twisted_mailhub.mailauth.signing import DKIMSigner
from twisted_mailhub.smtp import delivery

MESSAGE = b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n"


class FakeHub:
    hostname = "mail.test"

    def __init__(self, filters):
        self.trusted = TrustedNetworks("127.0.0.0/8,::1/128")
        self.filters = filters
        self.reactor = None


class Plugin:
    """A --filter plugin: no applies_to_session, so it sees every message."""

    def __init__(self, seen):
        self.seen = seen

    def end_of_data(self, envelope, message):
        self.seen.append(("plugin", envelope.client_address))


def _hub(seen, monkeypatch, *extra):
    hub = FakeHub([])
    hub.filters += [InboundChecks(hub, None, False, 10.0, None), DKIMSigner({}, None, None), *extra]
    monkeypatch.setattr(InboundChecks, "end_of_data", lambda self, envelope, message: seen.append(("checks", envelope.client_address)))
    monkeypatch.setattr(DKIMSigner, "end_of_data", lambda self, envelope, message: seen.append(("sign", envelope.authenticated)))
    made = []
    real_envelope_of = delivery.envelope_of

    def envelope_of(*args):
        made.append(args)
        return real_envelope_of(*args)

    monkeypatch.setattr(delivery, "envelope_of", envelope_of)
    monkeypatch.setattr(delivery, "_store", lambda hub, session, sender, recipients, message, counted=None, dsn=None: ("stored", message))
    return hub, made


def _session(client_ip, authenticated=None):
    return delivery.Session(helo="client.test", client_ip=client_ip, hostname="mail.test", esmtp=True, tls=False, authenticated=authenticated)


def _deliver(hub, session, n=1):
    recipient = delivery.Verdict(250, "2.1.5 Ok", kind="local", address="bob@localhost")
    for _ in range(n):
        assert delivery._deliver(hub, session, "a@example.org", [recipient], MESSAGE)[0] == "stored"


def test_a_trusted_client_that_did_not_log_in_makes_no_envelope_and_calls_no_filter(monkeypatch):
    seen = []
    hub, made = _hub(seen, monkeypatch)
    _deliver(hub, _session("127.0.0.1"), n=100)
    _deliver(hub, _session("::1"), n=100)
    assert made == [] and seen == []


@pytest.mark.parametrize(
    "client_ip, authenticated",
    [
        ("192.0.2.7", None),  # mail from outside: checked
        ("127.0.0.1", "alice@localhost"),  # submitted: may be signed
        ("192.0.2.7", "alice@localhost"),  # submitted from outside: may be signed
    ],
)
def test_mail_a_built_in_filter_applies_to_still_goes_through_the_filters(monkeypatch, client_ip, authenticated):
    # Each filter's end_of_data is called, in order, as before (each still
    # decides there what it does with the message).
    seen = []
    hub, made = _hub(seen, monkeypatch)
    _deliver(hub, _session(client_ip, authenticated), n=3)
    assert len(made) == 3
    assert seen == [("checks", client_ip), ("sign", authenticated)] * 3


def test_a_filter_plugin_sees_every_message_even_a_trusted_clients(monkeypatch):
    seen = []
    hub, made = _hub(seen, monkeypatch, Plugin(seen))
    _deliver(hub, _session("127.0.0.1"), n=2)
    assert len(made) == 2
    assert seen == [("checks", "127.0.0.1"), ("sign", None), ("plugin", "127.0.0.1")] * 2


def test_the_gates_follow_the_list_of_filters(monkeypatch):
    # Found once per list of filters: a filter added later is seen.
    seen = []
    hub, made = _hub(seen, monkeypatch)
    _deliver(hub, _session("127.0.0.1"))
    assert made == []
    hub.filters.append(Plugin(seen))
    _deliver(hub, _session("127.0.0.1"))
    assert seen == [("checks", "127.0.0.1"), ("sign", None), ("plugin", "127.0.0.1")]
