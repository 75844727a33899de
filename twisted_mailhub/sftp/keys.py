# -*- test-case-name: tests.test_sftp_keys,tests.test_e2e_sftp -*-
"""
SSH keys: the server's host keys, and the users' authorized keys.

Host keys live in C{DATA/ssh/}: C{ssh_host_ed25519_key} and
C{ssh_host_ecdsa_key} (OpenSSH private-key format, mode 0600), made on
first start and reused, so a client's C{known_hosts} stays valid across
restarts. C{--ssh-host-key PATH} (repeatable) uses existing keys instead
(any type Conch reads: Ed25519, ECDSA, RSA, which is then offered as
C{rsa-sha2-256}/C{rsa-sha2-512}).

A user's public keys are read from C{DATA/ssh/authorized_keys/<address>}
(one OpenSSH C{authorized_keys} line each, comments and blank lines
skipped), looked up at each login so a key added by hand works at once.
A line's options (sshd(8), AUTHORIZED_KEYS FILE FORMAT) are honoured or
the line is not used: those that allow or deny only what this server never
offers (a shell, a pty, forwarding, X11, the agent: C{restrict},
C{no-pty}...) and C{command="internal-sftp"} change nothing here; a line
with one this server does not enforce (C{from=}, another C{command=},
C{expiry-time=}, C{cert-authority}, C{principals=}, C{verify-required}, an
unknown one) logs in nobody, as a warning in the log says: OpenSSH would
have let that key in from fewer places, for a shorter time, or not at
all, and the hub must not grant more (L{key_line_problem}).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.conch.ssh import keys
from twisted.logger import Logger
from zope.interface import implementer

try:
    from twisted.conch.checkers import IAuthorizedKeysDB
except ImportError:  # pragma: no cover - older Twisted
    IAuthorizedKeysDB = None

log = Logger()

HOST_KEY_FILES = {
    "ssh_host_ed25519_key": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ssh_host_ecdsa_key": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def fingerprint(key: keys.Key) -> str:
    """C{SHA256:...} as C{ssh-keygen -l} and the first-connection prompt show it."""
    digest = hashlib.sha256(key.public().blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _write_private(path: str, private) -> None:
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    with open(path + ".pub", "wb") as f:
        f.write(keys.Key(private).public().toString("openssh") + b"\n")


def load_host_keys(data_dir: str, paths: list[str] | None = None) -> list[keys.Key]:
    """
    The host keys: those in C{paths}, or the ones in C{DATA/ssh/} (made on
    first use). Raises L{keys.BadKeyError} or L{OSError} for a bad path.
    """
    if paths:
        return [keys.Key.fromFile(path) for path in paths]
    folder = os.path.join(data_dir, "ssh")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    found = []
    for name, generate in HOST_KEY_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            _write_private(path, generate())
            log.info("sftp: made host key {path}", path=path)
        found.append(keys.Key.fromFile(path))
    return found


def unusable_host_key(path: str) -> str | None:
    """
    Why C{path} cannot be an SSH host key for C{--ssh-host-key} (one line:
    the file cannot be read, is not a private key, needs a passphrase),
    or L{None} when it can.
    """
    try:
        key = keys.Key.fromFile(path)
    except OSError as e:
        return e.strerror or str(e)
    except keys.EncryptedKeyError:
        return "the key is encrypted with a passphrase, which the hub cannot ask for"
    except (keys.BadKeyError, ValueError, TypeError, IndexError):
        return "not an SSH private key (OpenSSH or PEM, as ssh-keygen writes)"
    if key.isPublic():
        return "a public key: the host key is the private one (the file without .pub)"
    return None


@implementer(*([IAuthorizedKeysDB] if IAuthorizedKeysDB else []))
class AuthorizedKeysFolder:
    """
    C{IAuthorizedKeysDB}: the keys in C{folder/<address>} for the account a
    login name names (full address, or the bare local part for the default
    domain); none for a name that is no account.
    """

    def __init__(self, folder: str, accounts):
        self.folder = folder
        self.accounts = accounts
        # path -> (inode, size, mtime in ns) of the file version whose
        # problems were logged: SSH asks for the keys twice per login (RFC
        # 4252 §7: "would this key do?", then the signed request), and
        # every login asks again; each problem is logged once per version.
        self._logged: dict[str, tuple[int, int, int]] = {}

    def path_for(self, name: str | bytes) -> str | None:
        account = self.accounts.find(name)
        if account is None:
            return None
        address = account.address
        if "/" in address or address.startswith("."):
            return None
        return os.path.join(self.folder, address)

    def getAuthorizedKeys(self, username):
        path = self.path_for(username)
        if path is None:
            return iter(())
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                lines = f.read(1024 * 1024).splitlines()
        except OSError:
            return iter(())
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        quiet = self._logged.get(path) == version
        found = []
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith(b"#"):
                continue
            problem = key_line_problem(stripped)
            if problem is not None:
                if not quiet:
                    log.warn(
                        "sftp: {path}, line {number}: {problem}: that key logs in nobody (remove the option, or the line)",
                        path=path, number=number, problem=problem,
                    )
                continue
            key = parse_authorized_key(stripped)
            if key is None:
                # (a pasted key cut short, a line not in UTF-8: said, never
                # quoted, nor as U+FFFD)
                if not quiet:
                    log.warn("sftp: {path}, line {number}: {problem}; that line logs in nobody", path=path, number=number, problem=NOT_A_KEY)
                continue
            found.append(key)
        if not quiet:
            self._logged[path] = version
        return iter(found)


#: authorized_keys options that allow or deny only what this server never
#: offers (it runs SFTP and nothing else: no shell, pty, user rc, X11,
#: agent, tunnel or port forwarding): a line with them means here what it
#: means to OpenSSH.
NOTHING_TO_ENFORCE = frozenset(
    {
        "restrict", "no-pty", "pty", "no-port-forwarding", "port-forwarding", "no-agent-forwarding",
        "agent-forwarding", "no-x11-forwarding", "x11-forwarding", "no-user-rc", "user-rc",
        "permitopen", "permitlisten", "environment", "tunnel", "no-touch-required",
    }
)


def _split_options(line: bytes) -> tuple[list[tuple[str, str | None]], bytes]:
    """
    (the options of an C{authorized_keys} line as (lower-case name, value or
    None), the rest: C{KEYTYPE BASE64 [COMMENT]}). Options come first, comma
    separated, and a value in double quotes may hold blanks and commas
    (sshd(8)); a line that starts with its key type has none.
    """
    if line.startswith((b"ssh-", b"ecdsa-", b"sk-")):
        return [], line
    options: list[tuple[str, str | None]] = []
    part, quoted, i = bytearray(), False, 0
    while i < len(line):
        c = line[i : i + 1]
        if c == b"\\" and quoted and line[i + 1 : i + 2] == b'"':
            part += b'"'
            i += 2
            continue
        if c == b'"':
            quoted = not quoted
        elif not quoted and c in (b",", b" ", b"\t"):
            if part:
                options.append(_option(bytes(part)))
            part = bytearray()
            if c != b",":
                break
        else:
            part += c
        i += 1
    else:
        if part:
            options.append(_option(bytes(part)))
    return options, line[i:].strip()


def _option(text: bytes) -> tuple[str, str | None]:
    name, eq, value = text.partition(b"=")
    return name.decode("ascii", "replace").lower(), value.decode("utf-8", "replace") if eq else None


#: What the log says of an C{authorized_keys} line that holds no key this
#: server can read.
NOT_A_KEY = "not a key this server can read (want KEYTYPE BASE64 [COMMENT], the line of the .pub file ssh-keygen wrote)"

_OPTION_NAME = re.compile(r"[a-z0-9-]+\Z")


def key_line_problem(line: bytes) -> str | None:
    """
    Why this server must not use an C{authorized_keys} line's key, in
    words (e.g. C{'from="10.0.0.0/8" is not enforced by this server'}), or
    L{None} when its options (if any) mean here what they mean to OpenSSH
    (L{NOTHING_TO_ENFORCE}, C{command="internal-sftp"}).
    """
    options, _ = _split_options(line.strip())
    for name, value in options:
        if not _OPTION_NAME.match(name):
            # No option sshd(8) has: not UTF-8, a pasted fragment. Its key
            # (if any) is refused, as sshd refuses a line it cannot parse.
            return NOT_A_KEY
        if name in NOTHING_TO_ENFORCE:
            continue
        if name == "command" and value is not None and value.strip() == "internal-sftp":
            continue  # OpenSSH's own way of saying "SFTP only": what this server does
        from twisted_mailhub.lines import quote

        shown = name if value is None else f'{name}="{value}"'
        if name in ("from", "command", "expiry-time", "cert-authority", "principals", "verify-required"):
            return f"{quote(shown, 80)} is not enforced by this server"
        return f"{quote(shown, 80)} is no option this server knows"
    return None


def parse_authorized_key(line: bytes) -> keys.Key | None:
    """
    The key of one C{authorized_keys} line, or L{None} for a comment, a
    blank line, a key Conch cannot read, or a line with an option this
    server does not enforce (L{key_line_problem}).
    """
    line = line.strip()
    if not line or line.startswith(b"#"):
        return None
    if key_line_problem(line) is not None:
        return None
    fields = _split_options(line)[1].split()
    if len(fields) < 2 or not fields[0].startswith((b"ssh-", b"ecdsa-", b"sk-")):
        return None
    try:
        return keys.Key.fromString(b" ".join(fields[:2]))
    except (keys.BadKeyError, ValueError, TypeError, IndexError, struct.error):
        # (struct.error: a key cut short when pasted; Conch reads past its end)
        return None


def authorized_keys_checker(data_dir: str, accounts) -> SSHPublicKeyChecker:
    """The portal's checker for public keys (C{ISSHPrivateKey})."""
    folder = os.path.join(data_dir, "ssh", "authorized_keys")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return PublicKeyChecker(AuthorizedKeysFolder(folder, accounts), accounts)


class PublicKeyChecker(SSHPublicKeyChecker):
    """Conch's checker, answering with the account's canonical address."""

    def __init__(self, keydb, accounts):
        SSHPublicKeyChecker.__init__(self, keydb)
        self.accounts = accounts

    def requestAvatarId(self, credentials):
        from twisted.conch import error as conch_error
        from twisted.internet import defer

        if not credentials.signature:
            # RFC 4252 §7: "would this key do?" Say yes only for a key that
            # is authorized (Conch says yes to any key).
            try:
                key = keys.Key.fromString(credentials.blob)
            except (keys.BadKeyError, ValueError):
                return defer.fail(UnauthorizedLogin("unreadable key"))
            if any(key == k for k in self._keydb.getAuthorizedKeys(credentials.username)):
                return defer.fail(conch_error.ValidPublicKey())
            return defer.fail(UnauthorizedLogin("key not authorized"))
        d = SSHPublicKeyChecker.requestAvatarId(self, credentials)

        def canonical(username):
            account = self.accounts.find(username)
            return account.address if account is not None else username

        return d.addCallback(canonical)
