"""
DKIM RSA signing through OpenSSL (issue 14's signing cost): dkimpy still
canonicalizes and builds the fields; the RSA signature is the same bytes
its pure-Python code makes (PKCS#1 v1.5 is deterministic), and verifies.
"""

from __future__ import annotations

import hashlib

import dkim
import dkim.crypto

from twisted_mailhub.mailauth import keys, signing

MESSAGE = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: speed\r\nDate: Sun, 29 Nov 2026 17:00:00 +0000\r\n\r\nhello\r\n"


def test_openssl_rsa_signature_is_byte_for_byte_dkimpys_own(tmp_path):
    key = keys.load_or_create(str(tmp_path), "a.test", "sel")[0]
    parsed = dkim.crypto.parse_pem_private_key(key.private)
    for name in ("sha256", "sha1"):
        h = dkim.HashThrough(getattr(hashlib, name)(), False)
        h.update(MESSAGE)
        assert bytes(signing.rsa_sign(h, parsed)) == bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(h, parsed))


def test_signed_message_verifies_with_dkimpy(tmp_path):
    pair = keys.load_or_create(str(tmp_path), "a.test", "sel")
    signed = signing.sign(MESSAGE, pair)
    assert dkim.RSASSA_PKCS1_v1_5_sign is signing.rsa_sign  # the fast path is the one dkimpy uses
    records = {f"{k.dns_name}.".encode(): k.record.encode() for k in pair}

    def dnsfunc(name, timeout=5):
        return records.get(name if name.endswith(b".") else name + b".")

    d = dkim.DKIM(signed)
    assert d.verify(idx=0, dnsfunc=dnsfunc)
    assert d.verify(idx=1, dnsfunc=dnsfunc)
    tampered = signed.replace(b"hello", b"hullo")
    try:
        verified = dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)
    except dkim.ValidationError:  # "body hash mismatch"
        verified = False
    assert not verified
