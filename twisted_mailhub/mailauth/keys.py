# -*- test-case-name: tests.test_mailauth -*-
"""
DKIM signing keys, one pair of key files per local domain and selector.

Layout (RFC 6376 §3.6.2.1 puts the public key at
C{<selector>._domainkey.<domain>} in DNS)::

    DATA/dkim/<domain>/<selector>.key           RSA 2048, PKCS#1 PEM  (rsa-sha256)
    DATA/dkim/<domain>/<selector>.pub           the TXT record's text
    DATA/dkim/<domain>/<selector>-ed25519.key   Ed25519 seed, base64 (ed25519-sha256, RFC 8463)
    DATA/dkim/<domain>/<selector>-ed25519.pub

Both algorithms sign every message (RFC 8463 §6 recommends the pair while
verifiers learn Ed25519). The default selector is date-based (C{mh202611})
and chosen when a domain's first keys are made; later starts reuse the
newest selector found, so the published DNS record stays valid.

Private key files are mode 0600. Domains that nobody can publish DNS for
(C{localhost} and names without a dot) get no keys.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

_SELECTOR = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class SigningKey:
    """
    One DKIM key of a domain.

    @ivar domain: the signing domain (C{d=}).
    @ivar selector: the selector (C{s=}); the TXT record is at
        C{<selector>._domainkey.<domain>}.
    @ivar algorithm: C{b"rsa-sha256"} or C{b"ed25519-sha256"}.
    @ivar private: the private key in the form dkimpy's C{sign} takes
        (PKCS#1 PEM for RSA, the base64 seed for Ed25519).
    @ivar record: the DNS TXT record's text, C{v=DKIM1; k=...; p=...}.
    """

    domain: str
    selector: str
    algorithm: bytes
    private: bytes
    record: str

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def signs_for(domain: str) -> bool:
    """Whether C{domain} can have DKIM keys: it has a dot and is not localhost."""
    domain = domain.lower().rstrip(".")
    return "." in domain and domain != "localhost" and not domain.endswith(".localhost")


def default_selector(now: float | None = None) -> str:
    """A date-based selector, C{mhYYYYMM} (the month the keys were made)."""
    return time.strftime("mh%Y%m", time.gmtime(now if now is not None else time.time()))


def check_selector(selector: str) -> str:
    """
    @raise ValueError: C{selector} is not a DNS label of letters, digits
        and hyphens (RFC 6376 §3.1 selectors are sub-domains).
    """
    if not _SELECTOR.match(selector or ""):
        raise ValueError(f"--dkim-selector {selector!s}: use letters, digits and hyphens (a DNS label)")
    return selector


def usable_name(domain: str) -> bool:
    """Whether C{domain} may name a key folder: the hub's --domain rule (accounts.usable_domain)."""
    from twisted_mailhub.accounts import usable_domain

    return usable_domain(domain.strip().lower().rstrip("."))


def domain_dir(data_dir: str, domain: str) -> str:
    """
    C{DATA/dkim/<domain>}.

    @raise ValueError: C{domain} is not a usable domain name (C{/}, C{..}:
        the folder would be elsewhere).
    """
    if not usable_name(domain):
        raise ValueError(f"not a domain name: {domain[:200]!s}")
    return os.path.join(data_dir, "dkim", domain.lower())


def existing_selector(data_dir: str, domain: str) -> str | None:
    """The newest RSA selector already on disk for C{domain}, or None."""
    folder = domain_dir(data_dir, domain)
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".key") and not n.endswith("-ed25519.key")]
    except FileNotFoundError:
        return None
    if not names:
        return None
    names.sort(key=lambda n: os.stat(os.path.join(folder, n)).st_mtime)
    return names[-1][: -len(".key")]


def load_or_create(data_dir: str, domain: str, selector: str | None = None) -> list[SigningKey]:
    """
    The domain's two keys (RSA, then Ed25519) for C{selector} (default:
    the newest on disk, else a new date-based one), made and written on
    first use.

    @raise OSError: the key folder cannot be written.
    """
    selector = selector or existing_selector(data_dir, domain) or default_selector()
    folder = domain_dir(data_dir, domain)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return [
        _pair(folder, domain, selector, b"rsa-sha256", _new_rsa),
        _pair(folder, domain, f"{selector}-ed25519", b"ed25519-sha256", _new_ed25519),
    ]


def _pair(folder, domain, selector, algorithm, make) -> SigningKey:
    key_path = os.path.join(folder, selector + ".key")
    pub_path = os.path.join(folder, selector + ".pub")
    if not (os.path.exists(key_path) and os.path.exists(pub_path)):
        private, record = make()
        _write(pub_path, record.encode("ascii") + b"\n", 0o644)
        _write(key_path, private, 0o600)
    with open(key_path, "rb") as f:
        private = f.read()
    with open(pub_path, "r", encoding="ascii") as f:
        record = f.read().strip()
    return SigningKey(domain.lower(), selector, algorithm, private, record)


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _new_rsa() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")


def _new_ed25519() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed) + b"\n", "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode("ascii")


def dns_records(domain: str, keys: list[SigningKey], hostname: str) -> list[tuple[str, str]]:
    """
    The TXT records a domain should publish, as (name, text): each DKIM
    key, a suggested SPF record (RFC 7208: the domain's MX hosts may send,
    others soft-fail) and a suggested DMARC record (RFC 7489 §6.3:
    monitor first with C{p=none}, reports to postmaster).
    """
    records = [(k.dns_name, k.record) for k in keys]
    records.append((domain, "v=spf1 mx a:" + hostname + " ~all"))
    records.append((f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"))
    return records


def zone_lines(records: list[tuple[str, str]]) -> str:
    """
    Records as zone-file lines, long texts split into 255-octet strings
    (RFC 1035 §3.3.14: one TXT character-string is at most 255 octets).
    """
    lines = []
    for name, text in records:
        chunks = " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
        lines.append(f"{name}. IN TXT {chunks}")
    return "\n".join(lines) + "\n"
