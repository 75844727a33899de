# -*- test-case-name: tests.test_mailauth -*-
"""
DKIM signing (RFC 6376) of mail that a logged-in account submits.

Runs as the last end-of-data delivery filter, after every filter that may
rewrite the message, so that nothing changes the signed bytes afterwards.
The signing domain is the domain of the C{From:} header when it is local
(that is the domain DMARC aligns with, RFC 7489 §3.1.1), else the envelope
sender's, else the account's; mail whose domains are all foreign is left
unsigned. Each message gets two signatures, C{rsa-sha256} and
C{ed25519-sha256} (RFC 8463), both C{relaxed/relaxed}.

dkimpy does the canonicalization and builds the signature fields; the
RSA operation itself goes through C{cryptography} (OpenSSL) instead of
dkimpy's pure-Python modular arithmetic (L{rsa_sign}: 6.6 ms of CPU a
message before, see the README's figures). PKCS#1 v1.5 signatures are
deterministic, so the bytes are exactly what dkimpy's own code gives (a
test compares them). Signing still runs on the L{MailauthPool}'s threads,
not in the reactor.
"""

from __future__ import annotations

import threading
from email.utils import getaddresses
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.filters import Envelope, IDeliveryFilter, Rewrite
from twisted_mailhub.mailauth.keys import SigningKey

log = Logger()

# -- RSA through OpenSSL ---------------------------------------------------------

_OPENSSL_KEYS: dict[int, Any] = {}
_pure_rsa_sign: Any = None  # dkimpy's own, kept when it is first imported
_pure_parse: Any = None
_dkim: Any = None
_dkim_lock = threading.Lock()


def dkimpy() -> Any:
    """
    The C{dkim} module, imported the first time a message is signed (a hub
    whose domains sign nothing never holds it: with dnspython and PyNaCl,
    about 4 MB), with its RSA step and key parse pointed at
    L{rsa_sign} and L{parse_private_key}: dkimpy calls the names it
    imported into its package at signing time.
    """
    global _dkim, _pure_rsa_sign, _pure_parse
    if _dkim is None:
        with _dkim_lock:
            if _dkim is None:
                import dkim
                import dkim.crypto

                _pure_rsa_sign = dkim.crypto.RSASSA_PKCS1_v1_5_sign
                _pure_parse = dkim.crypto.parse_pem_private_key
                dkim.RSASSA_PKCS1_v1_5_sign = rsa_sign
                dkim.parse_pem_private_key = parse_private_key
                _dkim = dkim
    return _dkim


def _openssl_key(private_key: dict) -> Any:
    """dkimpy's parsed RSA key (a dict of its numbers) as a C{cryptography} key, made once per key."""
    n = private_key["modulus"]
    key = _OPENSSL_KEYS.get(n)
    if key is None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        numbers = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
            dmp1=private_key["exponent1"], dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(private_key["publicExponent"], n),
        )
        key = numbers.private_key()
        if len(_OPENSSL_KEYS) > 64:  # keys of removed domains: start over
            _OPENSSL_KEYS.clear()
        _OPENSSL_KEYS[n] = key
    return key


def rsa_sign(hash: Any, private_key: dict) -> bytes:
    """
    RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) of dkimpy's running hash
    (C{hash.name}, C{hash.digest()}) with dkimpy's parsed key: the same
    signature as C{dkim.crypto.RSASSA_PKCS1_v1_5_sign}, computed by
    OpenSSL. Falls back to dkimpy's own for anything it does not know.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    algorithm = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}.get(getattr(hash, "name", ""))
    if algorithm is None:
        return _pure_rsa_sign(hash, private_key)
    return _openssl_key(private_key).sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))


_PARSED: dict[bytes, dict] = {}


def parse_private_key(pem: bytes) -> dict:
    """dkimpy's PEM parse (pure-Python ASN.1, 0.2 ms), once per key."""
    parsed = _PARSED.get(pem)
    if parsed is None:
        if len(_PARSED) > 64:
            _PARSED.clear()
        parsed = _PARSED[pem] = _pure_parse(pem)
    return parsed


# RFC 6376 §5.4.1's recommended set, plus what DMARC and threads rely on.
# A header named twice in h= and present once is "oversigned": nobody can
# add a second From: or Subject: without breaking the signature.
SIGNED_HEADERS = [
    b"from", b"from", b"to", b"cc", b"subject", b"subject", b"date", b"message-id",
    b"reply-to", b"in-reply-to", b"references", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"content-disposition", b"list-unsubscribe",
]


def header_from_domain(message: bytes) -> str | None:
    """The domain of the (first) C{From:} header address, lower-cased, or None."""
    head = message.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if line[:5].lower() == b"from:":
            value = line[5:]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            addresses = getaddresses([value.decode("utf-8", "replace")])
            for _, address in addresses:
                if "@" in address:
                    return address.rpartition("@")[2].lower().rstrip(".")
            return None
    return None


def sign(message: bytes, keys: list[SigningKey]) -> bytes:
    """
    The message with one C{DKIM-Signature:} field per key prepended.

    @raise dkim.DKIMException: the message or a key is unusable.
    """
    dkim = dkimpy()
    fields = []
    for key in keys:
        fields.append(
            dkim.sign(
                message,
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.private,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=key.algorithm,
                include_headers=SIGNED_HEADERS,
            )
        )
    return b"".join(fields) + message


@implementer(IPlugin, IDeliveryFilter)
class DKIMSigner:
    """
    The built-in signing filter.

    @ivar keys: local domain -> its keys (domains without keys are not signed).
    """

    name = "dkim-sign"

    def __init__(self, keys: dict[str, list[SigningKey]], reactor: Any, pool: Any):
        self.keys = keys
        self.reactor = reactor
        self.pool = pool

    def signing_domain(self, envelope: Envelope, message: bytes) -> str | None:
        for address in (header_from_domain(message), envelope.sender, envelope.authenticated):
            if not address:
                continue
            domain = address.rpartition("@")[2].lower()
            if domain in self.keys:
                return domain
        return None

    def applies_to_session(self, authenticated: str | None, client_address: str) -> bool:
        """
        Whether mail of a session may be signed: only mail a logged-in
        account submits (C{authenticated}), as the README says; the SMTP
        delivery asks this before it makes an L{Envelope}
        (L{twisted_mailhub.smtp.delivery.end_of_data_gates}).
        """
        return bool(authenticated)

    def end_of_data(self, envelope: Envelope, message: bytes) -> Any:
        if not envelope.authenticated:
            return None
        domain = self.signing_domain(envelope, message)
        if domain is None:
            return None
        dkimpy()  # (imported here, in the reactor's thread, the first time)
        d = threads.deferToThreadPool(self.reactor, self.pool, sign, message, self.keys[domain])

        def unsigned(failure):
            # A message dkimpy cannot sign (e.g. no From:) goes out unsigned,
            # as it would from a server without DKIM; it is not refused.
            log.warn("dkim: not signing a message for {domain}: {why}", domain=domain, why=failure.getErrorMessage())
            return message

        return d.addCallbacks(Rewrite, lambda f: Rewrite(unsigned(f)))
