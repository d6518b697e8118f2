"""Provider webhooks: each provider's documented payloads, valid, forged, stale, replayed, redelivered."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import Engine, select

from mailtrack.config import Settings
from mailtrack.delivery.outbox_tables import webhook_nonces
from mailtrack.delivery.tables import quarantine
from mailtrack.delivery.webhook_auth import sns_canonical
from mailtrack.messages.tables import customers
from mailtrack.messages.tokens import TokenKind, TrackingToken
from mailtrack.tracking.tables import events
from tests.factories import make_tenant
from tests.unit.delivery.bounce_mail import CODEC, sent_message
from tests.unit.delivery.crypto_keys import self_signed, sendgrid_sign, sns_sign
from tests.unit.delivery.webhook_calls import (
    CERT_URL,
    FakeFetcher,
    basic,
    hook_settings,
    iso,
    load,
    mailgun_call,
    make_app,
    post,
    sendgrid_call,
    ses_with_message_id,
    sns_call,
    sns_headers,
)

OUR_ID = "<Kq7vR2xJ0pTz4mWbN8sLdA@track.mailtrack.example>"


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The test database with the tables this module adds (their migration is added separately)."""
    quarantine.create(engine, checkfirst=True)
    webhook_nonces.create(engine, checkfirst=True)
    return engine


@pytest.fixture
def fetcher() -> FakeFetcher:
    """The injected network."""
    return FakeFetcher()


@pytest.fixture
def app(db: Engine, settings: Settings, fetcher: FakeFetcher) -> FastAPI:
    """The app with every provider configured."""
    return make_app(db, hook_settings(settings), fetcher)


@pytest.fixture
def message(db: Engine) -> int:
    """A registered message whose Message-ID is OUR_ID."""
    return sent_message(db, make_tenant(db).id, smtp_message_id=OUR_ID)


def _events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def _quarantined(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(quarantine).order_by(quarantine.c.id)))


def _suppression(engine: Engine) -> str | None:
    with engine.connect() as conn:
        reason: str | None = conn.execute(select(customers.c.suppression_reason)).scalar_one()
    return reason


def _token(engine: Engine, message_id: int) -> str:
    with engine.connect() as conn:
        tenant_id = conn.execute(select(customers.c.tenant_id)).scalar_one()
    return CODEC.encode_verp(TrackingToken(TokenKind.BOUNCE, tenant_id, message_id))


# --- Amazon SES through SNS ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_is_stored_and_suppresses(db: Engine, app: FastAPI, message: int, version: str) -> None:
    envelope = sns_call(json.dumps(ses_with_message_id("ses_bounce.json", OUR_ID)), version=version)
    response = post(app, "ses", json.dumps(envelope).encode(), sns_headers(envelope))
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1
    (event,) = _events(db)
    assert (event.message_id, event.type, event.bounce_kind, event.status) == (
        message,
        "bounced",
        "hard",
        "5.1.1",
    )
    assert event.diagnostic == "smtp; 550 5.1.1 <jane@example.com>... User"
    assert event.external_event_id == "ses:00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000"
    assert _suppression(db) == "hard_bounce"


def test_ses_complaint_and_delivery(db: Engine, app: FastAPI, message: int) -> None:
    for name in ("ses_delivery.json", "ses_complaint.json"):
        envelope = sns_call(json.dumps(ses_with_message_id(name, OUR_ID)))
        assert post(app, "ses", json.dumps(envelope).encode(), sns_headers(envelope)).status_code == 200
    assert [(e.type, e.diagnostic) for e in _events(db)] == [
        ("delivered", "250 ok:  Message 64111812 accepted"),
        ("complained", "feedback-type: abuse"),
    ]
    assert _suppression(db) == "complained"


def test_ses_forged_stale_replayed_and_redelivered(db: Engine, app: FastAPI, message: int) -> None:
    notification = json.dumps(ses_with_message_id("ses_bounce.json", OUR_ID))
    envelope = sns_call(notification)
    forged = {**envelope, "Message": notification.replace("5.1.1", "5.7.1")}
    assert post(app, "ses", json.dumps(forged).encode()).status_code == 401
    other_key = {**envelope, "Signature": sns_call("x")["Signature"]}
    assert post(app, "ses", json.dumps(other_key).encode()).status_code == 401
    stale = sns_call(notification, timestamp=iso(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)))
    assert post(app, "ses", json.dumps(stale).encode()).status_code == 403
    assert _events(db) == []

    body = json.dumps(envelope).encode()
    assert post(app, "ses", body).status_code == 200
    replay = post(app, "ses", body)
    assert replay.status_code == 403
    assert replay.json()["detail"] == "replayed call"
    # The same bounce in a new SNS message (SNS and event publishing both on): stored once.
    again = post(app, "ses", json.dumps(sns_call(notification)).encode())
    assert again.status_code == 200
    assert (again.json()["stored"], again.json()["duplicates"]) == (0, 1)
    assert len(_events(db)) == 1


def test_ses_topic_allow_list_and_certificate_url(db: Engine, app: FastAPI, fetcher: FakeFetcher) -> None:
    notification = json.dumps(load("ses_bounce.json"))
    other_topic = sns_call(notification, topic="arn:aws:sns:us-west-2:999999999999:Elsewhere")
    assert post(app, "ses", json.dumps(other_topic).encode()).status_code == 403
    for url in (
        "http://sns.us-west-2.amazonaws.com/cert.pem",
        "https://sns.us-west-2.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.us-west-2.amazonaws.com/cert.pem",
        "https://sns.us-west-2.amazonaws.com/cert.txt",
        "https://user@sns.us-west-2.amazonaws.com/cert.pem",
    ):
        assert post(app, "ses", json.dumps(sns_call(notification, cert_url=url)).encode()).status_code == 401
    assert fetcher.calls == []  # nothing was fetched for any of them


def test_sns_certificate_is_fetched_once_and_checked(settings: Settings, db: Engine, message: int) -> None:
    fetcher = FakeFetcher()
    app = make_app(db, hook_settings(settings), fetcher)
    for name in ("ses_delivery.json", "ses_bounce.json"):
        envelope = sns_call(json.dumps(ses_with_message_id(name, OUR_ID)))
        assert post(app, "ses", json.dumps(envelope).encode()).status_code == 200
    assert fetcher.calls == [CERT_URL]

    class WrongCertificate(FakeFetcher):
        def __call__(self, url: str) -> bytes:
            return self_signed("evil.example").cert_pem  # not issued to an amazonaws.com name

    app = make_app(db, hook_settings(settings), WrongCertificate())
    assert post(app, "ses", json.dumps(sns_call("{}")).encode()).status_code == 401


def test_sns_subscription_confirmation(db: Engine, app: FastAPI, fetcher: FakeFetcher) -> None:
    envelope = sns_call(
        load("sns_subscription_confirmation.json")["Message"], template="sns_subscription_confirmation.json"
    )
    response = post(app, "ses", json.dumps(envelope).encode(), sns_headers(envelope))
    assert response.status_code == 200, response.text
    assert response.json()["subscription"] == "confirmed"
    assert fetcher.calls == [CERT_URL, envelope["SubscribeURL"]]
    assert post(app, "ses", json.dumps(envelope).encode()).status_code == 403  # replayed: not visited again
    assert len(fetcher.calls) == 2

    other = sns_call(
        "subscribe?", template="sns_subscription_confirmation.json", topic="arn:aws:sns:eu-west-1:6:X"
    )
    assert post(app, "ses", json.dumps(other).encode()).status_code == 403
    assert len(fetcher.calls) == 2  # a topic not on the allow-list is never confirmed

    elsewhere = load("sns_subscription_confirmation.json") | {
        "SubscribeURL": "https://evil.example/?Action=ConfirmSubscription"
    }
    elsewhere["Timestamp"], elsewhere["SignatureVersion"], elsewhere["MessageId"] = iso(), "2", "f-1"
    elsewhere["Signature"] = sns_sign(sns_canonical(elsewhere), version="2")
    assert post(app, "ses", json.dumps(elsewhere).encode()).status_code == 400
    assert len(fetcher.calls) == 2


def test_unattributable_ses_bounce_is_quarantined_once(db: Engine, app: FastAPI) -> None:
    notification = json.dumps(load("ses_bounce.json"))  # names "custom-message-ID", unknown here
    for _ in range(2):
        response = post(app, "ses", json.dumps(sns_call(notification)).encode())
        assert response.status_code == 200
        assert response.json()["unattributed"] == 1
    (row,) = _quarantined(db)
    assert (row.source, row.reason, row.kind, row.status, row.recipient) == (
        "ses",
        "unattributed",
        "bounce",
        "5.1.1",
        "jane@example.com",
    )
    assert row.original_message_id == "<custom-message-ID>"
    assert _events(db) == []


def test_unconfigured_unknown_and_oversized(db: Engine, settings: Settings, app: FastAPI) -> None:
    bare = make_app(db, settings, FakeFetcher())
    for provider in ("ses", "sendgrid", "mailgun", "postmark"):
        assert post(bare, provider, b"{}").status_code == 404
    assert post(app, "sparkpost", b"{}").status_code == 404
    huge = b"[" + b" " * (1024 * 1024) + b"]"
    assert post(app, "sendgrid", huge).status_code == 413
    assert post(app, "ses", [huge[:600_000], huge[600_000:]]).status_code == 413  # streamed, no length
    assert post(app, "ses", b"not json").status_code == 400
    assert (
        post(app, "ses", b'{"Type": "Notification"}', {"x-amz-sns-message-type": "Other"}).status_code == 400
    )


# --- SendGrid -----------------------------------------------------------------------------------


def _sendgrid_batch(message_id: str) -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = load("sendgrid_events.json")
    for event in batch:
        event["mailtrack_message_id"] = message_id.strip("<>")  # custom_args arrive as top-level fields
    return batch


def test_sendgrid_documented_batch(db: Engine, app: FastAPI, message: int) -> None:
    body, headers = sendgrid_call(_sendgrid_batch(OUR_ID))
    response = post(app, "sendgrid", body, headers)
    assert response.status_code == 200, response.text
    assert (response.json()["stored"], response.json()["ignored"]) == (
        7,
        4,
    )  # open, click, dropped, resubscribe
    stored = [(e.type, e.bounce_kind, e.status) for e in _events(db)]
    assert sorted(stored, key=str) == sorted(
        [
            ("sent", None, None),
            ("bounced", "soft", "4.0.0"),
            ("delivered", None, None),
            ("bounced", "hard", "5.0.0"),
            ("complained", None, None),
            ("unsubscribed", None, None),
            ("unsubscribed", None, None),
        ],
        key=str,
    )
    assert all(e.external_event_id.startswith("sendgrid:") for e in _events(db))


def test_sendgrid_forged_stale_replayed_and_redelivered(db: Engine, app: FastAPI, message: int) -> None:
    batch = _sendgrid_batch(OUR_ID)
    body, headers = sendgrid_call(batch)
    tampered = body.replace(b"5.0.0", b"4.0.0")
    assert post(app, "sendgrid", tampered, headers).status_code == 401
    assert post(app, "sendgrid", body, {"Content-Type": "application/json"}).status_code == 401
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert post(app, "sendgrid", *sendgrid_call(batch, key=stranger)).status_code == 401
    old = int(dt.datetime.now(dt.UTC).timestamp()) - 3600
    assert post(app, "sendgrid", *sendgrid_call(batch, timestamp=old)).status_code == 403
    assert _events(db) == []

    assert post(app, "sendgrid", body, headers).status_code == 200
    assert post(app, "sendgrid", body, headers).status_code == 403  # the same signed call again
    stamp = str(int(dt.datetime.now(dt.UTC).timestamp()) + 1)
    fresh = {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": stamp}
    fresh["X-Twilio-Email-Event-Webhook-Signature"] = sendgrid_sign(stamp, body)
    again = post(app, "sendgrid", body, fresh)  # SendGrid retrying the batch, signed anew
    assert again.status_code == 200
    assert (again.json()["stored"], again.json()["duplicates"]) == (0, 7)
    assert len(_events(db)) == 7


# --- Mailgun ------------------------------------------------------------------------------------


def _mailgun(name: str, token: str) -> dict[str, Any]:
    payload: dict[str, Any] = load(name)
    payload["event-data"]["user-variables"]["mailtrack_token"] = token  # v:mailtrack_token when sending
    return payload


def test_mailgun_documented_events(db: Engine, app: FastAPI, message: int) -> None:
    token = _token(db, message)
    results = {
        name: post(app, "mailgun", mailgun_call(_mailgun(name, token))).json()
        for name in (
            "mailgun_delivered.json",
            "mailgun_temporary_fail.json",
            "mailgun_permanent_fail.json",
            "mailgun_bounce.json",
            "mailgun_complained.json",
        )
    }
    assert results["mailgun_permanent_fail.json"]["ignored"] == 1  # a suppressed address: nothing sent
    assert [(e.type, e.bounce_kind, e.status, e.external_event_id) for e in _events(db)] == [
        ("delivered", None, None, "mailgun:CPgfbmQMTCKtHW6uIWtuVe"),
        ("bounced", "soft", "4.2.2", "mailgun:Fs7-5t81S2ucWXDqT4F8jg"),
        ("bounced", "hard", "5.1.1", "mailgun:Yk3VdMQ0Sl2uUjoGM1UdJw"),
        ("complained", None, None, "mailgun:-Agny091SquKnsrW2NEKUA"),
    ]
    assert _events(db)[2].diagnostic.startswith("550 5.1.1 The email account")


def test_mailgun_forged_stale_replayed_and_redelivered(db: Engine, app: FastAPI, message: int) -> None:
    payload = _mailgun("mailgun_bounce.json", _token(db, message))
    assert post(app, "mailgun", json.dumps(payload).encode()).status_code == 401  # the docs' signature
    assert post(app, "mailgun", mailgun_call(payload, key="key-wrong")).status_code == 401
    signed = json.loads(mailgun_call(payload))
    signed["event-data"]["severity"] = "temporary"
    assert post(app, "mailgun", json.dumps(signed).encode()).status_code == 200  # the token signs no body
    old = int(dt.datetime.now(dt.UTC).timestamp()) - 3600
    assert post(app, "mailgun", mailgun_call(payload, timestamp=old)).status_code == 403
    body = mailgun_call(payload, token="c" * 50)
    assert post(app, "mailgun", body).status_code == 200
    assert post(app, "mailgun", body).status_code == 403  # single-use token
    again = post(app, "mailgun", mailgun_call(payload))
    assert again.json()["duplicates"] == 1
    assert post(app, "mailgun", b"event-data=x&signature=y").status_code == 400
    assert [e.type for e in _events(db)] == ["bounced"]


# --- Postmark -----------------------------------------------------------------------------------


def _postmark(name: str) -> bytes:
    payload: dict[str, Any] = load(name)
    payload.setdefault("Metadata", {})["mailtrack_message_id"] = OUR_ID
    return json.dumps(payload).encode()


def test_postmark_documented_events(db: Engine, app: FastAPI, message: int) -> None:
    for name in (
        "postmark_delivery.json",
        "postmark_open.json",
        "postmark_bounce.json",
        "postmark_spam_complaint.json",
        "postmark_subscription_change.json",
    ):
        assert post(app, "postmark", _postmark(name), basic()).status_code == 200
    assert [(e.type, e.bounce_kind, e.external_event_id) for e in _events(db)] == [
        ("delivered", None, "postmark:delivery:00000000-0000-0000-0000-000000000000:john@example.com"),
        ("bounced", "hard", "postmark:bounce:4323372036854775807"),
        ("complained", None, "postmark:bounce:42"),
        ("unsubscribed", None, "postmark:subscription:00000000-0000-0000-0000-000000000000:"
         "bounced-address@wildbit.com:2020-02-01T10:53:34.416071Z"),
    ]  # fmt: skip
    again = post(app, "postmark", _postmark("postmark_bounce.json"), basic())
    assert again.json()["duplicates"] == 1  # basic auth cannot refuse a replay; ids make it harmless


def test_postmark_needs_its_credentials(db: Engine, app: FastAPI, message: int) -> None:
    body = _postmark("postmark_bounce.json")
    missing = post(app, "postmark", body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Basic")
    assert post(app, "postmark", body, basic(password="guess")).status_code == 401
    assert post(app, "postmark", body, basic(user="admin")).status_code == 401
    assert post(app, "postmark", body, {"Authorization": "Basic !!!"}).status_code == 401
    assert _events(db) == []


def test_postmark_unattributed_bounce_keeps_no_body(db: Engine, app: FastAPI) -> None:
    assert (
        post(app, "postmark", json.dumps(load("postmark_bounce.json")).encode(), basic()).status_code == 200
    )
    (row,) = _quarantined(db)
    assert row.source == "postmark"
    assert "Full dump of bounce" not in row.headers


def test_overlong_provider_fields_are_cut_not_refused(db: Engine, app: FastAPI) -> None:
    payload = load("mailgun_bounce.json")
    payload["event-data"]["envelope"]["sender"] = "x" * 1500 + "@example.com"
    payload["event-data"]["message"]["headers"]["message-id"] = "y" * 1500 + "@example.com"
    payload["event-data"]["recipient"] = "z" * 1500 + "@example.com"
    response = post(app, "mailgun", mailgun_call(payload))
    assert response.status_code == 200, response.text
    (row,) = _quarantined(db)
    assert (len(row.envelope_recipient), len(row.original_message_id), len(row.recipient)) == (320, 300, 320)
