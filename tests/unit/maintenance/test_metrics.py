"""/metrics: the registry renders valid Prometheus text, and the endpoint reads the running app."""

from __future__ import annotations

import datetime as dt
import re

import httpx
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.maintenance import metrics
from mailtrack.maintenance.metrics import CONTENT_TYPE, Registry, metrics_endpoint, observe_batch
from mailtrack.tracking.ingest import EventIn
from tests.live import serving

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


def assert_valid_exposition(text: str) -> None:
    """Every line is a HELP, a TYPE or a sample, and every sample's family was declared first."""
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "histogram"), line
            declared.add(name)
            continue
        assert SAMPLE.match(line), line
        family = re.sub(r"_(bucket|sum|count)$", "", line.split("{")[0].split()[0])
        assert family in declared or line.split("{")[0].split()[0] in declared, line
    assert text.endswith("\n")


def test_counters_gauges_and_histograms_render_in_text_format() -> None:
    registry = Registry()
    hits = registry.counter("t_hits_total", "Hits.\nSecond line", ("type",))
    gauge = registry.gauge("t_depth", "Depth.")
    latency = registry.histogram("t_seconds", "Latency.", (0.1, 1.0))
    hits.inc("opened")
    hits.inc("opened", amount=2)
    hits.inc('we"ird\\')
    gauge.set(7.5)
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    text = "\n".join(registry.render()) + "\n"
    assert_valid_exposition(text)
    assert "# HELP t_hits_total Hits.\\nSecond line" in text
    assert 't_hits_total{type="opened"} 3' in text
    assert 't_hits_total{type="we\\"ird\\\\"} 1' in text
    assert "# TYPE t_depth gauge\nt_depth 7.5" in text
    assert 't_seconds_bucket{le="0.1"} 2\nt_seconds_bucket{le="1"} 3\nt_seconds_bucket{le="+Inf"} 4' in text
    assert "t_seconds_sum 3.65\nt_seconds_count 4" in text


def test_a_batch_counts_its_size_latency_and_event_types() -> None:
    before = metrics.INGESTED.value("opened"), metrics.BATCH_SIZE.count
    now = dt.datetime.now(dt.UTC)
    observe_batch(
        [EventIn(1, 1, "opened", now), EventIn(1, 1, "opened", now), EventIn(1, 1, "clicked", now)], 0.004
    )
    assert metrics.INGESTED.value("opened") == before[0] + 2
    assert metrics.BATCH_SIZE.count == before[1] + 1


def test_the_endpoint_reports_pending_journal_rejected_tokens_and_jobs(
    settings: Settings, engine: Engine
) -> None:
    app = create_app(settings, engine=engine)
    if not any(getattr(route, "path", "") == "/metrics" for route in app.routes):
        app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])  # until app.py mounts it
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        client.get("/o/forged-token.gif")
        answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == CONTENT_TYPE
    assert_valid_exposition(answer.text)
    for line in (
        "mailtrack_rejected_tokens_total 1",
        "mailtrack_journal_pending_bytes 0",
        "mailtrack_ingest_failed_events_total 0",
        "# TYPE mailtrack_ingest_batch_seconds histogram",
        "# TYPE mailtrack_maintenance_runs_total counter",
        "# TYPE mailtrack_hits_total counter",
    ):
        assert line in answer.text.splitlines(), line
    assert "process_resident_memory_bytes " in answer.text
