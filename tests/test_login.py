from twisted.cred import credentials, error
from twisted.cred.portal import Portal
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub.accounts import AccountBook, AccountChecker
from twisted_mailhub.login import ClientPortal, LoginThrottle
from twisted_mailhub.realm import MailhubRealm


class Marker:
    pass


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        book = AccountBook(["example.org"])
        book.add("alice", "secret")
        realm = MailhubRealm(book)
        realm.register(Marker, lambda account, mind: (account, lambda: None))
        self.portal = ClientPortal(Portal(realm, [AccountChecker(book)]), LoginThrottle(self.clock), "192.0.2.1", "test")

    def login(self, password):
        return self.portal.login(credentials.UsernamePassword(b"alice", password), None, Marker)

    def test_ten_failures_take_at_least_five_seconds(self):
        waited = 0.0
        for _ in range(10):
            d = self.login(b"wrong")
            answered = []
            d.addBoth(lambda r: answered.append(r) or r)
            self.assertNoResult(d)
            # Advance until the answer comes, counting the time it took.
            while not answered:
                self.clock.advance(0.05)
                waited += 0.05
            self.failureResultOf(d, error.UnauthorizedLogin)
        self.assertGreaterEqual(waited, 5.0)
        # ...and the right password still works, at once.
        iface, account, logout = self.successResultOf(self.login(b"secret"))
        self.assertEqual(account.address, "alice@example.org")

    def test_success_resets_the_delay(self):
        for _ in range(3):
            d = self.login(b"wrong")
            self.clock.advance(10)
            self.failureResultOf(d)
        self.successResultOf(self.login(b"secret"))
        d = self.login(b"wrong")
        self.clock.advance(0.1)
        self.failureResultOf(d)
