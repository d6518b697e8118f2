"""Tables of the messages domain: customers, campaigns, messages, links. No email body is stored."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Computed,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    column,
    false,
    func,
    literal,
    null,
    or_,
)

from mailtrack.analytics.metrics import CLICK_WEIGHT, OPEN_WEIGHT
from mailtrack.db import BigId, UTCDateTime, floor_int, metadata


def score_expressions() -> tuple[ColumnElement[float], ColumnElement[int]]:
    """The engagement score as SQL over a customer row: (unrounded, clamped to 0–100; rounded score).

    Both are NULL for a customer who cannot be scored (do-not-track, nothing delivered); a suppressed
    customer scores 0. The float operations are those of metrics.raw_score, in the same order, so the
    database and Python agree exactly. The database keeps them as generated columns: every write of
    the aggregates (ingest, do-not-track, erasure, imports) updates the score, and the dashboard reads
    buckets and top customers from an index instead of computing every customer's score per view.
    """
    number = {name: column(name, Float) for name in ("w_sent", "w_bounced", "w_opened", "w_clicked")}
    raw = (
        100.0
        * (OPEN_WEIGHT * number["w_opened"] + CLICK_WEIGHT * number["w_clicked"])
        / func.nullif(number["w_sent"] - number["w_bounced"], 0.0, type_=Float)
    )
    clamped = case((raw >= 100.0, literal(100.0, Float)), (raw <= 0.0, literal(0.0, Float)), else_=raw)
    scored = and_(
        column("do_not_track", Boolean) == false(),
        column("tracked_sent", Integer) > column("tracked_bounced", Integer),
        number["w_sent"] - number["w_bounced"] > 0,
    )
    suppressed = or_(
        column("unsubscribed_at").is_not(None),
        column("complained_at").is_not(None),
        column("hard_bounced_at").is_not(None),
    )
    unrounded = case((scored, clamped), else_=null())
    score = case((~scored, null()), (suppressed, literal(0, Integer)), else_=floor_int(clamped + 0.5))
    return unrounded, score


_SCORE_RAW, _SCORE = score_expressions()

customers = Table(
    "customers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("name", String(300), nullable=False, server_default=""),
    Column("email", String(320), nullable=False, server_default=""),
    # Lower-cased, accent-folded "name email" so search is case- and accent-insensitive on both backends.
    Column("search_text", Text, nullable=False, server_default=""),
    Column("do_not_track", Boolean, nullable=False, server_default="0"),
    Column("suppressed_at", UTCDateTime, nullable=True),
    Column("suppression_reason", String(200), nullable=True),
    Column("soft_bounces", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    # Aggregates kept at ingest, so the dashboard never scans raw events.
    Column("last_sent_at", UTCDateTime, nullable=True),
    Column("last_open_at", UTCDateTime, nullable=True),
    Column("last_click_at", UTCDateTime, nullable=True),
    Column("tracked_sent", Integer, nullable=False, server_default="0"),
    Column("tracked_bounced", Integer, nullable=False, server_default="0"),
    Column("messages_opened", Integer, nullable=False, server_default="0"),
    Column("messages_clicked", Integer, nullable=False, server_default="0"),
    # Recency-weighted sums: each tracked message adds 2 ** (days since 2020-01-01 of its send / 30).
    # Any ratio of two of them is the engagement share with a 30-day half-life, whatever "now" is.
    Column("w_sent", Float, nullable=False, server_default="0"),
    Column("w_bounced", Float, nullable=False, server_default="0"),
    Column("w_opened", Float, nullable=False, server_default="0"),
    Column("w_clicked", Float, nullable=False, server_default="0"),
    Column("unsubscribed_at", UTCDateTime, nullable=True),
    Column("complained_at", UTCDateTime, nullable=True),
    Column("hard_bounced_at", UTCDateTime, nullable=True),
    # Kept by the database (VIRTUAL on SQLite, STORED on PostgreSQL): see score_expressions().
    Column("score_raw", Float, Computed(_SCORE_RAW), nullable=True),
    Column("score", SmallInteger, Computed(_SCORE), nullable=True),
    UniqueConstraint("tenant_id", "external_id"),
    Index(None, "tenant_id", "last_sent_at"),  # the scored population: customers mailed in 90 days
    Index(None, "tenant_id", "score", "score_raw", "id"),  # best customers first, without sorting
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(300), nullable=False),
    Column("source", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("tenant_id", "name"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("customer_id", BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("campaign_id", BigId, ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True),
    Column("smtp_message_id", String(300), nullable=True),
    Column("tracked", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # The hour whose cohort this message counts in (its send time); fixed once, so rollups stay exact.
    Column("cohort_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("bounced_at", UTCDateTime, nullable=True),
    Column("bounce_kind", String(8), nullable=True),
    Column("opened_at", UTCDateTime, nullable=True),
    Column("machine_opened_at", UTCDateTime, nullable=True),
    Column("clicked_at", UTCDateTime, nullable=True),
    Column("unsubscribed_at", UTCDateTime, nullable=True),
    Column("complained_at", UTCDateTime, nullable=True),
    Column("open_count", Integer, nullable=False, server_default="0"),
    Column("click_count", Integer, nullable=False, server_default="0"),
    # The latest click, human or not: a different link clicked within a second is a scanner's sweep.
    Column("last_click_at", UTCDateTime, nullable=True),
    Column("last_click_position", SmallInteger, nullable=True),
    UniqueConstraint("tenant_id", "external_id"),
    Index(None, "tenant_id", "customer_id", "cohort_at"),
    Index(None, "tenant_id", "cohort_at"),
    # Bounces quote the Message-ID and arrive before their salon is known (SMTP, `mailtrack inbound`).
    Index(None, "smtp_message_id"),
)

links = Table(
    "links",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("position", SmallInteger, nullable=False),
    # The redirect target lives only here; a click token names (message, position), never a URL.
    Column("url", Text, nullable=False),
    # Human clicks so far: the first one is the message's unique click on this link.
    Column("human_clicks", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("tenant_id", "message_id", "position"),
)
