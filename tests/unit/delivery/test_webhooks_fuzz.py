"""Fuzzing provider webhooks (hypothesis): any body, signed or not, gets a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from mailtrack.config import Settings
from mailtrack.delivery.outbox_tables import webhook_nonces
from mailtrack.delivery.tables import quarantine
from mailtrack.delivery.webhook_events import (
    BadPayloadError,
    mailgun_events,
    postmark_events,
    sendgrid_events,
    ses_events,
)
from mailtrack.messages.tokens import TokenKind, TrackingToken
from tests.factories import make_tenant
from tests.unit.delivery.bounce_mail import CODEC, sent_message
from tests.unit.delivery.webhook_calls import (
    FakeFetcher,
    basic,
    hook_settings,
    mailgun_call,
    make_app,
    post,
    sendgrid_call,
    sns_call,
)

OUR_ID = "<fuzz-0001@track.mailtrack.example>"
# Keys and values the parsers look for, so that generated documents reach deep into them.
_KEY_WORDS = """
    notificationType eventType bounce complaint delivery deliveryDelay mail bounceType bouncedRecipients
    emailAddress status diagnosticCode feedbackId timestamp headers commonHeaders messageId tags
    mailtrack_token mailtrack_message_id event sg_event_id smtp-id response reason type event-data
    id severity delivery-status code message user-variables recipient RecordType Type ID MessageID
    Metadata Details Email BouncedAt DeliveredAt SuppressSending SuppressionReason ChangedAt
    Recipient name value recipients destination source envelope sender enhanced-code
"""
_VALUE_WORDS = """
    Bounce Complaint Delivery DeliveryDelay Send processed delivered deferred bounce blocked
    spamreport unsubscribe accepted failed permanent temporary complained unsubscribed HardBounce
    SoftBounce SpamComplaint Unsubscribe SubscriptionChange ManualSuppression Permanent Transient
    5.1.1 4.2.2 5.2.2 Message-ID
"""
KEYS = _KEY_WORDS.split()
VALUES = [
    *_VALUE_WORDS.split(),
    "550 5.1.1 user unknown\x00",
    "\ud800",
    OUR_ID,
    OUR_ID.strip("<>"),
    CODEC.encode_verp(TrackingToken(TokenKind.BOUNCE, 1, 1)),
    "2016-01-27T14:59:38.237Z",
    "x" * 1500 + "@example.com",  # past every column's length
    "<" + "y" * 1500 + "@example.com>",
    "2019-11-05T16:33:54.9070259Z",
]
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(VALUES)
)
documents = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def app(engine: Engine, settings: Settings) -> FastAPI:
    """The app with every provider configured and one message to attribute to."""
    quarantine.create(engine, checkfirst=True)
    webhook_nonces.create(engine, checkfirst=True)
    sent_message(engine, make_tenant(engine).id, smtp_message_id=OUR_ID)
    return make_app(engine, hook_settings(settings), FakeFetcher())


def _json(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(documents)
def test_normalizers_raise_nothing_but_bad_payload(value: Any) -> None:
    for normalize in (sendgrid_events, mailgun_events, postmark_events):
        with contextlib.suppress(BadPayloadError):
            normalize(value)
    with contextlib.suppress(BadPayloadError):
        ses_events(value, fallback_id="fuzz")


@FUZZ
@given(documents)
def test_signed_ses_notifications(app: FastAPI, value: Any) -> None:
    message = value if isinstance(value, str) else json.dumps(value)
    envelope = sns_call(message.encode("utf-8", "replace").decode("utf-8"))
    assert post(app, "ses", json.dumps(envelope).encode()).status_code in (200, 400)


@FUZZ
@given(documents)
def test_signed_sendgrid_batches(app: FastAPI, value: Any) -> None:
    body, headers = sendgrid_call(value)
    assert post(app, "sendgrid", body, headers).status_code in (200, 400)


@FUZZ
@given(documents)
def test_signed_mailgun_calls(app: FastAPI, value: Any) -> None:
    body = mailgun_call({"event-data": value}) if not isinstance(value, list) else _json(value)
    assert post(app, "mailgun", body).status_code in (200, 400)


@FUZZ
@given(documents)
def test_authenticated_postmark_calls(app: FastAPI, value: Any) -> None:
    assert post(app, "postmark", _json(value), basic()).status_code in (200, 400)


@FUZZ
@given(
    st.sampled_from(["ses", "sendgrid", "mailgun", "postmark"]),
    st.binary(max_size=300) | documents.map(_json),
    st.dictionaries(
        st.sampled_from(
            [
                "x-amz-sns-message-type",
                "X-Twilio-Email-Event-Webhook-Signature",
                "X-Twilio-Email-Event-Webhook-Timestamp",
                "Authorization",
                "Content-Type",
            ]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        max_size=4,
    ),
)
def test_unsigned_calls_are_refused_cleanly(
    app: FastAPI, provider: str, body: bytes, headers: dict[str, str]
) -> None:
    assert post(app, provider, body, headers).status_code in (400, 401, 403)
