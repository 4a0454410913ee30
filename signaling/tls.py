"""HTTPS for the call page and the API: browsers give a page on another machine of the LAN a
microphone only in a secure context, so a kiosk that calls a server on the LAN needs HTTPS.

Either a certificate and key the operator provides (PEM files), or, with ``tls_self_signed``,
a certificate made at start for this machine's names and addresses (EC P-256, valid 30 days,
kept in memory only): browsers warn about it once, then the page works.  Its SHA-256
fingerprint is logged so a user can check what the browser shows.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SELF_SIGNED_DAYS = 30


class TlsError(ValueError):
    """The certificate or key cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class SelfSigned:
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str
    """SHA-256 of the certificate, as browsers show it (colon-separated hex)."""


def self_signed(names: list[str], addresses: list[str]) -> SelfSigned:
    """A certificate for ``names`` (DNS) and ``addresses`` (IP), signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "omnirtc")])
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return SelfSigned(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    )


def machine_names(host: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses a self-signed certificate for this machine should cover."""
    names = ["localhost", socket.gethostname()]
    addresses = ["127.0.0.1", "::1"]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        names.insert(0, host)
    else:
        if host not in ("0.0.0.0", "::"):
            addresses.insert(0, host)
    return names, addresses


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context from PEM files; raises TlsError naming the file at fault."""
    for path in (cert, key):
        if not Path(path).is_file():
            raise TlsError(f"cannot read {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot use the TLS certificate {cert} with key {key}: {exc}") from None
    return context


def self_signed_context(made: SelfSigned) -> ssl.SSLContext:
    """A TLS server context for a certificate made by ``self_signed``."""
    # The ssl module loads certificates from files only: write them to a private folder
    # for the moment it takes.
    with tempfile.TemporaryDirectory(prefix="omnirtc-tls-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(made.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(made.key_pem)
        return server_context(str(cert), str(key))
