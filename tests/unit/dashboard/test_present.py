"""Verdicts in plain words, bounce meanings, number formats and chart geometry."""

from __future__ import annotations

import datetime as dt

import pytest

from mailtrack.dashboard import present
from mailtrack.dashboard.queries import HistoryEvent, MessageState

NOW = dt.datetime(2026, 8, 10, 12, 0, tzinfo=dt.UTC)
SENT = dt.datetime(2026, 8, 3, 14, 0, tzinfo=dt.UTC)  # 16:00 in Budapest


def _message(**state: object) -> MessageState:
    base: dict[str, object] = {
        "id": 1,
        "external_id": "m1",
        "channel": "marketing",
        "source": "campaign",
        "campaign": "August newsletter",
        "tracked": True,
        "cohort_at": SENT,
        "sent_at": SENT,
        "delivered_at": SENT + dt.timedelta(minutes=1),
        "bounced_at": None,
        "bounce_kind": None,
        "opened_at": None,
        "machine_opened_at": None,
        "clicked_at": None,
        "unsubscribed_at": None,
        "complained_at": None,
    }
    return MessageState(**{**base, **state})  # type: ignore[arg-type]


def _bounce(status: str) -> HistoryEvent:
    return HistoryEvent(
        1, "bounced", SENT, None, None, None, False, None, "hard", status, "550 …", None, None, None, None
    )


def _verdict(message: MessageState, history: list[HistoryEvent] | None = None, now: dt.datetime = NOW) -> str:
    return present.message_verdict(message, history or [], timezone="Europe/Budapest", now=now).text


def test_verdicts_say_what_happened() -> None:
    assert _verdict(_message()) == "delivered on 3 Aug, never opened: likely in the spam folder or unread"
    assert _verdict(_message(), now=SENT + dt.timedelta(hours=5)) == "delivered on 3 Aug, not opened yet"
    assert _verdict(_message(delivered_at=None)).startswith("sent on 3 Aug, never opened")
    bounced = _message(delivered_at=None, bounced_at=SENT, bounce_kind="hard")
    assert _verdict(bounced, [_bounce("5.1.1")]) == "bounced on 3 Aug: mailbox does not exist (5.1.1)"
    assert _verdict(bounced) == "bounced on 3 Aug: a permanent failure"
    soft = _message(bounced_at=SENT, bounce_kind="soft")
    assert _verdict(soft, [_bounce("4.2.2")]) == "temporarily refused on 3 Aug: the mailbox is full (4.2.2)"
    opened = _message(opened_at=SENT + dt.timedelta(days=3, hours=-6))
    assert _verdict(opened) == "opened on 6 Aug at 10:00"
    clicked = _message(opened_at=SENT + dt.timedelta(hours=1), clicked_at=SENT + dt.timedelta(hours=2))
    assert _verdict(clicked) == "opened on 3 Aug at 17:00 and clicked on 3 Aug at 18:00"
    assert "whether it was read is unknown" in _verdict(_message(machine_opened_at=SENT))
    assert _verdict(_message(tracked=False, channel="system")).endswith(
        "system mail is never tracked, so opens cannot be seen"
    )
    assert _verdict(_message(complained_at=SENT)).startswith("marked as spam on 3 Aug")
    assert _verdict(_message(unsubscribed_at=SENT)) == "unsubscribed on 3 Aug"
    assert _verdict(_message(sent_at=None, delivered_at=None)).startswith("registered on 3 Aug, not sent yet")
    a_year_later = NOW.replace(year=2027)
    assert _verdict(_message(), now=a_year_later).startswith("delivered on 3 Aug 2026, never opened")


@pytest.mark.parametrize(
    ("status", "kind", "meaning"),
    [
        ("5.1.1", "hard", "mailbox does not exist"),
        ("5.7.26", "hard", "refused: the sender's authentication (SPF/DKIM/DMARC) failed"),
        ("5.1.9", "hard", "the address is not valid"),
        ("4.7.9", "soft", "refused by policy or a spam filter"),
        (None, "soft", "a temporary failure; the server may accept a later try"),
        (None, None, "a permanent failure"),
    ],
)
def test_bounce_codes_in_words(status: str | None, kind: str | None, meaning: str) -> None:
    assert present.bounce_meaning(status, kind) == meaning


def test_numbers_and_changes() -> None:
    assert present.pct(0.2346) == "23.5%"
    assert present.pct(None) == "–"
    assert present.number(28946) == "28,946"
    assert present.change_text("open_rate", 0.021) == "+2.1 pts"
    assert present.change_text("sent", -12) == "-12"
    assert present.change_tone("open_rate", 0.02) == "good"
    assert present.change_tone("bounce_rate", 0.02) == "bad"
    assert present.change_tone("bounce_rate", -0.02) == "good"
    assert present.change_tone("sent", 100) == "flat"


def test_donut_segments_tile_the_circle() -> None:
    slices = present.donut(
        {"mobile": 0.5, "desktop": 0.3, "unknown": 0.2}, present.DEVICE_LABELS, present.DEVICE_COLORS
    )
    assert [s.label for s in slices] == ["Phone", "Computer", "Unknown (proxy)"]
    assert [s.offset for s in slices] == ["25.000", "-25.000", "-55.000"]
    assert sum(float(s.dash.split()[0]) for s in slices) == pytest.approx(100)


def test_heatmap_reads_either_grid_shape_and_marks_the_best_slot() -> None:
    rows = [[0.1] * 24 for _ in range(7)]
    rows[3][10] = 0.3
    as_rows = present.model_heatmap({"weekday": "Thursday", "hour": 10, "grid": rows})
    items = [{"weekday": d, "hour": h, "expected_open_rate": rows[d][h]} for d in range(7) for h in range(24)]
    as_items = present.model_heatmap({"weekday": "Thursday", "hour": 10, "grid": items})
    assert as_rows is not None
    assert as_rows == as_items
    best = [c for c in as_rows if c.best]
    assert [(c.weekday, c.hour, c.opacity) for c in best] == [(3, 10, "1.00")]
    assert present.model_heatmap({"weekday": "Thursday", "hour": 10}) is None
    assert present.observed_heatmap({}) is None
    observed = present.observed_heatmap({24 * 3 + 10: 5})
    assert observed is not None
    assert observed[24 * 3 + 10].title == "Thursday 10:00 – 5 first opens"
