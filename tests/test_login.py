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
        self.book = book = AccountBook(["example.org"])
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

    def test_one_client_tries_one_password_at_a_time(self):
        # Twenty wrong passwords and the right one all at once (twenty-one
        # HTTP requests, or connections): each is checked only once the
        # attempts before it are answered, so the right one is not found
        # at once, and two seconds let five guesses through, not twenty.
        wrong = [self.login(b"guess%d" % n) for n in range(20)]
        right = self.login(b"secret")
        self.assertNoResult(right)
        self.clock.advance(0)
        answered = 0
        for _ in range(20):
            self.clock.advance(0.1)
        for d in wrong:
            result = []
            d.addBoth(lambda r, result=result: (result.append(r), r)[1])
            answered += len(result)
        self.assertEqual(answered, 5)  # held 0.1 + 0.2 + 0.3 + 0.4 + 0.5 = 1.5 s; the sixth 2.1 s
        self.assertNoResult(right)
        for _ in range(30):
            self.clock.advance(10)  # (the cap: each hold is at most 10 s)
        for d in wrong:
            self.failureResultOf(d, error.UnauthorizedLogin)
        iface, account, logout = self.successResultOf(right)
        self.assertEqual(account.address, "alice@example.org")

    def test_a_client_after_a_success_and_other_clients_are_not_held(self):
        first, second = self.login(b"secret"), self.login(b"secret")
        self.successResultOf(first)
        self.successResultOf(second)
        other = ClientPortal(self.portal.portal, self.portal.throttle, "192.0.2.2", "test")
        wrong = self.login(b"wrong")
        self.assertEqual(other.login(credentials.UsernamePassword(b"alice", b"secret"), None, Marker).result[1].address, "alice@example.org")
        # Another account from the same address (a classroom behind one
        # NAT) is not held up behind it either.
        self.book.add("bob", "hungry")
        bob = self.portal.login(credentials.UsernamePassword(b"bob", b"hungry"), None, Marker)
        self.assertEqual(self.successResultOf(bob)[1].address, "bob@example.org")
        self.clock.advance(10)
        self.failureResultOf(wrong, error.UnauthorizedLogin)
