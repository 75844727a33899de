from twisted.cred import credentials, error
from twisted.mail.pop3 import APOPCredentials
from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub.accounts import AccountBook, AccountChecker, hash_password, verify_hash


class AccountBookTests(SynchronousTestCase):
    def setUp(self):
        self.book = AccountBook(["example.org", "other.test"])
        self.book.add("alice", "secret")
        self.book.add("bob@other.test", hash_password("hungry"))
        self.checker = AccountChecker(self.book)

    def test_bare_name_gets_default_domain(self):
        self.assertEqual(self.book.find("alice").address, "alice@example.org")
        self.assertEqual(self.book.find("ALICE@Example.ORG").address, "alice@example.org")
        self.assertIsNone(self.book.find("alice@other.test"))

    def test_every_spelling_of_an_address_finds_the_same_account(self):
        self.book.add('"odd+name"', "x")
        for name in ("bob@other.test", "Bob@Other.Test", "bob@other.test.", " bob@other.test ", '"bob"@other.test', b"bob@other.test"):
            self.assertEqual(self.book.find(name).address, "bob@other.test", name)
        self.assertEqual(self.book.find('"odd+name"@example.org').localpart, "odd+name")
        self.assertEqual(self.book.find("odd+name@example.org").localpart, "odd+name")
        self.assertIsNone(self.book.find('"odd+name@example.org"'))
        self.assertIsNone(self.book.find("bob@example.org"))

    def test_plain_password_checks(self):
        creds = credentials.UsernamePassword(b"alice", b"secret")
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(creds)), "alice@example.org")
        bad = credentials.UsernamePassword(b"alice", b"nope")
        self.failureResultOf(self.checker.requestAvatarId(bad), error.UnauthorizedLogin)

    def test_hashed_password_works_for_plain_mechanisms_only(self):
        creds = credentials.UsernamePassword(b"bob@other.test", b"hungry")
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(creds)), "bob@other.test")
        import hashlib

        digest = hashlib.md5(b"<1.2@x>hungry").hexdigest().encode()
        apop = APOPCredentials(b"<1.2@x>", b"bob@other.test", digest)
        self.failureResultOf(self.checker.requestAvatarId(apop), error.UnauthorizedLogin)

    def test_apop_with_plain_password(self):
        import hashlib

        digest = hashlib.md5(b"<1.2@x>secret").hexdigest().encode()
        apop = APOPCredentials(b"<1.2@x>", b"alice", digest)
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(apop)), "alice@example.org")

    def test_unknown_user_fails(self):
        creds = credentials.UsernamePassword(b"mallory", b"secret")
        self.failureResultOf(self.checker.requestAvatarId(creds), error.UnauthorizedLogin)

    def test_hash_round_trip_and_tamper(self):
        h = hash_password("pw")
        self.assertTrue(verify_hash(h, b"pw"))
        self.assertFalse(verify_hash(h, b"pw2"))
        self.assertFalse(verify_hash("$scrypt$garbage", b"pw"))

    def test_accounts_file(self):
        import tempfile, os

        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt") as f:
            f.write("# comment\ncarol@example.org:pa:ss\n\n")
        try:
            self.assertEqual(self.book.load_file(f.name), 1)
        finally:
            os.unlink(f.name)
        # Only the first colon separates: passwords may hold colons.
        self.assertTrue(self.book.find("carol").check_password(b"pa:ss"))

    def test_names_that_cannot_be_a_mailbox_are_refused(self):
        for bad in ("../x", ".hidden", "a/b", ""):
            with self.assertRaises(ValueError):
                self.book.add(bad, "pw")

    def test_an_address_without_a_usable_domain_is_refused(self):
        # "a@" was an account of the domain "": its every login failed with
        # a traceback and "-ERR [SYS/TEMP]" (the store has no folder for it).
        for bad in ("a@", "a@.", "a@.example.org", "a@x..org", "a@x/y", "a@x y", "a@x\x1by"):
            with self.assertRaises(ValueError) as caught:
                self.book.add(bad, "pw")
            self.assertIn("not a usable domain after the @", str(caught.exception))
            self.assertNotIn("\x1b", str(caught.exception))
        self.assertNotIn("", self.book.domains)
        for good in ("b@example.org.", "c@exämple.test", "d@[127.0.0.1]"):
            self.book.add(good, "pw")


def test_a_password_that_cannot_be_utf_8_is_refused_when_the_account_is_made():
    # "--user alice:p<0xe9>" from a Latin-1 shell (Python keeps the octet as
    # a lone surrogate): every login of that account failed with a server
    # error and a traceback.
    import pytest

    from twisted_mailhub.accounts import AccountBook

    book = AccountBook(["localhost"])
    with pytest.raises(ValueError) as caught:
        book.add("alice", "p\udce9")
    assert str(caught.value) == "alice: the password is not UTF-8 text (character 2); set the terminal or file to UTF-8"
    assert book.find("alice") is None
    assert book.add("alice", "p\u00e9").password == "p\u00e9"
