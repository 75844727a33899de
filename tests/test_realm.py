from twisted.cred import credentials
from twisted.cred.portal import Portal
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface

from twisted_mailhub.accounts import AccountBook, AccountChecker
from twisted_mailhub.realm import MailhubRealm, UnknownInterface


class IOne(Interface):
    pass


class ITwo(Interface):
    pass


class RealmTests(SynchronousTestCase):
    def setUp(self):
        self.book = AccountBook(["example.org"])
        self.book.add("alice", "secret")
        self.realm = MailhubRealm(self.book)
        self.portal = Portal(self.realm, [AccountChecker(self.book)])

    def test_one_account_gets_an_avatar_per_registered_interface(self):
        self.realm.register(IOne, lambda account, mind: (("one", account.address), lambda: None))
        self.realm.register(ITwo, lambda account, mind: (("two", account.address), lambda: None))
        creds = credentials.UsernamePassword(b"alice", b"secret")
        for iface, tag in ((IOne, "one"), (ITwo, "two")):
            got_iface, avatar, logout = self.successResultOf(self.portal.login(creds, None, iface))
            self.assertIs(got_iface, iface)
            self.assertEqual(avatar, (tag, "alice@example.org"))

    def test_unregistered_interface_fails_the_login(self):
        creds = credentials.UsernamePassword(b"alice", b"secret")
        self.failureResultOf(self.portal.login(creds, None, IOne), UnknownInterface)

    def test_anonymous_gets_no_account(self):
        seen = []
        self.realm.register(IOne, lambda account, mind: (seen.append(account), lambda: None))
        self.realm.requestAvatar((), None, IOne)
        self.assertEqual(seen, [None])
