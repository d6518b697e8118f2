"""The tracking protocol at the edges of HTTP/1.1, with Uvicorn's own httptools protocol as the reference.

Every test runs against both protocols (`mailtrack` is `tracking/protocol.py`, `uvicorn` is
`http="httptools"`, where every hit goes through ASGI): what a client sees and what is recorded must not
depend on which of them answered.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from sqlalchemy import Engine, select
from starlette.types import ASGIApp, Receive, Scope, Send

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.tracking.hits import MAX_AGENT_CHARS, PIXEL_GIF
from mailtrack.tracking.journal import HitJournal
from mailtrack.tracking.protocol import HTTP_PROTOCOL
from mailtrack.tracking.tables import events
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer
from tests.functional.test_tracking import paths, register
from tests.functional.test_tracking_protocol import connection, read_response, request, stored
from tests.live import free_port, uvicorn_thread

KEEP_ALIVE_SECONDS = 1  # Uvicorn's keep-alive timeout in these servers (its default is 5)
SLOW_SECONDS = 3 * KEEP_ALIVE_SECONDS  # what `GET /slow` takes: longer than the keep-alive timeout
PROTOCOLS = {"mailtrack": HTTP_PROTOCOL, "uvicorn": "httptools"}


class SlowRoute:
    """The app, plus `GET /slow`: an API request that takes longer than the keep-alive timeout."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app  # `find_fast_path` looks through `.app`

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/slow":
            await self.app(scope, receive, send)
            return
        await asyncio.sleep(SLOW_SECONDS)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})


@dataclass(frozen=True)
class Served(LiveServer):
    """A running Mailtrack server, with the Uvicorn server and thread that run it."""

    uvicorn: uvicorn.Server
    thread: threading.Thread


@pytest.fixture(params=list(PROTOCOLS))
def server(request: pytest.FixtureRequest, settings: Settings, engine: Engine) -> Iterator[Served]:
    """The app served by Mailtrack's protocol, or by Uvicorn's own as the reference."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"base_url": url})
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(
        SlowRoute(app),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=PROTOCOLS[request.param],
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    with uvicorn_thread(config) as (uvicorn_server, thread):
        yield Served(url, engine, settings, app, uvicorn_server, thread)


@pytest.fixture
def tokens(server: Served) -> tuple[str, str]:
    """The pixel and click paths of one registered marketing message."""
    tenant = make_tenant(server.engine)
    message = register(server, make_api_key(server.engine, tenant.id))
    return paths(message["html"], "o")[0], paths(message["html"], "c")[0]


class HeldJournal:
    """Stands in for `HitJournal.append_line`, holding every hit until `release`: a slow journal write."""

    def __init__(self, journal: HitJournal) -> None:
        self._append = journal.append_line
        self._held: list[tuple[bytes, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.appended = threading.Event()

    def append_line(self, line: bytes) -> asyncio.Future[None]:
        """Called on the server's loop: a future resolved only once released and really journaled."""
        self._loop = asyncio.get_running_loop()
        held: asyncio.Future[None] = self._loop.create_future()
        self._held.append((line, held))
        self.appended.set()
        return held

    def release(self) -> None:
        """Journal the held hits for real (from the test's thread); each is answered once durable."""

        def answer(held: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
            return lambda _: held.set_result(None)

        def journal() -> None:
            for line, held in self._held:
                self._append(line).add_done_callback(answer(held))

        assert self._loop is not None
        self._loop.call_soon_threadsafe(journal)


@pytest.fixture
def held(server: Served, monkeypatch: pytest.MonkeyPatch) -> HeldJournal:
    """The server's journal, holding every hit until the test releases them."""
    journal = server.app.state.tracking.journal
    holder = HeldJournal(journal)
    monkeypatch.setattr(journal, "append_line", holder.append_line)
    return holder


def refused(server: LiveServer) -> bool:
    """True once the server no longer accepts connections."""
    try:
        with connection(server):
            return False
    except ConnectionRefusedError:
        return True


# --- found answering differently from Uvicorn (fixed) ------------------------------------------------


def test_a_request_pipelined_behind_an_answered_hit_is_not_cut_off_by_the_keep_alive_timeout(
    server: Served,
) -> None:
    """The keep-alive timer runs on an idle connection only, not while a pipelined request is served."""
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", "/o/not-a-token") + request("GET", "/slow"))
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
        status_line = reader.readline()
        assert status_line.startswith(b"HTTP/1.1 200"), "the connection was closed before the answer"


def test_a_hit_pipelined_behind_an_answered_hit_is_answered_however_long_its_journal_write(
    server: Served, tokens: tuple[str, str], held: HeldJournal
) -> None:
    """A hit recorded is a hit answered: the keep-alive timer must not close the connection under it."""
    pixel, _ = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", "/o/not-a-token") + request("GET", pixel))
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
        assert held.appended.wait(10)
        time.sleep(SLOW_SECONDS)  # a journal write slower than the keep-alive timeout (a slow fdatasync)
        held.release()
        status_line = reader.readline()
        assert status_line.startswith(b"HTTP/1.1 200"), "the connection was closed before the answer"
    assert stored(server) == ["opened"]


def test_a_fragment_in_the_request_target_is_ignored_as_uvicorn_does(
    server: Served, tokens: tuple[str, str]
) -> None:
    """Some clients send `#…` on the wire; Uvicorn drops it from the path, the protocol must too."""
    pixel, click = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        for path in (pixel + "#top", click + "#top"):
            sock.sendall(request("GET", path))
            status, headers, _ = read_response(reader)
            assert status == (302 if path.startswith("/c/") else 200), path
        assert headers["location"] == "https://salon.example/book?utm=nl"
    assert stored(server) == ["opened", "clicked"]


# --- the rest of HTTP/1.1's edges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.0", ()), ("1.1", ("Connection: close",))],
    ids=["http-1.0", "connection-close"],
)
def test_a_hit_pipelined_behind_an_answer_that_closes_the_connection_is_not_served(
    server: Served, tokens: tuple[str, str], version: str, extra: tuple[str, ...]
) -> None:
    """Nothing after a request the server answers with `connection: close` is served, nor recorded."""
    pixel, _ = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", "/o/not-a-token", *extra, version=version) + request("GET", pixel))
        status, headers, body = read_response(reader)
        assert (status, body, headers["connection"]) == (200, PIXEL_GIF, "close")
        assert reader.read() == b"", "the server closes the connection after the first answer"
    assert stored(server) == [], "the open was never answered: the client will send it again"


@pytest.mark.parametrize(
    "body",
    [
        ("Content-Length: 5",),
        ("Transfer-Encoding: chunked",),
        ("Content-Length: 200000",),  # past Uvicorn's high-water mark: reading pauses, then resumes
    ],
    ids=["content-length", "chunked", "large"],
)
def test_a_get_with_a_body_is_answered_and_its_body_not_taken_for_a_request(
    server: Served, tokens: tuple[str, str], body: tuple[str, ...]
) -> None:
    pixel, click = tokens
    size = body[0].partition(": ")[2]
    payload = b"5\r\nhello\r\n0\r\n\r\n" if size == "chunked" else b"G" * int(size)
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", pixel, *body) + payload + request("GET", click))
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
        status, headers, _ = read_response(reader)
        assert (status, headers["location"]) == (302, "https://salon.example/book?utm=nl")
    assert stored(server) == ["opened", "clicked"]


def test_expect_100_continue_gets_the_final_answer_and_the_connection_stays_usable(
    server: Served, tokens: tuple[str, str]
) -> None:
    """The hit reads no body, so no `100 Continue`: the final answer comes at once, as from Uvicorn."""
    pixel, _ = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", pixel, "Expect: 100-continue", "Content-Length: 5"))
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
        sock.sendall(b"hello" + request("GET", pixel))  # the body after all, then the next request
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
    assert stored(server) == ["opened", "opened"]


def test_a_request_arriving_byte_by_byte_is_answered_once(server: Served, tokens: tuple[str, str]) -> None:
    pixel, click = tokens
    with connection(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for path in (pixel + "?utm_source=x", click):
            for byte in request("GET", path, "User-Agent: Thunderbird/128.0"):
                sock.sendall(bytes([byte]))
                time.sleep(0.001)  # separate segments, so separate reads on the server
            assert read_response(reader)[0] == (302 if path == click else 200)
    assert stored(server) == ["opened", "clicked"]


def test_two_hundred_pipelined_requests_are_answered_in_order(
    server: Served, tokens: tuple[str, str]
) -> None:
    pixel, click = tokens
    mix = [(pixel, 200), ("/healthz", 200), (click, 302), ("/o/not-a-token", 200), ("/c/x", 404)]
    sent = [mix[i % len(mix)] for i in range(200)]
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"".join(request("GET", path) for path, _ in sent))
        answers = [read_response(reader) for _ in sent]
    assert [status for status, _, _ in answers] == [status for _, status in sent]
    for (path, _), (_, headers, body) in zip(sent, answers, strict=True):
        if path == "/healthz":
            assert headers["content-type"] == "application/json"
        elif path.startswith("/o/"):
            assert (headers["content-type"], body) == ("image/gif", PIXEL_GIF)
    assert stored(server) == ["opened", "clicked"] * 40


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: Served, tokens: tuple[str, str]
) -> None:
    pixel, _ = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", pixel))
        status, headers, _ = read_response(reader)
        assert (status, "connection" in headers) == (200, False)
        assert reader.read() == b"", "the server closes the idle connection (before the socket's timeout)"


def test_very_long_urls_and_headers_are_answered_and_recorded(
    server: Served, tokens: tuple[str, str]
) -> None:
    pixel, _ = tokens
    agent = "Mozilla/5.0 " + "x" * 20_000
    with connection(server) as sock:
        reader = sock.makefile("rb")
        long_url = pixel + "?u=" + "q" * 60_000
        sock.sendall(request("GET", long_url, f"User-Agent: {agent}", "X-Pad: " + "p" * 60_000))
        assert read_response(reader)[::2] == (200, PIXEL_GIF)
    assert stored(server) == ["opened"]
    with server.engine.connect() as conn:
        assert conn.execute(select(events.c.user_agent)).scalar_one() == agent[:MAX_AGENT_CHARS]


def test_a_hit_waiting_for_its_journal_write_at_shutdown_is_answered_and_recorded(
    server: Served, tokens: tuple[str, str], held: HeldJournal
) -> None:
    """Uvicorn waits for the connection; the answer says `connection: close`, and the hit is kept."""
    pixel, _ = tokens
    with connection(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request("GET", pixel))
        assert held.appended.wait(10)
        server.uvicorn.should_exit = True
        deadline = time.monotonic() + 10
        while not refused(server):  # the listener closes in the same step that shuts connections down
            assert time.monotonic() < deadline, "the server did not start shutting down"
            time.sleep(0.01)
        held.release()
        status, headers, body = read_response(reader)
        assert (status, body, headers["connection"]) == (200, PIXEL_GIF, "close")
        assert reader.read() == b""
    server.thread.join(timeout=30)
    assert not server.thread.is_alive()
    with server.engine.connect() as conn:
        assert list(conn.execute(select(events.c.type)).scalars()) == ["opened"]


def test_a_client_leaving_while_its_pipelined_hits_wait_for_the_journal_leaves_the_server_healthy(
    server: Served, tokens: tuple[str, str], held: HeldJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixel, _ = tokens
    with connection(server) as sock:
        sock.sendall(request("GET", pixel) + request("GET", "/healthz") + request("GET", pixel))
        assert held.appended.wait(10)
    monkeypatch.undo()  # the fixture's hold: later hits are journaled at once
    held.release()
    with server.client() as client:
        assert client.get(pixel).content == PIXEL_GIF
        assert client.get("/healthz").status_code == 200
    assert stored(server) == ["opened", "opened"], "the first hit reached the server; the third never ran"
