"""The stats figures recomputed by scanning raw events, for bench/dashboard.py to compare and time.

One SQL text per figure runs unchanged on SQLite, PostgreSQL and DuckDB (only the epoch and floor
expressions differ). It reads `events`, joined to `messages` (cohort hour, tracked flag, external id),
`links` (a click's URL) and `customers` (do-not-track flag, identity); no rollup and no aggregate column
kept at ingest. Cards, rates and shares are then derived in Python from docs/metrics.md, independently
of analytics/metrics.py, so a difference points at the rollups or at the metrics code.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Figures = dict[str, Any]
Run = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

OPEN_WEIGHT, CLICK_WEIGHT = 0.6, 0.4  # docs/metrics.md, "Engagement score"
WEIGHT_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # each message weighs 2^(days since this ÷ 30)
SCORE_WINDOW = dt.timedelta(days=90)
BUCKETS = ((0, 20), (21, 40), (41, 60), (61, 80), (81, 100))

_EPOCH = {
    "sqlite": "CAST(strftime('%s', {}) AS INTEGER)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM {}) AS DOUBLE PRECISION)",
    "duckdb": "CAST(EXTRACT(EPOCH FROM {}) AS DOUBLE PRECISION)",
}
# CAST rounds on PostgreSQL and DuckDB but truncates on SQLite (where floor() may be missing); x ≥ 0.
_FLOOR = {
    "sqlite": "CAST({} AS INTEGER)",
    "postgresql": "CAST(floor({}) AS INTEGER)",
    "duckdb": "CAST(floor({}) AS INTEGER)",
}

_HUMAN = "NOT e.machine"
_PER_MESSAGE = {  # one flag or count per message; the names are the rollup_messages counters' inputs
    "sent": "MAX(CASE WHEN e.type = 'sent' THEN 1 ELSE 0 END)",
    "delivered": "MAX(CASE WHEN e.type = 'delivered' THEN 1 ELSE 0 END)",
    "bounced": "MAX(CASE WHEN e.type = 'bounced' THEN 1 ELSE 0 END)",
    # A soft bounce followed by a hard one counts as hard; a hard one stays hard.
    "hard": "MAX(CASE WHEN e.type = 'bounced' AND e.bounce_kind = 'hard' THEN 1 ELSE 0 END)",
    # A human click proves an open even when images were blocked.
    "opened": f"MAX(CASE WHEN e.type IN ('opened', 'clicked') AND {_HUMAN} THEN 1 ELSE 0 END)",
    "machine_opened": "MAX(CASE WHEN e.type = 'opened' AND e.machine THEN 1 ELSE 0 END)",
    "clicked": f"MAX(CASE WHEN e.type = 'clicked' AND {_HUMAN} THEN 1 ELSE 0 END)",
    "unsubscribed": "MAX(CASE WHEN e.type = 'unsubscribed' THEN 1 ELSE 0 END)",
    "complained": "MAX(CASE WHEN e.type = 'complained' THEN 1 ELSE 0 END)",
    "opens": f"SUM(CASE WHEN e.type = 'opened' AND {_HUMAN} THEN 1 ELSE 0 END)",
    "machine_opens": "SUM(CASE WHEN e.type = 'opened' AND e.machine THEN 1 ELSE 0 END)",
    "clicks": f"SUM(CASE WHEN e.type = 'clicked' AND {_HUMAN} THEN 1 ELSE 0 END)",
    "machine_clicks": "SUM(CASE WHEN e.type = 'clicked' AND e.machine THEN 1 ELSE 0 END)",
}
COUNTERS = {  # docs/metrics.md "counts": per-message counters count messages, plural ones events
    "sent": "sent",
    "tracked": "sent * tracked",
    "delivered": "delivered",
    "tracked_delivered": "delivered * tracked",
    "bounced": "bounced",
    "tracked_bounced": "bounced * tracked",
    "hard_bounced": "hard",
    "soft_bounced": "bounced - hard",
    "opened": "opened",
    "machine_opened": "machine_opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
    "opens": "opens",
    "machine_opens": "machine_opens",
    "clicks": "clicks",
    "machine_clicks": "machine_clicks",
}
_JOIN = "FROM messages AS m JOIN events AS e ON e.tenant_id = m.tenant_id AND e.message_id = m.id"
_IN_COHORT = "WHERE m.tenant_id = :tenant AND m.cohort_at >= :start AND m.cohort_at < :end"
_COHORT = f"{_JOIN}\n    {_IN_COHORT}"

COUNTS_SQL = f"""
WITH per_message AS (
    SELECT MAX(CASE WHEN m.tracked THEN 1 ELSE 0 END) AS tracked,
        {", ".join(f"{sql} AS {name}" for name, sql in _PER_MESSAGE.items())}
    {_COHORT}
    GROUP BY m.id
)
SELECT {", ".join(f"COALESCE(SUM({sql}), 0) AS {name}" for name, sql in COUNTERS.items())}
FROM per_message"""

# Each human-opened message by its first human open or click (ties: the order ingest stored them in).
FIRST_OPENS_SQL = f"""
SELECT device, client, COUNT(*) AS opened FROM (
    SELECT e.device, e.client,
        ROW_NUMBER() OVER (PARTITION BY e.message_id ORDER BY e.occurred_at, e.id) AS nth
    {_COHORT} AND e.type IN ('opened', 'clicked') AND {_HUMAN}
) AS human_opens
WHERE nth = 1
GROUP BY device, client"""

LINKS_SQL = f"""
SELECT l.url, COUNT(*) AS clicks, COUNT(DISTINCT e.message_id) AS unique_clicks
    {_JOIN}
    JOIN links AS l
        ON l.tenant_id = e.tenant_id AND l.message_id = e.message_id AND l.position = e.link_position
    {_IN_COHORT} AND e.type = 'clicked' AND {_HUMAN}
GROUP BY l.url
ORDER BY clicks DESC, unique_clicks DESC, l.url
LIMIT 10"""

RECENT_SQL = """
SELECT e.type, e.occurred_at, m.external_id
FROM events AS e JOIN messages AS m ON m.id = e.message_id
WHERE e.tenant_id = :tenant
ORDER BY e.occurred_at DESC, e.id DESC
LIMIT 10"""

# Every customer's score inputs rebuilt from all their events (the score ignores the period).
_ENGAGEMENT_SQL = """
WITH per_message AS (
    SELECT MAX(m.customer_id) AS customer_id,
        MAX(CASE WHEN m.tracked THEN 1 ELSE 0 END) AS tracked,
        MAX(CASE WHEN m.tracked THEN power(2.0, (({epoch} - :weight_epoch) / 86400.0) / 30.0) ELSE 0.0 END)
            AS weight,
        MIN(CASE WHEN e.type = 'sent' THEN e.occurred_at END) AS sent_at,
        MAX(CASE WHEN e.type = 'bounced' THEN 1 ELSE 0 END) AS bounced,
        MAX(CASE WHEN e.type IN ('opened', 'clicked') AND NOT e.machine THEN 1 ELSE 0 END) AS opened,
        MAX(CASE WHEN e.type = 'clicked' AND NOT e.machine THEN 1 ELSE 0 END) AS clicked,
        MIN(CASE WHEN e.type = 'unsubscribed' THEN e.occurred_at END) AS unsubscribed_at,
        MIN(CASE WHEN e.type = 'complained' THEN e.occurred_at END) AS complained_at,
        MIN(CASE WHEN e.type = 'bounced' AND e.bounce_kind = 'hard' THEN e.occurred_at END) AS hard_at
    FROM events AS e JOIN messages AS m ON m.id = e.message_id
    WHERE e.tenant_id = :tenant
    GROUP BY e.message_id
), per_customer AS (
    SELECT customer_id,
        SUM(CASE WHEN sent_at IS NOT NULL THEN tracked ELSE 0 END) AS tracked_sent,
        SUM(bounced * tracked) AS tracked_bounced,
        SUM(CASE WHEN sent_at IS NOT NULL THEN weight ELSE 0.0 END) AS w_sent,
        SUM(bounced * weight) AS w_bounced,
        SUM(opened * weight) AS w_opened,
        SUM(clicked * weight) AS w_clicked,
        MAX(sent_at) AS last_sent_at,
        MIN(unsubscribed_at) AS unsubscribed_at,
        MIN(complained_at) AS complained_at,
        MIN(hard_at) AS hard_at
    FROM per_message
    GROUP BY customer_id
), raw_scores AS (
    SELECT c.id, c.external_id, c.name, p.unsubscribed_at, p.complained_at, p.hard_at,
        100.0 * (:open_weight * p.w_opened + :click_weight * p.w_clicked) / (p.w_sent - p.w_bounced) AS raw
    FROM per_customer AS p JOIN customers AS c ON c.id = p.customer_id
    WHERE c.tenant_id = :tenant AND NOT c.do_not_track AND p.tracked_sent > p.tracked_bounced
        AND p.w_sent - p.w_bounced > 0 AND p.last_sent_at >= :window_start
), clamped AS (
    SELECT id, external_id, name, unsubscribed_at, complained_at, hard_at,
        CASE WHEN raw >= 100.0 THEN 100.0 WHEN raw <= 0.0 THEN 0.0 ELSE raw END AS raw
    FROM raw_scores
)
SELECT id, external_id, name, raw,
    CASE WHEN unsubscribed_at IS NOT NULL OR complained_at IS NOT NULL OR hard_at IS NOT NULL THEN 0
        ELSE {floor} END AS score
FROM clamped"""
# Buckets and the top five in one statement, so the per-customer scan runs once (sorted in Python).
_OUTER_SQL = """
SELECT 0 AS part, CASE {cases} ELSE {last} END AS bucket, COUNT(*) AS customers,
    NULL AS score, NULL AS raw, NULL AS id, NULL AS external_id, NULL AS name
FROM scored GROUP BY 2
UNION ALL
SELECT 1, NULL, NULL, score, raw, id, external_id, name FROM (
    SELECT score, raw, id, external_id, name FROM scored
    WHERE score > 0 ORDER BY score DESC, raw DESC, id LIMIT 5
) AS top_five"""


def engagement_sql(dialect: str) -> str:
    """Bucket counts and the five best scores, from per-customer score inputs rebuilt from events."""
    inner = _ENGAGEMENT_SQL.format(
        epoch=_EPOCH[dialect].format("m.cohort_at"), floor=_FLOOR[dialect].format("raw + 0.5")
    )
    cases = " ".join(f"WHEN score <= {high} THEN {index}" for index, (_low, high) in enumerate(BUCKETS[:-1]))
    return f"WITH scored AS ({inner}\n)" + _OUTER_SQL.format(cases=cases, last=len(BUCKETS) - 1)


def duckdb_sql(sql: str) -> str:
    """The same SQL with DuckDB's `$name` parameters instead of `:name`."""
    return re.sub(r"(?<![:\w]):(\w+)", r"$\1", sql)


def _utc(value: Any) -> dt.datetime:
    # SQLite hands back its text dates, PostgreSQL and DuckDB naive UTC datetimes.
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, dt.datetime)
    return moment.replace(tzinfo=dt.UTC)


def _rate(numerator: float, denominator: float) -> float:
    return 0.0 if denominator <= 0 else min(1.0, max(0.0, numerator / denominator))


def _cards(counts: Mapping[str, int]) -> dict[str, Any]:
    # docs/metrics.md, "Cards": deliveries as reported when the path reports any, else sent − bounced.
    reported = counts["delivered"] > 0
    delivered = counts["delivered"] if reported else max(0, counts["sent"] - counts["bounced"])
    base = counts["tracked_delivered"] if reported else max(0, counts["tracked"] - counts["tracked_bounced"])
    return {
        "sent": counts["sent"],
        "delivered": delivered,
        "open_rate": _rate(counts["opened"], base),
        "click_rate": _rate(counts["clicked"], base),
        "bounce_rate": _rate(counts["bounced"], counts["sent"]),
        "click_to_open_rate": _rate(counts["clicked"], counts["opened"]),
        "machine_open_share": _rate(counts["machine_opened"], base),
        "_base": base,
    }


def _fractions(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {key: value / total for key, value in ordered if value > 0} if total > 0 else {}


def scan_figures(
    run: Run,
    *,
    dialect: str,
    tenant_id: int,
    period: tuple[dt.datetime, dt.datetime],
    previous: tuple[dt.datetime, dt.datetime],
    now: dt.datetime,
) -> Figures:
    """Every recomputable stats figure from raw events, through `run(sql, params)`."""
    params: dict[str, Any] = {"tenant": tenant_id, "start": period[0], "end": period[1]}
    counts = dict(zip(COUNTERS, map(int, run(COUNTS_SQL, params)[0]), strict=True))
    before = dict(
        zip(
            COUNTERS,
            map(int, run(COUNTS_SQL, {**params, "start": previous[0], "end": previous[1]})[0]),
            strict=True,
        )
    )
    cards, earlier = _cards(counts), _cards(before)
    devices: dict[str, int] = {}
    clients: dict[str, int] = {}
    for device, client, opened in run(FIRST_OPENS_SQL, params):
        devices[device] = devices.get(device, 0) + int(opened)
        clients[client] = clients.get(client, 0) + int(opened)
    links = [{"url": url, "clicks": int(c), "unique_clicks": int(u)} for url, c, u in run(LINKS_SQL, params)]
    recent = [(kind, _utc(at), message) for kind, at, message in run(RECENT_SQL, {"tenant": tenant_id})]
    score_params = {
        "tenant": tenant_id,
        "window_start": now - SCORE_WINDOW,
        "weight_epoch": int(WEIGHT_EPOCH.timestamp()),
        "open_weight": OPEN_WEIGHT,
        "click_weight": CLICK_WEIGHT,
    }
    rows = run(engagement_sql(dialect), score_params)
    in_bucket = {int(row[1]): int(row[2]) for row in rows if row[0] == 0}
    scored = sum(in_bucket.values())
    top = sorted((row[3:] for row in rows if row[0] == 1), key=lambda r: (-r[0], -r[1], r[2]))
    counts["tracked_delivered"] = cards.pop("_base")  # the API reports the rates' denominator here
    earlier.pop("_base")
    return {
        "cards": cards,
        "previous": earlier,
        "change": {key: cards[key] - earlier[key] for key in cards},
        "counts": counts,
        "engagement_buckets": [
            {
                "range": f"{low}-{high}",
                "customers": in_bucket.get(index, 0),
                "percent": 100.0 * in_bucket.get(index, 0) / scored if scored else 0.0,
            }
            for index, (low, high) in enumerate(BUCKETS)
        ],
        "top_engaged": [{"customer_id": c, "name": n, "score": int(s)} for s, _raw, _id, c, n in top],
        "top_links": links,
        "devices": _fractions(devices),
        "clients": _fractions(clients),
        "recent_events": recent,
    }


def api_figures(stats: Mapping[str, Any]) -> Figures:
    """The same figures picked from a stats response (`StatsOut.model_dump()` or its JSON)."""
    picked = {key: stats[key] for key in ("cards", "previous", "change", "engagement_buckets", "top_links")}
    picked["counts"] = {key: int(value) for key, value in stats["counts"].items()}
    picked["top_engaged"] = [dict(person) for person in stats["top_engaged"]]
    picked["devices"], picked["clients"] = dict(stats["devices"]), dict(stats["clients"])
    picked["recent_events"] = [
        (event["type"], _utc(event["occurred_at"]), event["message_id"]) for event in stats["recent_events"]
    ]
    return picked


def differences(expected: Figures, got: Figures, *, keys: Sequence[str] | None = None) -> list[str]:
    """Human-readable differences between two figure sets (empty: identical)."""
    found = []
    for key in keys or sorted(set(expected) | set(got)):
        want, have = expected.get(key), got.get(key)
        if want == have:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            for inner in sorted(set(want) | set(have)):
                if want.get(inner) != have.get(inner):
                    found.append(f"{key}.{inner}: {want.get(inner)!r} vs {have.get(inner)!r}")
        elif isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
            found.extend(
                f"{key}[{i}]: {a!r} vs {b!r}"
                for i, (a, b) in enumerate(zip(want, have, strict=True))
                if a != b
            )
        else:
            found.append(f"{key}: {want!r} vs {have!r}")
    return found
