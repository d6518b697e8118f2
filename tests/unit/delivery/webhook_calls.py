"""Builders of provider webhook calls, signed with the test keys, and a way to post them to the app."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.delivery import webhook_routes
from mailtrack.delivery.webhook_auth import sns_canonical
from mailtrack.delivery.webhooks import Webhooks
from tests.unit.delivery.bounce_mail import CODEC
from tests.unit.delivery.crypto_keys import sendgrid_keys, sendgrid_sign, sns_sign, sns_signing

DATA = Path(__file__).resolve().parents[2] / "data" / "webhooks"
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"
CERT_URL = (
    "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
)
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
POSTMARK = ("postmark", "pm-hook-secret")


def load(name: str) -> Any:
    """A documented payload from tests/data/webhooks (a fresh copy)."""
    return copy.deepcopy(json.loads((DATA / name).read_text(encoding="utf-8")))


class FakeFetcher:
    """The network, as far as SNS goes: our certificate at CERT_URL, confirmation URLs answer 200."""

    def __init__(self) -> None:
        """Nothing fetched yet."""
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url == CERT_URL:
            return sns_signing().cert_pem
        if "Action=ConfirmSubscription" in url:
            return b"<ConfirmSubscriptionResponse/>"
        raise OSError(f"no network: {url}")


def hook_settings(settings: Settings) -> Settings:
    """Settings with every provider configured."""
    return settings.model_copy(
        update={
            "ses_topic_arns": [TOPIC],
            "sendgrid_public_key": sendgrid_keys()[1],
            "mailgun_signing_key": SecretStr(MAILGUN_KEY),
            "postmark_webhook_user": POSTMARK[0],
            "postmark_webhook_password": SecretStr(POSTMARK[1]),
        }
    )


def make_app(engine: Engine, settings: Settings, fetcher: FakeFetcher) -> FastAPI:
    """The whole app with the webhook router mounted and our fetcher injected."""
    app = create_app(settings, engine=engine)
    if not any(getattr(route, "path", "") == "/api/v1/webhooks/{provider}" for route in app.routes):
        app.include_router(webhook_routes.router)  # app.py wiring is added separately
    app.state.webhooks = Webhooks(settings, engine, CODEC, fetcher=fetcher)
    return app


def post(
    app: FastAPI, provider: str, body: bytes | list[bytes], headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST a body (a list of chunks is streamed without Content-Length) in-process."""

    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            content = chunks(body) if isinstance(body, list) else body
            return await client.post(f"/api/v1/webhooks/{provider}", content=content, headers=headers or {})

    return asyncio.run(send())


def iso(moment: dt.datetime | None = None) -> str:
    """An SNS Timestamp."""
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sns_call(
    message: str,
    *,
    template: str = "sns_notification.json",
    version: str = "2",
    message_id: str | None = None,
    timestamp: str | None = None,
    topic: str = TOPIC,
    cert_url: str = CERT_URL,
) -> dict[str, Any]:
    """An SNS envelope carrying `message`, signed as SNS would (v1 SHA1 or v2 SHA256)."""
    envelope: dict[str, Any] = load(template)
    envelope.update(
        Message=message,
        MessageId=message_id or f"{secrets.token_hex(4)}-fdea-4c2c-8f9d-{secrets.token_hex(6)}",
        Timestamp=timestamp or iso(),
        TopicArn=topic,
        SignatureVersion=version,
        SigningCertURL=cert_url,
    )
    if "SubscribeURL" in envelope:
        envelope["SubscribeURL"] = envelope["SubscribeURL"].replace(
            "arn:aws:sns:us-west-2:123456789012:MyTopic", topic
        )
    envelope["Signature"] = sns_sign(sns_canonical(envelope), version=version)
    return envelope


def sns_headers(envelope: dict[str, Any]) -> dict[str, str]:
    """The headers SNS sends with a message."""
    return {
        "x-amz-sns-message-type": envelope["Type"],
        "x-amz-sns-message-id": envelope["MessageId"],
        "x-amz-sns-topic-arn": envelope["TopicArn"],
        "Content-Type": "text/plain; charset=UTF-8",
    }


def ses_with_message_id(name: str, message_id: str) -> dict[str, Any]:
    """A documented SES notification whose original Message-ID is ours."""
    notification: dict[str, Any] = load(name)
    mail = notification["mail"]
    mail["commonHeaders"]["messageId"] = message_id
    for header in mail["headers"]:
        if header["name"] == "Message-ID":
            header["value"] = message_id
    return notification


def sendgrid_call(
    events: Any, *, timestamp: int | None = None, key: Any = None
) -> tuple[bytes, dict[str, str]]:
    """A SendGrid batch and its signature headers."""
    body = json.dumps(events).encode("utf-8")
    stamp = str(timestamp if timestamp is not None else int(dt.datetime.now(dt.UTC).timestamp()))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": sendgrid_sign(stamp, body, key),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }
    return body, headers


def mailgun_call(
    payload: dict[str, Any], *, timestamp: int | None = None, token: str | None = None, key: str = MAILGUN_KEY
) -> bytes:
    """A Mailgun call with its signature block recomputed for this timestamp and token."""
    stamp = str(timestamp if timestamp is not None else int(dt.datetime.now(dt.UTC).timestamp()))
    token = token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    payload = {**payload, "signature": {"timestamp": stamp, "token": token, "signature": signature}}
    return json.dumps(payload).encode("utf-8")


def basic(user: str = POSTMARK[0], password: str = POSTMARK[1]) -> dict[str, str]:
    """Postmark's basic-auth header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
