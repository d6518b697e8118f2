"""Prometheus metrics: a tiny registry and the text exposition format (version 0.0.4), no dependency.

Counters and histograms live in one process-wide registry that the hot path increments (a dict update
under a lock: well under a microsecond). Values that already exist elsewhere (the writer's queue depth,
rejected tokens) are read when `/metrics` is scraped instead of being copied on every hit. With
`serve --workers N` each worker process has its own registry; run one worker per node (or per
container) and scrape every node.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections import Counter as _Tally
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from mailtrack.tracking.ingest import EventIn

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _header(name: str, help_text: str, kind: str) -> list[str]:
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {escaped}", f"# TYPE {name} {kind}"]


class Counter:
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add `amount` (default 1) to the series named by the label values."""
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        """The current value of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(label_values, 0.0)

    def render(self) -> list[str]:
        """The series in text format."""
        with self._lock:
            items = sorted(self._values.items())
        lines = _header(self.name, self.help, self.kind)
        lines += [f"{self.name}{_labels(self.labels, key)} {_number(value)}" for key, value in items]
        return lines


class Gauge(Counter):
    """A value that goes up and down; `set` replaces it."""

    kind = "gauge"

    def set(self, value: float, *label_values: str) -> None:
        """Set the series named by the label values."""
        with self._lock:
            self._values[label_values] = value


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one observation."""
        slot = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[slot] += 1
            self._sum += value

    @property
    def count(self) -> int:
        """How many observations so far."""
        with self._lock:
            return sum(self._counts)

    def render(self) -> list[str]:
        """The buckets, sum and count in text format."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines = _header(self.name, self.help, "histogram")
        running = 0
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            running += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        lines.append(f"{self.name}_sum {_number(total)}")
        lines.append(f"{self.name}_count {running}")
        return lines


class Registry:
    """Every metric of the process, rendered together."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Histogram] = []

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """Register a counter."""
        metric = Counter(name, help_text, labels)
        self._metrics.append(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        """Register a gauge."""
        metric = Gauge(name, help_text, labels)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> Histogram:
        """Register a histogram."""
        metric = Histogram(name, help_text, buckets)
        self._metrics.append(metric)
        return metric

    def render(self) -> list[str]:
        """Every registered metric in text format."""
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.render()
        return lines


REGISTRY = Registry()
HITS = REGISTRY.counter(
    "mailtrack_hits_total", "Tracking requests answered, by type (open, click).", ("type",)
)
INGESTED = REGISTRY.counter(
    "mailtrack_ingested_events_total", "Events applied from the hit journal, by event type.", ("type",)
)
BATCH_SIZE = REGISTRY.histogram(
    "mailtrack_ingest_batch_size",
    "Events per group commit.",
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
)
BATCH_SECONDS = REGISTRY.histogram(
    "mailtrack_ingest_batch_seconds",
    "Time to write one group commit.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MAINTENANCE_RUNS = REGISTRY.counter(
    "mailtrack_maintenance_runs_total", "Maintenance runs, by outcome (ok, failed).", ("outcome",)
)
MAINTENANCE_SALONS = REGISTRY.counter(
    "mailtrack_maintenance_salons_total",
    "Salons visited by maintenance, by outcome (done, skipped: leased elsewhere or done recently, failed).",
    ("outcome",),
)
MAINTENANCE_ROWS = REGISTRY.counter(
    "mailtrack_maintenance_rows_total",
    "Rows changed by maintenance, by action (events_deleted, ips_anonymized, rollup_rows_deleted).",
    ("action",),
)
MAINTENANCE_LAST_SUCCESS = REGISTRY.gauge(
    "mailtrack_maintenance_last_success_timestamp_seconds", "Unix time of the last run without failure."
)
RATE_LIMITED = REGISTRY.counter(
    "mailtrack_rate_limited_total", "Requests refused with 429, by scope (api, login).", ("scope",)
)
BODY_TOO_LARGE = REGISTRY.counter("mailtrack_body_too_large_total", "Requests refused with 413.")
GDPR_REQUESTS = REGISTRY.counter(
    "mailtrack_gdpr_requests_total", "Customer data requests served, by action (export, erase).", ("action",)
)


def observe_batch(events: Sequence[EventIn], seconds: float) -> None:
    """Count one applied batch of hits (called by the journal applier)."""
    BATCH_SIZE.observe(len(events))
    BATCH_SECONDS.observe(seconds)
    for kind, count in _Tally(event.type for event in events).items():
        INGESTED.inc(kind, amount=count)


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _scraped(name: str, kind: str, help_text: str, value: float | None) -> Iterable[str]:
    if value is None:
        return []
    return [*_header(name, help_text, kind), f"{name} {_number(value)}"]


def render_metrics(state: Any) -> str:
    """The whole exposition: the registry plus values read from the running app's state."""
    lines = REGISTRY.render()
    tracking = getattr(state, "tracking", None)
    journal = getattr(tracking, "journal", None)
    stats = getattr(journal, "stats", None)
    scraped: list[tuple[str, str, str, float | None]] = [
        ("mailtrack_rejected_tokens_total", "counter", "Tracking requests whose token did not verify.",
         getattr(tracking, "rejected_tokens", None)),
        ("mailtrack_journal_pending_bytes", "gauge",
         "Journal bytes (about 300 per hit) not yet applied to the database.",
         getattr(journal, "pending_bytes", None)),
        ("mailtrack_ingest_batches_total", "counter", "Journal batches applied.",
         getattr(stats, "batches", None)),
        ("mailtrack_ingest_failed_events_total", "counter",
         "Journaled hits the database refused (logged and skipped).", getattr(stats, "refused", None)),
        ("mailtrack_journal_dropped_total", "counter",
         "Hits answered but not recorded because the journal was full (database down too long).",
         getattr(stats, "dropped", None)),
        ("mailtrack_journal_adopted_total", "counter",
         "Hits applied from journals that crashed processes left behind.", getattr(stats, "adopted", None)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size.", _rss_bytes()),
        ("mailtrack_scrape_timestamp_seconds", "gauge", "Unix time of this scrape.", time.time()),
    ]  # fmt: skip
    for name, kind, help_text, value in scraped:
        lines += _scraped(name, kind, help_text, value)
    return "\n".join(lines) + "\n"


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(render_metrics(request.app.state), media_type=CONTENT_TYPE)
