"""Proving a webhook call came from the provider: SNS certificates, SendGrid ECDSA, Mailgun HMAC, basic auth.

Every check raises `WebhookRejected` with the HTTP status to answer: 401 when the caller did not prove
who it is (missing or wrong signature, credentials, or certificate URL), 403 when it did but the call
must still not be processed (stale or future timestamp, replay, a TopicArn not on the allow-list),
400 for a body that cannot be read. Nothing here touches the database; replays are refused by the
nonce table (webhooks.py) in the transaction that stores the events.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

Fetcher = Callable[[str], bytes]
"""GET an https URL and return its body (SNS signing certificates, subscription confirmations)."""

MAX_FETCH_BYTES = 256 * 1024
SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
# SNS signs from sns.<region>.amazonaws.com (and .com.cn in China); nothing else may serve the key.
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]{1,40}\.amazonaws\.com(?:\.cn)?")
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SNS_FIELDS["UnsubscribeConfirmation"] = _SNS_FIELDS["SubscriptionConfirmation"]
SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


class WebhookRejected(Exception):  # noqa: N818  (a rejection is an answer, not an error of ours)
    """The call is refused with `status` (and `headers`, e.g. WWW-Authenticate)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """Refuse with this HTTP status and reason."""
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


def default_fetcher(url: str) -> bytes:
    """GET an https URL (10 s timeout, 256 KiB at most)."""
    if urlsplit(url).scheme != "https":
        raise ValueError("only https URLs are fetched")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (https only, checked above)
        body: bytes = response.read(MAX_FETCH_BYTES + 1)
    if len(body) > MAX_FETCH_BYTES:
        raise ValueError("response too large")
    return body


def is_sns_url(url: object, *, certificate: bool) -> bool:
    """True for an https URL on an SNS host (a .pem path when `certificate`), without credentials or port."""
    if not isinstance(url, str) or len(url) > 2048:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username or parts.password or port not in (None, 443):
        return False
    if not _SNS_HOST.fullmatch(parts.hostname or ""):
        return False
    return parts.path.endswith(".pem") if certificate else True


class CertificateCache:
    """SNS signing keys by certificate URL: fetched once through the fetcher, then kept (bounded, LRU)."""

    def __init__(self, fetcher: Fetcher, *, size: int = 16) -> None:
        """Fetch with `fetcher`; keep at most `size` certificates."""
        self.fetcher = fetcher
        self.size = size
        self._keys: OrderedDict[str, tuple[rsa.RSAPublicKey, dt.datetime, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def public_key(self, url: str, now: dt.datetime) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at `url`, valid at `now`; raises WebhookRejected."""
        with self._lock:
            cached = self._keys.get(url)
            if cached is not None:
                self._keys.move_to_end(url)
        if cached is None:
            cached = self._load(url)
            with self._lock:
                self._keys[url] = cached
                while len(self._keys) > self.size:
                    self._keys.popitem(last=False)
        key, not_before, not_after = cached
        if not not_before <= now <= not_after:
            raise WebhookRejected(401, "the SNS signing certificate is not valid now")
        return key

    def _load(self, url: str) -> tuple[rsa.RSAPublicKey, dt.datetime, dt.datetime]:
        try:
            pem = self.fetcher(url)
        except Exception as exc:  # no network, DNS, TLS, HTTP error: SNS retries a 503
            raise WebhookRejected(503, "could not fetch the SNS signing certificate") from exc
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise WebhookRejected(401, "the SNS signing certificate is unreadable") from None
        names = [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or not any(n.endswith("amazonaws.com") for n in names):
            raise WebhookRejected(401, "the certificate is not an SNS signing certificate")
        return key, cert.not_valid_before_utc, cert.not_valid_after_utc


def sns_canonical(message: Mapping[str, Any]) -> str:
    """The string SNS signs: the type's fields, in order, as `Name\\nvalue\\n` (absent Subject skipped)."""
    lines = []
    for name in _SNS_FIELDS[str(message["Type"])]:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise WebhookRejected(401, f"SNS field {name} is missing")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines)


def verify_sns(
    message: Mapping[str, Any],
    *,
    topics: Collection[str],
    certificates: CertificateCache,
    now: dt.datetime,
    max_age: int,
) -> float:
    """Check an SNS message's TopicArn, certificate URL, signature and age; returns its Timestamp."""
    if message.get("Type") not in SNS_TYPES:
        raise WebhookRejected(400, "not an SNS message")
    if message.get("TopicArn") not in topics:
        raise WebhookRejected(403, "TopicArn not allowed")
    url = message.get("SigningCertURL")
    if not is_sns_url(url, certificate=True):
        raise WebhookRejected(401, "SigningCertURL is not an https SNS URL")
    assert isinstance(url, str)
    version = message.get("SignatureVersion")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # noqa: S303  (SNS SignatureVersion 1 is SHA1withRSA; v2 is preferred)
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise WebhookRejected(401, "unknown SignatureVersion")
    signature = _b64(message.get("Signature"))
    canonical = sns_canonical(message).encode("utf-8")
    key = certificates.public_key(url, now)
    try:
        key.verify(signature, canonical, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise WebhookRejected(401, "bad SNS signature") from None
    timestamp = _iso_seconds(message.get("Timestamp"))
    check_fresh(timestamp, now=now, max_age=max_age)
    return timestamp


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as shown in its settings (base64 DER), or PEM."""
    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(stripped, validate=True))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise ValueError("MAILTRACK_SENDGRID_PUBLIC_KEY is not a public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("MAILTRACK_SENDGRID_PUBLIC_KEY is not an ECDSA key")
    return key


def verify_sendgrid(
    headers: Mapping[str, str], body: bytes, *, key: ec.EllipticCurvePublicKey, now: dt.datetime, max_age: int
) -> tuple[str, int]:
    """Check the ECDSA P-256 signature over timestamp + body; returns (nonce, timestamp)."""
    signature, timestamp = headers.get(SENDGRID_SIGNATURE), headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise WebhookRejected(401, "missing X-Twilio-Email-Event-Webhook-Signature or -Timestamp")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookRejected(401, "bad X-Twilio-Email-Event-Webhook-Timestamp")
    try:
        key.verify(_b64(signature), timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookRejected(401, "bad SendGrid signature") from None
    check_fresh(int(timestamp), now=now, max_age=max_age)
    return signature, int(timestamp)


def verify_mailgun(
    payload: Mapping[str, Any], *, signing_key: str, now: dt.datetime, max_age: int
) -> tuple[str, int]:
    """Check the HMAC-SHA256 of timestamp + token; returns (token, timestamp)."""
    block = payload.get("signature")
    if not isinstance(block, dict):
        raise WebhookRejected(401, "missing Mailgun signature")
    timestamp, token, signature = (block.get(name) for name in ("timestamp", "token", "signature"))
    if not (_ascii(timestamp) and _ascii(token) and _ascii(signature)):
        raise WebhookRejected(401, "incomplete Mailgun signature")
    if not timestamp.isdigit() or len(timestamp) > 12 or not 20 <= len(token) <= 200:
        raise WebhookRejected(401, "malformed Mailgun signature")
    expected = hmac.new(signing_key.encode("utf-8"), (timestamp + token).encode("ascii"), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), signature.lower()):
        raise WebhookRejected(401, "bad Mailgun signature")
    check_fresh(int(timestamp), now=now, max_age=max_age)
    return token, int(timestamp)


def verify_basic_auth(headers: Mapping[str, str], *, user: str, password: str) -> None:
    """Check HTTP basic credentials (Postmark signs nothing; its webhook URL carries them)."""
    challenge = {"WWW-Authenticate": 'Basic realm="mailtrack-webhooks"'}
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise WebhookRejected(401, "basic authentication required", challenge)
    try:
        given_user, colon, given_password = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeError):
        raise WebhookRejected(401, "malformed basic credentials", challenge) from None
    # Both compared, always: the time taken says nothing about which one was wrong.
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    if not (colon and user_ok and password_ok):
        raise WebhookRejected(401, "wrong credentials", challenge)


def check_fresh(timestamp: float, *, now: dt.datetime, max_age: int) -> None:
    """Refuse (403) a signed timestamp further than `max_age` seconds from now, either way."""
    if abs(now.timestamp() - timestamp) > max_age:
        raise WebhookRejected(403, "stale or future timestamp")


def _ascii(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.isascii()


def _b64(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > 4096:
        raise WebhookRejected(401, "missing or malformed signature")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected(401, "malformed signature") from None


def _iso_seconds(value: object) -> float:
    if not isinstance(value, str):
        raise WebhookRejected(401, "missing Timestamp")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookRejected(401, "malformed Timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
