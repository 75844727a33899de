# -*- test-case-name: tests.test_accounts -*-
"""
Accounts and the credential checker every protocol shares.

An account is a mail address (C{localpart@domain}) with a password. The
password is kept either in plain text, which allows the challenge-response
mechanisms that need it (APOP, CRAM-MD5), or as an scrypt hash (stdlib
C{hashlib.scrypt}), which only allows mechanisms that send the password
itself (USER/PASS, LOGIN, PLAIN, AUTH PLAIN/LOGIN, FTP PASS).

Login names are the full address, or the bare local part for the default
(first) domain. Domains compare case-insensitively (RFC 5321 §2.4); local
parts are kept as given but matched case-insensitively too, because people
type them by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, Iterable

import attr
from twisted.cred import credentials as _credentials
from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer

SCRYPT_PREFIX = "$scrypt$"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """
    Hash C{password} for an accounts file: C{$scrypt$n=16384,r=8,p=1$salt$hash}.
    """
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P
    )
    b64 = lambda b: base64.b64encode(b).decode("ascii").rstrip("=")  # noqa: E731
    return f"{SCRYPT_PREFIX}n={_SCRYPT_N},r={_SCRYPT_R},p={_SCRYPT_P}${b64(salt)}${b64(digest)}"


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def verify_hash(stored: str, password: bytes) -> bool:
    """
    Check C{password} against a C{hash_password} string, in constant time.
    """
    try:
        params, salt, digest = stored[len(SCRYPT_PREFIX) :].split("$")
        p = dict(kv.split("=") for kv in params.split(","))
        want = _unb64(digest)
        got = hashlib.scrypt(
            password,
            salt=_unb64(salt),
            n=int(p["n"]),
            r=int(p["r"]),
            p=int(p["p"]),
            dklen=len(want),
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(got, want)


class AccountsFileError(ValueError):
    """
    An accounts file that cannot be read or has a line that is not an
    account; the message is one line naming the file and line number.
    """


@attr.s(auto_attribs=True, frozen=True)
class Account:
    """
    One user of the hub: a mail address and its password (plain or hashed).
    """

    localpart: str
    domain: str
    password: str | None = attr.ib(default=None, repr=False)
    password_hash: str | None = attr.ib(default=None, repr=False)
    # octets of storage (twisted_mailhub.quota), None for the hub's --quota
    quota: int | None = None

    @property
    def address(self) -> str:
        return f"{self.localpart}@{self.domain}"

    def check_password(self, password: bytes) -> bool:
        """
        Is C{password} (as sent by the client) this account's password? An
        empty one never is (an account whose password is empty, from a
        table or an older file, logs in nobody).
        """
        if not password:
            return False
        if self.password is not None:
            return hmac.compare_digest(self.password.encode("utf-8"), password)
        if self.password_hash is not None:
            return verify_hash(self.password_hash, password)
        return False


def unquote_local_part(local: str) -> str:
    """
    A local part given as a Quoted-string (RFC 5321 §4.1.2, RFC 5322
    §3.4.1) as the text it quotes: C{"bob"} and C{"b\\ob"} are C{bob}, the
    same mailbox (RFC 5321 §2.4 asks to compare the unquoted form). Anything
    else is returned as given.
    """
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return local
    out = []
    quoted = iter(local[1:-1])
    for c in quoted:
        if c == "\\":
            c = next(quoted, "")
        elif c == '"':
            return local  # an unescaped quote inside: not one Quoted-string
        out.append(c)
    return "".join(out)


def usable_domain(domain: str) -> bool:
    """
    Whether C{domain} (lowercased, without a final dot) can be an
    account's domain: not empty, no empty or C{..} label, no C{/}, C{\\},
    blank or control character (it names a folder of the store). A
    U-label (RFC 6531: C{exämple.test}) or an address literal is fine.
    """
    if not domain or domain.startswith(".") or ".." in domain:
        return False
    return not any(c in "/\\" or c.isspace() or not c.isprintable() for c in domain)


# The one rule for an account's name (RFC 5321 §4.1.2, §4.5.3.1.1), used by
# every way an account is made: --user, --auth memory:, accounts files
# (AccountBook.add), mailhub-admin user add, the API's POST /accounts and
# the PostgreSQL user_account table (cluster/accounts.py).
MAX_LOCAL_PART = 64  # octets, RFC 5321 §4.5.3.1.1
_REFUSED_IN_LOCAL_PART = {
    "@": "an @ (the local part ends at the last one: it could never be given in RCPT TO)",
    ":": "a colon (it ends the address in an accounts file and in --user)",
    ";": "a semicolon (it starts an account's attributes in an accounts file: alice;quota=500M)",
    "/": "a /",
    "\\": "a backslash",
    '"': "a double quote",
}


def account_name_problem(local: str, domain: str) -> str | None:
    """
    Why C{local}@C{domain} (local part unquoted) cannot be an account's
    name, in a few words, or L{None} when it can.

    The rule: the local part is 1 to 64 octets (UTF-8) of printable
    characters, with no blank or other white space (SMTP takes no address
    with one unquoted, and the hub's SMTP takes none at all: such an
    account could log in but never be sent mail), none of C{@ : ; / \\ "},
    and does not start with a dot (the name is a folder of the store); a
    quoted local part (C{"bob"}) stands for what it quotes (C{bob}). The
    domain is L{usable_domain}.
    """
    if not local:
        return "no local part before the @"
    if local.startswith("."):
        return "a local part starting with a dot"
    for c in local:
        if c.isspace():
            return "a blank or other white space (not allowed in an account's name: it could never be sent mail)"
        if not c.isprintable():
            return "a control or invisible character"
        why = _REFUSED_IN_LOCAL_PART.get(c)
        if why is not None:
            return why
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        return f"a local part of more than {MAX_LOCAL_PART} octets (RFC 5321 section 4.5.3.1.1)"
    if not usable_domain(domain):
        return _NO_DOMAIN
    return None


_NO_DOMAIN = "no usable domain"


def shown_name(name: str, limit: int = 200) -> str:
    """C{name} as an error may show it: control and invisible characters as C{<U+XXXX>}."""
    return "".join(c if c.isprintable() or c == " " else f"<U+{ord(c):04X}>" for c in name[:limit])


def check_account_name(name: str, default_domain: str) -> tuple[str, str]:
    """
    C{name} (an address, or a bare local part for C{default_domain}) as
    (local part unquoted, domain lowercased without a final dot).

    @raise ValueError: one line: C{not a usable mailbox name: NAME: why}
        or C{not a usable domain after the @ in NAME (...)}
        (L{account_name_problem}).
    """
    local, domain = AccountBook([default_domain]).split(name)
    why = account_name_problem(local, domain)
    if why == _NO_DOMAIN:
        raise ValueError(f"not a usable domain after the @ in {shown_name(name.strip())} (want e.g. alice@example.org, or a bare alice for the default domain)")
    if why is not None:
        raise ValueError(f"not a usable mailbox name: {shown_name(name.strip())}: {why}")
    return local, domain


class AccountBook:
    """
    All accounts of the hub, and the rules that turn a login name or a mail
    address into one.
    """

    def __init__(self, domains: Iterable[str]):
        self.domains = [d.lower() for d in domains] or ["localhost"]
        self._accounts: dict[str, Account] = {}

    @property
    def default_domain(self) -> str:
        return self.domains[0]

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def split(self, name: str) -> tuple[str, str]:
        """
        Split a login name or address into (localpart, domain), giving a bare
        local part the default domain.
        """
        name = name.strip()
        if "@" in name:
            local, _, domain = name.rpartition("@")
            return unquote_local_part(local), domain.lower().rstrip(".")
        return unquote_local_part(name), self.default_domain

    def add(self, name: str, password: str, quota: int | None = None) -> Account:
        """
        Add an account from C{name} (address or bare local part) and a
        password that is plain text or a C{hash_password} string. C{name}
        may carry attributes after a C{;}: C{alice;quota=500M} gives the
        account its own storage quota (L{twisted_mailhub.quota}).

        @raise ValueError: a bad name or attribute.
        """
        name, _, attributes = name.partition(";")
        for attribute in filter(None, (a.strip() for a in attributes.split(";"))):
            key, eq, value = attribute.partition("=")
            if key.strip().lower() != "quota" or not eq:
                raise ValueError(f"unknown account attribute {attribute!s} (known: quota=SIZE)")
            from twisted_mailhub.quota import parse_size

            try:
                quota = parse_size(value)
            except ValueError as e:
                raise ValueError(f"quota {e}") from None
        # The one rule (account_name_problem): no control or invisible
        # character (an ESC, a BOM, a U+202E), no blank ("odd name" could
        # log in but SMTP took no mail for it), a domain ("alice@" was an
        # account every login failed on with a traceback).
        local, domain = check_account_name(name, self.default_domain)
        if not password:
            # "--user alice:" or a line "alice:" in an accounts file: every
            # protocol then let anyone in as alice with an empty password.
            raise ValueError(f"{shown_name(name)}: an empty password, with which anyone could log in as that account; give it one")
        problem = password_text_problem(password)
        if problem is not None:
            # "--user alice:p<0xe9>" from a Latin-1 shell: every login then
            # failed with a server error (the password cannot be UTF-8).
            raise ValueError(f"{shown_name(name)}: {problem}")
        if domain not in self.domains:
            # An account's domain is local by definition.
            self.domains.append(domain)
        if password.startswith(SCRYPT_PREFIX):
            account = Account(local, domain, password_hash=password, quota=quota)
        else:
            account = Account(local, domain, password=password, quota=quota)
        self._accounts[self._key(local, domain)] = account
        self._plain_known = None
        return account

    def load_file(self, path: str) -> int:
        """
        Read an accounts file: C{address:password} lines, C{#} comments.
        Returns how many accounts were read.

        @raise AccountsFileError: the file cannot be read, or a line is not
            an account (the message names the file and the line number and
            never quotes the line, which may hold a password).
        """
        count = 0
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AccountsFileError(f"{path}: cannot read it: {e.strerror or e}") from None
        # A file saved by Windows' Notepad starts with a BOM, which would
        # otherwise become part of the first address.
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        lines = []
        for number, raw in enumerate(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), 1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                # (the line's number, never the line: it may hold a password)
                raise AccountsFileError(f"{path}, line {number}: not UTF-8 text (the octet 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, password = line.partition(":")
            if not sep:
                raise AccountsFileError(f"{path}, line {number}: expected ADDRESS:PASSWORD (no ':' on the line)")
            if not name.strip():
                raise AccountsFileError(f"{path}, line {number}: expected ADDRESS:PASSWORD (no address before the ':')")
            try:
                self.add(name, password)
            except ValueError as e:
                raise AccountsFileError(f"{path}, line {number}: {e}") from None
            count += 1
        return count

    def replace_with(self, other: "AccountBook") -> tuple[int, int]:
        """
        Take C{other}'s accounts and domains in place (a reload): every
        checker and realm holding this book sees them at once.

        @return: how many accounts were added and removed.
        """
        before, after = set(self._accounts), set(other._accounts)
        self._accounts = dict(other._accounts)
        self._plain_known = None
        self.domains = list(other.domains)
        return len(after - before), len(before - after)

    def remove(self, name: str) -> Account | None:
        """
        Remove the account C{name} names (it can no longer log in or get
        mail); return it, or L{None} if there was none. Its domain stays
        local.
        """
        local, domain = self.split(name)
        self._plain_known = None
        return self._accounts.pop(self._key(local, domain), None)

    # Whether some account keeps a plain password (None: count again).
    _plain_known: bool | None = None

    def has_plain_password(self) -> bool:
        """
        Whether some account's password is kept in plain text, which APOP
        and CRAM-MD5 need (L{AccountChecker}); False while every one is an
        scrypt hash (what C{mailhub-admin user add} writes). Counted once
        after each change of the book.
        """
        known = self._plain_known
        if known is None:
            known = self._plain_known = any(a.password is not None for a in self._accounts.values())
        return known

    @staticmethod
    def _key(local: str, domain: str) -> str:
        return f"{local.lower()}@{domain.lower()}"

    def find(self, name: str | bytes) -> Account | None:
        """
        The account a login name or mail address names, or L{None}.
        """
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif '"' not in name and not name[:1].isspace() and not name[-1:].isspace():
            # An address already in its key's form (lower case, no quotes,
            # no trailing dot: what RCPT hands over for every message) is
            # its own key; anything else is normalised below.
            account = self._accounts.get(name)
            if account is not None:
                return account
        local, domain = self.split(name)
        return self._accounts.get(self._key(local, domain))

    def __iter__(self):
        return iter(self._accounts.values())

    def __len__(self) -> int:
        return len(self._accounts)


@implementer(ICredentialsChecker)
class AccountChecker:
    """
    The one credentials checker every protocol logs in through.

    The avatar ID it returns is the account's canonical address (a L{str}).
    Challenge-response credentials (APOP, CRAM-MD5: L{IUsernameHashedPassword})
    need the plain password, so they fail for hashed accounts.
    """

    credentialInterfaces = (
        _credentials.IUsernamePassword,
        _credentials.IUsernameHashedPassword,
    )

    def __init__(self, accounts: AccountBook):
        self.accounts = accounts

    def requestAvatarId(self, credentials):
        account = self.accounts.find(credentials.username)
        if account is None:
            return defer.fail(error.UnauthorizedLogin("no such account"))
        if _credentials.IUsernamePassword.providedBy(credentials):
            password = credentials.password
            if isinstance(password, str):
                password = password.encode("utf-8")
            ok = account.check_password(password)
        elif account.password:  # (an empty one answers no challenge either)
            ok = _check_challenge(credentials, account.password.encode("utf-8"))
        else:
            ok = False
        if ok:
            return defer.succeed(account.address)
        return defer.fail(error.UnauthorizedLogin("wrong password"))


def challenge_response_offered(hub: Any) -> bool:
    """
    Whether the hub's listeners offer the challenge-response logins, APOP
    (RFC 1939 §7: the timestamp in the POP3 greeting) and CRAM-MD5 (RFC
    2195, in SMTP's, POP3's and IMAP's lists): only while they can log
    someone in, i.e. some account keeps a plain password, or a C{--auth}
    checker of its own takes them. Offered to accounts whose passwords are
    all hashed, they only fail: curl, swaks and mail clients pick CRAM-MD5
    first whenever it is listed and then do not try the password
    mechanisms (Dovecot offers CRAM-MD5 only when configured to).
    """
    if hub is None:
        return True
    checkers = getattr(getattr(hub, "portal", None), "checkers", None) or {}
    checker = checkers.get(_credentials.IUsernameHashedPassword)
    if checker is None:
        return False
    if not isinstance(checker, AccountChecker):
        return True
    return checker.accounts.has_plain_password()


def _check_challenge(credentials, password: bytes) -> bool:
    """
    Check challenge-response credentials against a plain password.

    Twisted's C{APOPCredentials.checkPassword} compares a str digest with the
    bytes the client sent, so it never succeeds on Python 3; APOP
    (RFC 1939 §7) is checked here instead, in constant time.
    """
    magic, digest = getattr(credentials, "magic", None), getattr(credentials, "digest", None)
    if magic is not None and digest is not None:
        if isinstance(magic, str):
            magic = magic.encode("ascii")
        if isinstance(digest, str):
            digest = digest.encode("ascii", "replace")
        want = hashlib.md5(magic + password).hexdigest().encode("ascii")
        return hmac.compare_digest(want, digest.lower())
    return bool(credentials.checkPassword(password))


def password_text_problem(password: str) -> str | None:
    """
    Why C{password}, as read from a terminal or standard input (Python
    keeps octets that are not UTF-8 as lone surrogates), cannot be a
    password, in a few words; L{None} when it can. Every protocol sends
    a password as UTF-8 (RFC 4616, RFC 6856, RFC 9051), so a password in
    another encoding (a Latin-1 terminal's C{é}) could never log in.
    """
    try:
        password.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"the password is not UTF-8 text (character {e.start + 1}); set the terminal or file to UTF-8"
    return None


def main(argv: list[str] | None = None) -> int:
    """
    C{python -m twisted_mailhub.accounts hash}: print an scrypt hash of a
    password read from the terminal (or one line of standard input), for an
    accounts file. Returns the exit status: 0, 1 for an empty password
    (nothing printed: it would be a login with no password), 2 for usage.
    """
    import getpass
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["hash"]:
        print("usage: python -m twisted_mailhub.accounts hash", file=sys.stderr)
        return 2
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        # As mailhub-admin: a hash of nothing would be a login with no password.
        print("empty password: nothing printed", file=sys.stderr)
        return 1
    problem = password_text_problem(password)
    if problem is not None:
        print(f"{problem}: nothing printed", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
