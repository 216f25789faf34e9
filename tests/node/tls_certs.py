"""A throwaway CA, server and client certificate for the TLS tests (made with cryptography)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by a CA the node does not trust
    stranger_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, usage=None, san=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    return cert_path, key_path


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_ca_key = _key(), _key()
    ca = _cert("egfr-node test CA", ca_key, "egfr-node test CA", ca_key, ca=True)
    ca_cert, _ = _write(folder, "ca", ca, ca_key)
    server_key = _key()
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("localhost", server_key, "egfr-node test CA", ca_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)
    server_cert, server_key_path = _write(folder, "server", server, server_key)
    client_key = _key()
    client = _cert("PACS", client_key, "egfr-node test CA", ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    client_cert, client_key_path = _write(folder, "client", client, client_key)
    stranger_key = _key()
    stranger = _cert("STRANGER", stranger_key, "another CA", other_ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger_cert, stranger_key_path = _write(folder, "stranger", stranger, stranger_key)
    return TlsFiles(ca_cert, server_cert, server_key_path, client_cert, client_key_path, stranger_cert, stranger_key_path)
