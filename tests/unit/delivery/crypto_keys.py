"""Test keys and certificates (`cryptography`): loopback TLS, a stand-in SNS certificate, SendGrid's key."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertKey:
    """A private key and its self-signed certificate, both PEM."""

    key: rsa.RSAPrivateKey
    cert_pem: bytes
    key_pem: bytes


def self_signed(common_name: str, *, ip: str | None = None, days: int = 30) -> CertKey:
    """A fresh 2048-bit RSA key and a self-signed certificate for `common_name` (and an IP SAN)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(common_name)]
    if ip:
        sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertKey(key, cert.public_bytes(serialization.Encoding.PEM), key_pem)


@lru_cache(maxsize=1)
def loopback_tls() -> CertKey:
    """One certificate for 127.0.0.1 per test run (RSA key generation is slow)."""
    return self_signed("localhost", ip="127.0.0.1")


def server_context(cert: CertKey, directory: Path) -> ssl.SSLContext:
    """A TLS server context presenting `cert`."""
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.cert_pem)
    key_file.write_bytes(cert.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context(cert: CertKey) -> ssl.SSLContext:
    """A TLS client context trusting only `cert` (hostname checks stay on)."""
    return ssl.create_default_context(cadata=cert.cert_pem.decode("ascii"))


@lru_cache(maxsize=1)
def sns_signing() -> CertKey:
    """Our stand-in for SNS's signing certificate (Amazon's is CN=sns.amazonaws.com)."""
    return self_signed("sns.amazonaws.com")


def sns_sign(canonical: str, *, version: str = "1", cert: CertKey | None = None) -> str:
    """The base64 `Signature` SNS would send: SHA1withRSA (v1) or SHA256withRSA (v2)."""
    algorithm: hashes.HashAlgorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    signature = (cert or sns_signing()).key.sign(canonical.encode("utf-8"), padding.PKCS1v15(), algorithm)
    return base64.b64encode(signature).decode("ascii")


@lru_cache(maxsize=1)
def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key pair; the public half base64 DER, as SendGrid shows its verification key."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode("ascii")


def sendgrid_sign(timestamp: str, payload: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """The X-Twilio-Email-Event-Webhook-Signature header for this timestamp and body."""
    private = key or sendgrid_keys()[0]
    signature = private.sign(timestamp.encode("ascii") + payload, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")
