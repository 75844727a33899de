"""
The hub's own self-signed certificate (twisted_mailhub.tls): which names
it is made for, and what the hub says when the one it keeps does not
name its --hostname (a host renamed after the first start).
"""

from __future__ import annotations

import os

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from twisted_mailhub.tls import make_self_signed, names_in, server_context


class SelfSignedTests(unittest.TestCase):
    def setUp(self):
        self.data = self.mktemp()
        os.makedirs(self.data)
        self.cert = os.path.join(self.data, "tls", "cert.pem")
        self.key = os.path.join(self.data, "tls", "key.pem")
        self.said: list[str] = []

        def observer(event):
            if event.get("log_namespace") == "twisted_mailhub.tls":
                from twisted.logger import formatEvent

                self.said.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def names(self) -> list[str]:
        with open(self.cert, "rb") as f:
            return names_in(f.read())

    def test_the_certificate_names_the_hostname_localhost_and_the_loopback_addresses(self):
        make_self_signed("mail.example.test", self.cert, self.key)
        self.assertEqual(self.names(), ["mail.example.test", "localhost", "127.0.0.1", "::1"])
        self.assertEqual(os.stat(self.key).st_mode & 0o777, 0o600)

    def test_each_name_is_in_the_certificate_once(self):
        make_self_signed("localhost", self.cert, self.key)
        self.assertEqual(self.names(), ["localhost", "127.0.0.1", "::1"])

    def test_an_ip_address_hostname_is_named_as_an_ip_address(self):
        # A client that connects to 192.0.2.1 checks the iPAddress entries,
        # never a dNSName "192.0.2.1" (RFC 6125 §6.2.1; RFC 5280 §4.2.1.6).
        make_self_signed("192.0.2.1", self.cert, self.key)
        self.assertEqual(self.names(), ["localhost", "192.0.2.1", "127.0.0.1", "::1"])

    def test_a_kept_certificate_that_does_not_name_a_new_hostname_is_kept_and_said(self):
        server_context(self.data, "old.example.test")
        with open(self.cert, "rb") as f:
            first = f.read()
        self.assertEqual(self.said, [])
        server_context(self.data, "new.example.test")
        with open(self.cert, "rb") as f:
            self.assertEqual(f.read(), first)  # kept: a client may have pinned it
        [said] = self.said
        self.assertIn("was made for old.example.test, localhost, 127.0.0.1, ::1, not for this hub's --hostname new.example.test", said)
        self.assertIn(f"remove {self.cert} and {self.key}", said)

    def test_no_word_when_the_kept_certificate_names_the_hostname(self):
        server_context(self.data, "Mail.Example.Test")
        server_context(self.data, "mail.example.test.")
        server_context(self.data, "localhost")
        self.assertEqual(self.said, [])

    def test_no_word_about_a_certificate_given_with_tls_cert(self):
        make_self_signed("other.example.test", self.cert, self.key)
        server_context(self.data, "mail.example.test", self.cert, self.key)
        self.assertEqual(self.said, [])
