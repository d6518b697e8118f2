"""The tracking protocol over raw sockets: what HTTP clients may do that httpx never does.

`tracking/protocol.py` answers `/o` and `/c` inside Uvicorn's protocol, so connection handling is ours
for those requests: keep-alive, pipelining, HTTP/1.0, `Connection: close`, HEAD, clients that leave.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from mailtrack.app import MailtrackApp, create_app
from mailtrack.maintenance.metrics import HITS
from mailtrack.tracking.hits import PIXEL_GIF
from mailtrack.tracking.protocol import find_fast_path
from mailtrack.tracking.tables import events
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer
from tests.functional.test_tracking import paths, register
from tests.live import serving

Response = tuple[int, dict[str, str], bytes]


@contextmanager
def connection(server: LiveServer) -> Iterator[socket.socket]:
    """A plain TCP connection to the server."""
    address = urlsplit(server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def read_response(reader: IO[bytes], *, head: bool = False) -> Response:
    """One HTTP/1.1 response from a buffered socket reader: status, lower-case headers, body."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        assert name.lower() not in headers, f"repeated header {name}"
        headers[name.lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    return int(status_line.split()[1]), headers, reader.read(length)


def request(method: str, path: str, *extra: str, version: str = "1.1") -> bytes:
    """A request as a client writes it."""
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *extra, "", ""]).encode()


def stored(server: LiveServer) -> list[str]:
    """The types of the stored events, oldest first, once the journal is applied."""
    server.settle()
    with server.engine.connect() as conn:
        return list(conn.execute(select(events.c.type).order_by(events.c.id)).scalars())


@pytest.fixture
def tokens(live_server: LiveServer) -> tuple[str, str]:
    """The pixel and click paths of one registered marketing message."""
    tenant = make_tenant(live_server.engine)
    message = register(live_server, make_api_key(live_server.engine, tenant.id))
    return paths(message["html"], "o")[0], paths(message["html"], "c")[0]


def test_hits_on_one_kept_alive_connection_are_answered_in_full(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, click = tokens
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(request("GET", pixel, "User-Agent: Thunderbird/128.0"))
            status, headers, body = read_response(reader)
            assert (status, body) == (200, PIXEL_GIF)
            assert headers["content-type"] == "image/gif"
            assert "no-store" in headers["cache-control"]
            assert headers["x-content-type-options"] == "nosniff"
            assert "default-src" in headers["content-security-policy"]
            assert "date" in headers, "an origin server with a clock sends Date"
            assert "connection" not in headers
        sock.sendall(request("GET", click))
        status, headers, body = read_response(reader)
        assert (status, headers["location"], body) == (302, "https://salon.example/book?utm=nl", b"")
        assert headers["referrer-policy"] == "origin"
    assert stored(live_server) == ["opened"] * 3 + ["clicked"]


def test_pipelined_requests_are_answered_in_order(live_server: LiveServer, tokens: tuple[str, str]) -> None:
    pixel, click = tokens
    with live_server.client() as client:  # the link is cached from here on, so the click is the protocol's
        assert client.get(click).status_code == 302
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(
            request("GET", pixel)
            + request("GET", "/healthz")
            + request("GET", click)
            + request("GET", "/o/broken")
            + request("GET", "/healthz")
        )
        answers = [read_response(reader) for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 302, 200, 200]
    assert answers[0][2] == answers[3][2] == PIXEL_GIF
    assert answers[1][1]["content-type"] == answers[4][1]["content-type"] == "application/json"
    assert answers[2][1]["location"] == "https://salon.example/book?utm=nl"
    assert stored(live_server) == ["clicked", "opened", "clicked"]


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.0", ()), ("1.0", ("Connection: keep-alive",)), ("1.1", ("Connection: close",))],
    ids=["http-1.0", "http-1.0-asking-keep-alive", "connection-close"],  # Uvicorn keeps no 1.0 alive
)
def test_a_connection_not_kept_alive_is_closed_after_the_answer(
    live_server: LiveServer, tokens: tuple[str, str], version: str, extra: tuple[str, ...]
) -> None:
    pixel, _ = tokens
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", pixel, *extra, version=version))
        status, headers, body = read_response(reader)
        assert (status, body, headers["connection"]) == (200, PIXEL_GIF, "close")
        assert reader.read() == b"", "the server closes the connection"
    assert stored(live_server) == ["opened"]


def test_head_gets_the_headers_only_and_the_connection_stays_usable(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, click = tokens
    agent = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("HEAD", pixel, agent))
        status, headers, _ = read_response(reader, head=True)
        assert (status, headers["content-length"]) == (200, str(len(PIXEL_GIF)))
        sock.sendall(request("HEAD", click, agent))
        status, headers, _ = read_response(reader, head=True)
        assert (status, headers["location"]) == (302, "https://salon.example/book?utm=nl")
        sock.sendall(request("GET", pixel, agent))
        assert read_response(reader)[2] == PIXEL_GIF, "no body bytes were left over from HEAD"
    assert stored(live_server) == ["opened", "clicked", "opened"]
    with live_server.engine.connect() as conn:
        reasons = conn.execute(select(events.c.machine_reason).order_by(events.c.id)).scalars().all()
    assert reasons == ["head_request", "head_request", None]


def test_query_strings_and_encoded_paths_are_answered_alike(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, _ = tokens
    encoded = "/o/%" + format(ord(pixel[3]), "02X") + pixel[4:]  # the token's first character, escaped
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        for path in (pixel + "?utm_source=x", encoded, pixel):
            sock.sendall(request("GET", path))
            assert read_response(reader)[:3:2] == (200, PIXEL_GIF), path
    assert stored(live_server) == ["opened"] * 3


def test_a_hit_the_journal_refuses_still_gets_its_answer(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, click = tokens
    journal = live_server.app.state.tracking.journal
    with live_server.client() as client:
        assert client.get(click).status_code == 302  # caches the link
        live_server.settle()
        journal.stopping = True  # what the journal says while shutting down: JournalStoppedError
        try:
            assert client.get(pixel).content == PIXEL_GIF
            assert client.get(click).status_code == 302
        finally:
            journal.stopping = False
    assert stored(live_server) == ["clicked"]


def test_clients_that_leave_before_the_answer_leave_the_server_healthy(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, _ = tokens
    for _ in range(50):
        with connection(live_server) as sock:
            sock.sendall(request("GET", pixel))
            sock.shutdown(socket.SHUT_RDWR)
    with live_server.client() as client:
        assert client.get(pixel).content == PIXEL_GIF
        assert client.get("/healthz").status_code == 200
    # A hit is recorded once it reached the server, whether or not its client waited for the answer.
    assert stored(live_server) == ["opened"] * 51


def test_only_a_mailtrack_app_gets_the_protocol_s_fast_path(live_server: LiveServer) -> None:
    app = live_server.app
    assert isinstance(app, MailtrackApp)

    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.app = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            raise NotImplementedError

    assert find_fast_path(Wrapper(Wrapper(app))) is app.tracking_fast_path
    assert find_fast_path(Wrapper(object())) is None


def test_a_click_on_a_link_not_cached_yet_is_counted_once_and_recorded(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    _, click = tokens
    clicks = HITS.value("click")
    with connection(live_server) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):  # the first reads the link from the database (Uvicorn's path), then cached
            sock.sendall(request("GET", click))
            assert read_response(reader)[0] == 302
    assert HITS.value("click") - clicks == 2
    assert stored(live_server) == ["clicked", "clicked"]


def test_the_protocol_answers_and_records_exactly_as_the_asgi_path(
    live_server: LiveServer, tokens: tuple[str, str]
) -> None:
    pixel, click = tokens
    agent = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    hits = [("GET", pixel), ("HEAD", pixel), ("GET", click), ("GET", click), ("GET", "/c/x"), ("GET", "/o/x")]

    def answers(base_url: str) -> list[tuple[int, dict[str, str], bytes]]:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            responses = [client.request(method, path, headers={"User-Agent": agent}) for method, path in hits]
        return [
            (answer.status_code, {k: v for k, v in answer.headers.items() if k != "date"}, answer.content)
            for answer in responses
        ]

    by_protocol = answers(live_server.url)
    live_server.settle()  # its events first, then the other server's
    asgi_app = create_app(live_server.settings, engine=live_server.engine)
    with serving(asgi_app, http="httptools") as asgi_url:  # Uvicorn's own protocol: every hit through ASGI
        by_asgi = answers(asgi_url)
        asgi_app.state.tracking.journal.wait_until_applied()
    assert by_protocol == by_asgi
    assert [status for status, _, _ in by_protocol] == [200, 200, 302, 302, 404, 200]
    recorded = ["opened", "opened", "clicked", "clicked"]
    assert sorted(stored(live_server)) == sorted(recorded * 2)
    with live_server.engine.connect() as conn:
        what = (events.c.type, events.c.device, events.c.client, events.c.machine_reason)
        rows = conn.execute(select(*what).order_by(events.c.id)).all()
    assert rows[:4] == rows[4:], "the same requests record the same events on both paths"
