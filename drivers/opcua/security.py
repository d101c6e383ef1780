"""The gateway's OPC UA public key infrastructure: its own certificate, trusted servers.

A PKI folder holds::

    own/cert.der      the gateway's application instance certificate (DER)
    own/key.pem       its private key (PEM, readable by the service user only)
    trusted/          server certificates a technician copied in (.der, .pem, .crt)
    rejected/         server certificates the gateway refused, one file each

A server certificate is trusted when a file in ``trusted/`` holds the very same
certificate (compared by SHA-256 thumbprint). One that is not is written to
``rejected/`` under a name built from its common name and thumbprint, so the error
can tell the technician which file to copy where.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERTIFICATE_DAYS",
    "CertificateError",
    "Pki",
    "UntrustedServerCertificate",
    "application_uri",
    "certificate_uri",
    "create_certificate",
    "thumbprint",
]

CERTIFICATE_DAYS = 3650
"""Validity of a generated application certificate, days (ten years)."""
KEY_BITS = 2048
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_THUMBPRINT_CHARS = 16
_PRIVATE_FILE_MODE = 0o600


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable or unusable."""


class UntrustedServerCertificate(CertificateError):
    """The server presented a certificate that is not in the trust folder.

    Attributes:
        rejected: where the refused certificate was written.
        trusted_dir: the folder the technician copies it to, once checked.
    """

    def __init__(self, subject: str, rejected: Path, trusted_dir: Path) -> None:
        super().__init__(
            f"server certificate {subject!r} is not trusted: if it is the tool's, "
            f"copy {rejected} to {trusted_dir}/"
        )
        self.rejected = rejected
        self.trusted_dir = trusted_dir


def application_uri(host: str | None = None) -> str:
    """Return the gateway's default OPC UA application URI on ``host`` (this host)."""
    return f"urn:{host or socket.gethostname()}:edge-gateway"


def thumbprint(der: bytes) -> str:
    """Return the SHA-256 thumbprint of a DER certificate, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class Pki:
    """The PKI folder rooted at ``root``; see the module doc for its layout."""

    root: Path

    @property
    def certificate(self) -> Path:
        """The gateway's own certificate (DER)."""
        return self.root / "own" / "cert.der"

    @property
    def private_key(self) -> Path:
        """The gateway's own private key (PEM)."""
        return self.root / "own" / "key.pem"

    @property
    def trusted_dir(self) -> Path:
        """Where trusted server certificates are copied."""
        return self.root / "trusted"

    @property
    def rejected_dir(self) -> Path:
        """Where refused server certificates are written."""
        return self.root / "rejected"

    def create_folders(self) -> None:
        """Create ``own/``, ``trusted/`` and ``rejected/`` if missing.

        Raises:
            CertificateError: a folder cannot be created.
        """
        try:
            for folder in (
                self.certificate.parent,
                self.trusted_dir,
                self.rejected_dir,
            ):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CertificateError(
                f"cannot create PKI folder {self.root}: {exc}"
            ) from exc

    def ensure_certificate(self, uri: str, force: bool = False) -> bool:
        """Create the gateway's certificate and key unless both exist already.

        Returns whether a new pair was written. ``force`` replaces an existing pair.

        Raises:
            CertificateError: the folder is not writable.
        """
        self.create_folders()
        if not force and self.certificate.is_file() and self.private_key.is_file():
            return False
        cert, key = create_certificate(uri)
        try:
            _write_private(self.private_key, key)
            self.certificate.write_bytes(cert)
        except OSError as exc:
            raise CertificateError(
                f"cannot write the gateway certificate in {self.root}: {exc}"
            ) from exc
        return True

    def trusted_thumbprints(self) -> set[str]:
        """Return the thumbprints of every readable certificate in ``trusted/``.

        Files that are not certificates are skipped, so a stray README does no harm.
        """
        found: set[str] = set()
        if not self.trusted_dir.is_dir():
            return found
        for path in sorted(self.trusted_dir.iterdir()):
            if path.suffix.lower() not in _CERT_SUFFIXES:
                continue
            with contextlib.suppress(OSError, ValueError):
                found.add(thumbprint(_as_der(path.read_bytes())))
        return found

    def check_server(self, der: bytes) -> None:
        """Accept a server certificate that is trusted; refuse any other.

        Raises:
            UntrustedServerCertificate: it is not in ``trusted/``; it was written
                to ``rejected/`` first.
        """
        if thumbprint(der) in self.trusted_thumbprints():
            return
        subject = _common_name(der)
        self.create_folders()
        name = _UNSAFE_NAME.sub("_", subject).strip("_") or "server"
        rejected = (
            self.rejected_dir / f"{name}_{thumbprint(der)[:_THUMBPRINT_CHARS]}.der"
        )
        with contextlib.suppress(OSError):
            rejected.write_bytes(der)
        raise UntrustedServerCertificate(subject, rejected, self.trusted_dir)


def create_certificate(
    uri: str,
    host: str | None = None,
    server: bool = False,
    common_name: str | None = None,
) -> tuple[bytes, bytes]:
    """Return a new self-signed application certificate (DER) and its key (PEM).

    The certificate carries what OPC UA requires of an application instance
    certificate: ``uri`` as subjectAltName URI (it must equal the client's
    application URI), the host name as DNS name, key usages digitalSignature,
    nonRepudiation, keyEncipherment, dataEncipherment, and the extended key usage
    clientAuth (plus serverAuth with ``server``). The subject's common name is
    ``common_name``, by default ``edge-gateway@<host>``.
    """
    host = host or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, (common_name or f"edge-gateway@{host}")[:64]
            ),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-gateway"),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName(host)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.DER), key_pem


def certificate_uri(path: Path) -> str | None:
    """Return the application URI (subjectAltName URI) of a certificate file."""
    try:
        cert = x509.load_der_x509_certificate(_as_der(path.read_bytes()))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _as_der(data: bytes) -> bytes:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(
            serialization.Encoding.DER
        )
    x509.load_der_x509_certificate(data)  # raises ValueError on garbage
    return data


def _common_name(der: bytes) -> str:
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return "unreadable certificate"
    return str(names[0].value) if names else "unnamed server"


def _write_private(path: Path, data: bytes) -> None:
    # Created with owner-only permissions rather than chmod after the fact, so the
    # key is never readable by others even for an instant.
    descriptor = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE_MODE
    )
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
