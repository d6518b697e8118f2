"""Presentation: numbers, dates and verdicts in plain words, and chart geometry for inline SVG.

Charts are SVG whose sizes and colours are presentation attributes (never `style=`), so the pages work
under a Content-Security-Policy without 'unsafe-inline' and need no JavaScript or chart library.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mailtrack.dashboard.queries import HistoryEvent, MessageState

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEGMENTS = ("Win-back", "Cooling", "Regular", "Engaged", "VIP")  # one per engagement bucket
PALETTE = ("#2f5bd3", "#17a589", "#e0a020", "#c2417a", "#7a5af5", "#7f8c9a", "#3c9ee8", "#a3b51c")
NOT_OPENED_VERDICT_AFTER = dt.timedelta(days=2)  # most opens come within two days of arrival

CARD_DEFINITIONS = {
    "sent": "Messages the mail relay accepted (SMTP 250) among those sent in this period. "
    "A period is a cohort: later opens and clicks of its messages count for it.",
    "delivered": "Reported deliveries when your sending path reports them, otherwise sent − bounced.",
    "open_rate": "Tracked messages opened by a person at least once (a click proves an open) ÷ tracked "
    "messages delivered. Machine opens and untracked mail (system mail) are left out.",
    "click_rate": "Tracked messages with at least one human click ÷ tracked messages delivered. "
    "Link scanners' clicks are left out.",
    "bounce_rate": "Bounced messages, hard (permanent, 5.x.x) or soft (temporary, 4.x.x) ÷ sent, "
    "over all mail.",
    "click_to_open_rate": "Clicked ÷ opened: how convincing the content was for those who opened.",
    "machine_open_share": "Tracked messages fetched by a machine (Apple Mail Privacy Protection prefetch, "
    "security scanners) ÷ tracked messages delivered. Shown for context; never counted as opens.",
}
CARD_LABELS = {
    "sent": "Sent",
    "delivered": "Delivered",
    "open_rate": "Open rate",
    "click_rate": "Click rate",
    "bounce_rate": "Bounce rate",
    "click_to_open_rate": "Click-to-open",
    "machine_open_share": "Machine opens",
}
# Whether a rise is good news (True), bad news (False) or neither (None).
CARD_DIRECTION: dict[str, bool | None] = {
    "sent": None,
    "delivered": None,
    "open_rate": True,
    "click_rate": True,
    "bounce_rate": False,
    "click_to_open_rate": True,
    "machine_open_share": None,
}
DEVICE_COLORS = {"mobile": "#2f5bd3", "desktop": "#17a589", "tablet": "#e0a020", "unknown": "#a7b0bd"}
DEVICE_LABELS = {"mobile": "Phone", "tablet": "Tablet", "desktop": "Computer", "unknown": "Unknown (proxy)"}
CLIENT_LABELS = {
    "gmail": "Gmail",
    "outlook": "Outlook",
    "apple_mail": "Apple Mail",
    "yahoo": "Yahoo Mail",
    "thunderbird": "Thunderbird",
    "other": "Other / web browser",
    "unknown": "Unknown",
}
EVENT_LABELS = {
    "sent": "Sent",
    "delivered": "Delivered",
    "opened": "Opened",
    "clicked": "Clicked",
    "bounced": "Bounced",
    "unsubscribed": "Unsubscribed",
    "complained": "Marked as spam",
}
CHANNEL_LABELS = {"marketing": "Marketing", "transactional": "Transactional", "system": "System"}
SOURCE_LABELS = {"campaign": "Campaign", "automation": "Automation", "system": "System"}

# RFC 3463 enhanced status codes, the ones bounces actually carry, in words a manager understands.
BOUNCE_MEANINGS = {
    "5.1.1": "mailbox does not exist",
    "5.1.0": "the address is wrong",
    "5.1.2": "the email domain does not exist",
    "5.1.3": "the address is malformed",
    "5.1.6": "the mailbox has moved",
    "5.1.10": "the domain accepts no mail",
    "5.2.1": "the mailbox is disabled",
    "5.2.2": "the mailbox is full",
    "4.2.2": "the mailbox is full",
    "5.2.3": "the message is too large",
    "4.2.1": "the mailbox is temporarily unavailable",
    "4.4.1": "the recipient's server did not answer",
    "4.4.2": "the connection to the recipient's server broke",
    "4.4.7": "delivery kept failing until it expired",
    "5.4.4": "the recipient's server cannot be reached",
    "4.7.0": "temporarily refused (greylisting or rate limit)",
    "5.7.1": "refused by the recipient's server (policy or spam filter)",
    "5.7.26": "refused: the sender's authentication (SPF/DKIM/DMARC) failed",
}
_CLASS_MEANINGS = {
    "1": "the address is not valid",
    "2": "a problem with the mailbox",
    "3": "a problem with the recipient's mail system",
    "4": "a network or routing problem",
    "5": "a mail protocol problem",
    "6": "a problem with the message content",
    "7": "refused by policy or a spam filter",
}


@lru_cache(maxsize=64)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The timezone object for an IANA name."""
    return zoneinfo.ZoneInfo(name)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction 0–1 as a percentage: 0.2345 → "23.5%"."""
    if value is None:
        return "–"
    return f"{value * 100:.{digits}f}%"


def number(value: float | None) -> str:
    """A count with thousands separators: 28946 → "28,946"."""
    return "–" if value is None else f"{round(value):,}"


def change_text(key: str, delta: float) -> str:
    """A card's change: percentage points for rates ("+2.1 pts"), a signed count otherwise."""
    if key in ("sent", "delivered"):
        return f"{round(delta):+,}"
    return f"{delta * 100:+.1f} pts"


def change_tone(key: str, delta: float) -> str:
    """good, bad or flat: the colour of a change, knowing which way is better for that card."""
    direction = CARD_DIRECTION.get(key)
    threshold = 0.5 if key in ("sent", "delivered") else 0.0005
    if direction is None or abs(delta) < threshold:
        return "flat"
    return "good" if (delta > 0) == direction else "bad"


def local(moment: dt.datetime | None, timezone: str, fmt: str = "%a %-d %b %Y, %H:%M") -> str:
    """A UTC instant in the salon's time."""
    if moment is None:
        return "–"
    return moment.astimezone(zone(timezone)).strftime(fmt)


def short_day(moment: dt.datetime, timezone: str, now: dt.datetime) -> str:
    """ "3 Aug" (with the year when it is not this year) in the salon's time."""
    here = moment.astimezone(zone(timezone))
    return here.strftime("%-d %b" if here.year == now.astimezone(zone(timezone)).year else "%-d %b %Y")


def bounce_meaning(status: str | None, kind: str | None) -> str:
    """What a bounce status says, in words ("mailbox does not exist" for 5.1.1)."""
    if status in BOUNCE_MEANINGS:
        return BOUNCE_MEANINGS[status]
    parts = (status or "").split(".")
    if len(parts) == 3 and parts[0] in ("4", "5") and parts[1] in _CLASS_MEANINGS:
        return _CLASS_MEANINGS[parts[1]]
    if kind == "soft" or (status or "").startswith("4"):
        return "a temporary failure; the server may accept a later try"
    return "a permanent failure"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A message's fate in one sentence, and a tone for its colour (good, bad, warn, muted)."""

    text: str
    tone: str


def message_verdict(
    message: MessageState, history: Sequence[HistoryEvent], *, timezone: str, now: dt.datetime
) -> Verdict:
    """What happened to a message, in plain words, from its state (and its events when still kept)."""

    def day(moment: dt.datetime) -> str:
        return short_day(moment, timezone, now)

    def at(moment: dt.datetime) -> str:
        return f"{day(moment)} at {local(moment, timezone, '%H:%M')}"

    if message.complained_at is not None:
        return Verdict(f"marked as spam on {day(message.complained_at)}: no more marketing mail", "bad")
    if message.bounced_at is not None:
        bounce = next((e for e in reversed(history) if e.type == "bounced"), None)
        status = bounce.status if bounce else None
        meaning = bounce_meaning(status, message.bounce_kind)
        code = f" ({status})" if status else ""
        if message.bounce_kind == "soft":
            return Verdict(f"temporarily refused on {day(message.bounced_at)}: {meaning}{code}", "warn")
        return Verdict(f"bounced on {day(message.bounced_at)}: {meaning}{code}", "bad")
    if message.unsubscribed_at is not None:
        return Verdict(f"unsubscribed on {day(message.unsubscribed_at)}", "warn")
    arrived = message.delivered_at or message.sent_at
    if arrived is None:
        return Verdict(f"registered on {day(message.cohort_at)}, not sent yet (no relay report)", "muted")
    reached = f"delivered on {day(arrived)}" if message.delivered_at else f"sent on {day(arrived)}"
    if not message.tracked:
        why = (
            "system mail is never tracked" if message.channel == "system" else "this message was not tracked"
        )
        return Verdict(f"{reached}; {why}, so opens cannot be seen", "muted")
    if message.clicked_at is not None:
        opened = message.opened_at or message.clicked_at
        return Verdict(f"opened on {at(opened)} and clicked on {at(message.clicked_at)}", "good")
    if message.opened_at is not None:
        first = next((e for e in history if e.type == "opened" and not e.machine), None)
        how = ""
        if first is not None and first.device and first.client:
            device = DEVICE_LABELS.get(first.device, first.device)
            how = f" ({device}, {CLIENT_LABELS.get(first.client, first.client)})"
        return Verdict(f"opened on {at(message.opened_at)}{how}", "good")
    if message.machine_opened_at is not None:
        return Verdict(
            f"{reached}; only a privacy proxy or scanner fetched it, so whether it was read is unknown",
            "muted",
        )
    if now - arrived < NOT_OPENED_VERDICT_AFTER:
        return Verdict(f"{reached}, not opened yet", "muted")
    return Verdict(f"{reached}, never opened: likely in the spam folder or unread", "warn")


# --- charts -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slice:
    """A donut segment: its label, fraction, colour and SVG dash geometry (circumference 100)."""

    label: str
    fraction: float
    color: str
    dash: str
    offset: str


def donut(
    fractions: Mapping[str, float], labels: Mapping[str, str], colors: Mapping[str, str] | None = None
) -> list[Slice]:
    """Segments of a donut chart drawn with one circle per slice (stroke-dasharray on r = 100 / 2π)."""
    slices, start = [], 0.0
    for index, (key, fraction) in enumerate(fractions.items()):
        length = fraction * 100
        slices.append(
            Slice(
                labels.get(key, key),
                fraction,
                (colors or {}).get(key, PALETTE[index % len(PALETTE)]),
                f"{length:.3f} {100 - length:.3f}",
                f"{25 - start:.3f}",  # 25: start at twelve o'clock
            )
        )
        start += length
    return slices


@dataclass(frozen=True, slots=True)
class Cell:
    """One heatmap cell: weekday, hour, value (None: no estimate), opacity level and tooltip."""

    weekday: int
    hour: int
    value: float | None
    opacity: str
    title: str
    best: bool


def _grid_from(best: Mapping[str, Any]) -> list[list[float | None]] | None:
    # The send-time model's grid: 7 × 24 numbers, or a list of {weekday, hour, expected_open_rate}.
    raw = best.get("grid") or best.get("heatmap")
    if isinstance(raw, list) and len(raw) == 7 and all(isinstance(r, list) and len(r) == 24 for r in raw):
        return [[None if v is None else float(v) for v in row] for row in raw]
    if isinstance(raw, list) and raw and all(isinstance(item, Mapping) for item in raw):
        grid: list[list[float | None]] = [[None] * 24 for _ in range(7)]
        for item in raw:
            weekday = item.get("weekday")
            day = WEEKDAYS.index(weekday) if isinstance(weekday, str) and weekday in WEEKDAYS else weekday
            rate = item.get("expected_open_rate", item.get("rate"))
            if (
                isinstance(day, int)
                and 0 <= day < 7
                and isinstance(item.get("hour"), int)
                and rate is not None
            ):
                grid[day][int(item["hour"])] = float(rate)
        return grid
    return None


def heatmap(
    grid: Sequence[Sequence[float | None]], *, best: tuple[int, int] | None, describe: str
) -> list[Cell]:
    """Cells of a 7 × 24 heatmap, shaded relative to the grid's own range."""
    values = [v for row in grid for v in row if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 0.0)
    cells = []
    for day, row in enumerate(grid):
        for hour, value in enumerate(row):
            share = 0.0 if value is None or high <= low else (value - low) / (high - low)
            shown = "no estimate" if value is None else describe.format(value=value)
            cells.append(
                Cell(
                    day,
                    hour,
                    value,
                    f"{0.06 + 0.94 * share:.2f}" if value is not None else "0.03",
                    f"{WEEKDAYS[day]} {hour:02d}:00 – {shown}",
                    best == (day, hour),
                )
            )
    return cells


def model_heatmap(best: Mapping[str, Any]) -> list[Cell] | None:
    """The send-time model's expected open rate per slot, or None when it gave no grid."""
    grid = _grid_from(best)
    if grid is None:
        return None
    weekday = best.get("weekday")
    slot = (WEEKDAYS.index(weekday), int(best["hour"])) if weekday in WEEKDAYS and "hour" in best else None
    return heatmap(grid, best=slot, describe="expected {value:.0%} opened")


def observed_heatmap(opens: Mapping[int, int]) -> list[Cell] | None:
    """When customers opened mail (first human opens per hour of the week), or None when none yet."""
    if not opens:
        return None
    grid: list[list[float | None]] = [[float(opens.get(d * 24 + h, 0)) for h in range(24)] for d in range(7)]
    return heatmap(grid, best=None, describe="{value:,.0f} first opens")


def send_time_slot(best: Mapping[str, Any]) -> str:
    """ "Thursday 10:00" from the model's answer."""
    return f"{best.get('weekday', '?')} {int(best.get('hour', 0)):02d}:00"
