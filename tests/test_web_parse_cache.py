# -*- test-case-name: tests.test_web_parse_cache -*-
"""
The web face's parse of a big stored message (its page, its anatomy) is
kept for the next page of the same message (web/message.py: parse with an
identity), bounded in octets; a small one, or one without an identity, is
parsed each time.
"""

from __future__ import annotations

import email

from twisted.trial import unittest

from twisted_mailhub.web import message as msgparse

BIG = b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n" + b"QUJD\r\n" * 200000 + b"--b--\r\n"


class ParseCacheTests(unittest.TestCase):
    def setUp(self):
        self.patch(msgparse, "_parsed", msgparse.OrderedDict())
        self.patch(msgparse, "_parsed_bytes", [0])
        self.parses = 0
        real = email.message_from_bytes

        def counting(*args, **kw):
            self.parses += 1
            return real(*args, **kw)

        self.patch(email, "message_from_bytes", counting)

    def test_a_big_message_is_parsed_once_for_the_same_identity(self):
        identity = ("alice@localhost", "INBOX", 17, 1, "1.M1P1Q1.host,S=1", len(BIG))
        first = msgparse.parse(BIG, identity=identity)
        again = msgparse.parse(BIG, identity=identity)
        self.assertEqual(self.parses, 1)  # (before: parsed on every page)
        self.assertIs(again, first)
        self.assertEqual([p.get_content_type() for p in msgparse.parts(again)], ["multipart/mixed", "text/plain", "application/octet-stream"])
        other = msgparse.parse(BIG, identity=("bob@localhost",) + identity[1:])
        self.assertIsNot(other, first)  # (another account's message: its own entry)
        self.assertEqual(self.parses, 2)

    def test_small_messages_and_calls_without_an_identity_are_parsed_each_time(self):
        small = b"Subject: s\r\n\r\nhi\r\n"
        msgparse.parse(small, identity=("a", "INBOX", 1, 1, "k", len(small)))
        msgparse.parse(small, identity=("a", "INBOX", 1, 1, "k", len(small)))
        msgparse.parse(BIG)
        msgparse.parse(BIG)
        self.assertEqual(self.parses, 4)
        self.assertEqual(msgparse._parsed_bytes[0], 0)

    def test_the_cache_keeps_at_most_its_octets_the_least_recently_used_going_first(self):
        self.patch(msgparse, "PARSE_CACHE_BYTES", 3 * len(BIG))
        for uid in range(1, 6):
            msgparse.parse(BIG, identity=("a", "INBOX", 1, uid, "k", len(BIG)))
        self.assertEqual([key[0][3] for key in msgparse._parsed], [3, 4, 5])
        self.assertLessEqual(msgparse._parsed_bytes[0], 3 * len(BIG))
        msgparse.parse(BIG, identity=("a", "INBOX", 1, 3, "k", len(BIG)))  # (used again: kept longest)
        msgparse.parse(BIG, identity=("a", "INBOX", 1, 6, "k", len(BIG)))
        self.assertEqual([key[0][3] for key in msgparse._parsed], [5, 3, 6])
