# -*- test-case-name: tests.test_tls -*-
"""
Certificates and TLS context factories.

With no C{--tls-cert}, the hub makes a self-signed certificate for its
hostname on first start (C{DATA/tls/cert.pem}, C{key.pem}) and reuses it,
so a client that pinned it the first time keeps working. TLS 1.2 is the
minimum (RFC 8996, RFC 8314 §4.1).
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


def _general_name(name: str):
    """C{name} as a subjectAltName entry: an iPAddress for an IP address, else a dNSName (RFC 5280 §4.2.1.6)."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def names_in(cert_pem: bytes) -> list[str]:
    """
    The names a certificate (the first in C{cert_pem}) is good for: its
    subjectAltName's DNS names (lower case) and IP addresses (as text),
    or, without that extension, its common name.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [a.value.lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(a.value, str)]
    return [n.lower() for n in alt.get_values_for_type(x509.DNSName)] + [str(a) for a in alt.get_values_for_type(x509.IPAddress)]


def _named(hostname: str, names: list[str]) -> bool:
    """Whether C{hostname} is one of C{names} (L{names_in}), an IP address compared as one."""
    try:
        return str(ipaddress.ip_address(hostname)) in names
    except ValueError:
        return hostname.lower().rstrip(".") in names


def make_self_signed(hostname: str, cert_path: str, key_path: str) -> None:
    """
    Write a new self-signed certificate (ECDSA P-256, ten years) for
    C{hostname}, C{localhost}, C{127.0.0.1} and C{::1}, each named once,
    an IP address C{hostname} as an IP address, to C{cert_path}, and its
    key (mode 0600) to C{key_path}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    alt_names: list[x509.GeneralName] = []
    for one in (hostname, "localhost", "127.0.0.1", "::1"):
        entry = _general_name(one)
        if entry not in alt_names:
            alt_names.append(entry)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(os.path.dirname(cert_path), exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def server_context(
    data_dir: str, hostname: str, cert_path: str | None = None, key_path: str | None = None
) -> ssl.CertificateOptions:
    """
    The server's TLS options: the given certificate, or the self-signed one
    in C{data_dir} (made on first use).
    """
    own = cert_path is None
    if own:
        cert_path = os.path.join(data_dir, "tls", "cert.pem")
        key_path = os.path.join(data_dir, "tls", "key.pem")
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            make_self_signed(hostname, cert_path, key_path)
    key_path = key_path or cert_path
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    if own:
        names = names_in(cert_pem)
        if not _named(hostname, names):
            # Kept (a client may have pinned it), but said: one that checks
            # names refuses it under the hub's new name.
            log.warn(
                "TLS: {path} was made for {names}, not for this hub's --hostname {hostname}: clients that check "
                "the name will refuse it; to have one made for {hostname}, stop the hub, remove {path} and {key} and "
                "start it again (clients that pinned the old one must accept the new one), or give --tls-cert",
                path=cert_path, key=key_path, names=", ".join(names), hostname=hostname,
            )
    with open(key_path, "rb") as f:
        key_pem = f.read()
    certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    chain = [c.original for c in _extra_certificates(cert_pem)]
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    # The context is made once and kept by the options object.
    options.getContext().set_alpn_select_callback(_select_application_protocol)
    return options


def unusable_reason(error: BaseException) -> str:
    """
    Why L{server_context} could not use a C{--tls-cert}/C{--tls-key}, in
    words (never a Python repr): the OS's reason for a file it could not
    read, OpenSSL's reasons for contents that are no matching PEM pair.
    """
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    first = error.args[0] if error.args else None
    reasons = [r[2] for r in first if isinstance(r, tuple) and len(r) == 3 and r[2]] if isinstance(first, list) else []
    said = "; ".join(dict.fromkeys(reasons)) or (str(error) if isinstance(first, str) else "")
    return "not a PEM certificate with its private key" + (f" (OpenSSL: {said})" if said else "")


def _select_application_protocol(connection, offered: list[bytes]):
    """
    ALPN (RFC 7301) on the hub's listeners: the first protocol the listener
    speaks that the client offered, else go on without ALPN.

    Twisted's own callback answers an empty protocol when nothing matches,
    which OpenSSL turns into an "internal error" alert: every browser and
    curl (they offer h2 and http/1.1) then failed on --webs, and any mail
    client that offers ALPN on the implicit-TLS listeners would too. RFC
    7301 §3.2 lets a server that does not select a protocol go on.
    """
    from OpenSSL import SSL
    from twisted.internet._sslverify import protosFromProtocol

    try:
        speaks = protosFromProtocol(connection.get_app_data(), ())
    except Exception:
        speaks = ()
    for protocol in speaks:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _extra_certificates(pem: bytes) -> list[ssl.Certificate]:
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in pem.split(marker)[1:]]
    return [ssl.Certificate.loadPEM(b) for b in blocks[1:]]


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """
    The server's TLS options, replaceable while the hub runs (SIGHUP): each
    new TLS connection (implicit TLS, STARTTLS, STLS, AUTH TLS) takes the
    current certificate; connections already up keep theirs.

    It is an old-style context factory (C{getContext()}), which Twisted's
    C{TLSMemoryBIOFactory} and C{startTLS} call once per connection; the
    current options' other attributes (C{certificate}, C{privateKey}, ...)
    are read through it.
    """

    def __init__(self, options: ssl.CertificateOptions):
        self.current = options

    def getContext(self):
        return self.current.getContext()

    def replace(self, options: ssl.CertificateOptions) -> None:
        options.getContext()  # fails here, not in a client's handshake
        self.current = options

    def __getattr__(self, name: str):
        if name.startswith("__"):  # not the options' interface declarations
            raise AttributeError(name)
        return getattr(self.current, name)


# Seconds a TLS connection closed before its handshake is done is given to
# finish it (and so to receive what was written before: a greeting, a time
# limit's reply) before it is dropped.
UNFINISHED_HANDSHAKE_GRACE = 15.0


def drop_unfinished_handshakes(reactor) -> None:
    """
    Make every TLS connection of this process that is closed
    (C{loseConnection}) before its handshake is done drop its TCP
    connection after L{UNFINISHED_HANDSHAKE_GRACE} seconds if the handshake
    has not finished by then. Installed once per process (later calls do
    nothing); C{reactor} gives the timer.

    Why: Twisted's C{TLSMemoryBIOProtocol.loseConnection} waits for the
    handshake when application data was written before it (the greeting of
    an implicit-TLS listener, RFC 8314 §3.3; a time limit's reply after
    STARTTLS), so that data can be sent. A client that never finishes the
    handshake (connects to 993 and sends nothing, or half a ClientHello)
    was then never closed: every time limit closes with C{loseConnection},
    and the connection counted against C{--max-connections} and
    C{--max-connections-per-ip} for good (a slowloris: a hundred such
    connections lock one address out, twenty addresses the whole hub).
    """
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if getattr(TLSMemoryBIOProtocol.loseConnection, "drops_unfinished_handshakes", False):
        return
    close = TLSMemoryBIOProtocol.loseConnection

    def drop(protocol: TLSMemoryBIOProtocol) -> None:
        transport = protocol.transport
        if not protocol._handshakeDone and not protocol._lostTLSConnection and transport is not None:
            log.info("a TLS client closed before its handshake did not finish it in {grace:g} s: dropped", grace=UNFINISHED_HANDSHAKE_GRACE)
            transport.abortConnection()

    def loseConnection(self: TLSMemoryBIOProtocol) -> None:
        unfinished = self.connected and not self.disconnecting and not self._handshakeDone
        close(self)
        if unfinished and not self._lostTLSConnection:
            reactor.callLater(UNFINISHED_HANDSHAKE_GRACE, drop, self)

    loseConnection.drops_unfinished_handshakes = True  # type: ignore[attr-defined]
    TLSMemoryBIOProtocol.loseConnection = loseConnection  # type: ignore[method-assign]
