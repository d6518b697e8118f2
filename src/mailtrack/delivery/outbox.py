"""The outbox worker: claim due messages, hand them to the relay, record what the relay said.

Several app nodes may run a worker each. A worker claims a batch of due rows by setting a lease
(`claimed_until`, `claim_token`; `FOR UPDATE SKIP LOCKED` on PostgreSQL, SQLite's single writer
elsewhere), so two nodes never send the same row while its lease runs. Every outcome is recorded as
soon as the relay answers, in one transaction that also deletes (or reschedules) the row:

* 250 → `sent`, with the relay's reply and queue id in the event's diagnostic;
* 5xx at RCPT or DATA → `bounced`, hard (soft for a full mailbox), with the reply's status;
* 4xx, no answer, or a refusal before RCPT (TLS, AUTH, MAIL FROM: our side) → retried with
  exponential backoff; after `smtp_max_attempts` tries → a soft bounce, and the row is dropped.

Events go through `ingest_batch` with external ids `smtp:…:<message>`, so recording twice is harmless.
Delivery is at-least-once: if a node dies between the relay's 250 and the commit, the lease runs
out and another try sends the message again (one `sent` event all the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, or_, select, update

from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery.outbox_tables import outbox
from mailtrack.delivery.smtp_relay import RelayReply, RelaySession, SmtpRelay, bounce_kind
from mailtrack.delivery.suppression import RELAY_FAILURE_PREFIX, suppress_repeated_soft_bounces
from mailtrack.messages.tables import customers, messages
from mailtrack.tracking.ingest import EventIn, ingest_batch

log = logging.getLogger(__name__)
_RECORD_TRIES = 3


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before try n+1: base × factor^(n−1), capped, ±jitter so retries of a burst spread out."""

    base_seconds: float = 60.0
    factor: float = 2.0
    cap_seconds: float = 6 * 3600.0
    jitter: float = 0.1

    def delay(self, attempts: int) -> dt.timedelta:
        """How long to wait after the `attempts`-th failed try."""
        seconds = min(self.cap_seconds, self.base_seconds * self.factor ** max(attempts - 1, 0))
        seconds *= 1 + random.uniform(-self.jitter, self.jitter)
        return dt.timedelta(seconds=max(seconds, 1.0))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased outbox row, with what deciding to send it needs."""

    id: int
    tenant_id: int
    message_id: int
    envelope_from: str
    recipient: str
    mime: bytes
    attempts: int
    claim_token: str
    marketing: bool
    suppressed: bool

    @property
    def envid(self) -> str:
        """The DSN ENVID: the VERP token of the envelope sender."""
        return self.envelope_from.partition("+")[2].partition("@")[0]


def claim_due(conn: Connection, *, now: dt.datetime, limit: int, lease: dt.timedelta) -> list[Claimed]:
    """Lease up to `limit` rows that are due and not leased by a live worker."""
    due = (
        select(outbox.c.id)
        .where(
            outbox.c.next_attempt_at <= now,
            or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
        )
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.execute(due).scalars())
    if not ids:
        return []
    token = secrets.token_hex(16)
    conn.execute(
        update(outbox).where(outbox.c.id.in_(ids)).values(claimed_until=now + lease, claim_token=token)
    )
    rows = conn.execute(
        select(
            outbox.c.id,
            outbox.c.tenant_id,
            outbox.c.message_id,
            outbox.c.envelope_from,
            outbox.c.recipient,
            outbox.c.mime,
            outbox.c.attempts,
            messages.c.channel,
            customers.c.suppressed_at,
        )
        .join(messages, messages.c.id == outbox.c.message_id)
        .join(customers, customers.c.id == messages.c.customer_id)
        .where(outbox.c.id.in_(ids))
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
    )
    return [
        Claimed(
            row.id,
            row.tenant_id,
            row.message_id,
            row.envelope_from,
            row.recipient,
            bytes(row.mime),
            row.attempts,
            token,
            row.channel == "marketing",
            row.suppressed_at is not None,
        )
        for row in rows
    ]


def record_outcome(
    conn: Connection,
    item: Claimed,
    reply: RelayReply,
    *,
    now: dt.datetime,
    max_attempts: int,
    backoff: Backoff,
) -> str:
    """Store what the relay said about `item`; returns sent, bounced, retry or gave_up."""
    if reply.accepted:
        queue_id = reply.queue_id
        diagnostic = (f"queue_id={queue_id}; " if queue_id else "") + reply.line()
        _store(conn, item, "sent", f"smtp:sent:{item.message_id}", now, diagnostic=diagnostic)
        _delete(conn, item)
        return "sent"
    if reply.permanent:
        status = reply.status
        _store(
            conn,
            item,
            "bounced",
            f"smtp:bounce:{item.message_id}",
            now,
            kind=bounce_kind(status),
            status=status,
            diagnostic=reply.line(),
        )
        _delete(conn, item)
        return "bounced"
    attempts = item.attempts + 1
    if attempts >= max_attempts:
        # Our relay never got through (connect, TLS, AUTH, MAIL FROM): a distinct id keeps these
        # out of the customer's soft-bounce tally (suppression.py).
        prefix = RELAY_FAILURE_PREFIX if reply.relay_failure else "smtp:gaveup:"
        diagnostic = f"gave up after {attempts} tries; last: " + (
            f"relay {reply.stage}: {reply.line()}" if reply.relay_failure else reply.line()
        )
        status = reply.status if reply.status[0] == "4" else "4.4.7"  # 4.4.7: delivery time expired
        _store(
            conn,
            item,
            "bounced",
            f"{prefix}{item.message_id}",
            now,
            kind="soft",
            status=status,
            diagnostic=diagnostic,
        )
        _delete(conn, item)
        return "gave_up"
    conn.execute(
        update(outbox)
        .where(outbox.c.id == item.id, outbox.c.claim_token == item.claim_token)
        .values(
            attempts=attempts,
            next_attempt_at=now + backoff.delay(attempts),
            claimed_until=None,
            claim_token=None,
            last_error=f"{reply.stage}: {reply.line()}"[:2000],
        )
    )
    return "retry"


def _store(
    conn: Connection,
    item: Claimed,
    event_type: str,
    external_id: str,
    now: dt.datetime,
    *,
    kind: str | None = None,
    status: str | None = None,
    diagnostic: str | None = None,
) -> None:
    event = EventIn(
        tenant_id=item.tenant_id,
        message_id=item.message_id,
        type=event_type,
        occurred_at=now,
        bounce_kind=kind,
        status=status[:16] if status else None,
        diagnostic=diagnostic[:1000] if diagnostic else None,
        external_event_id=external_id,
    )
    ingest_batch(conn, [event])
    if kind == "soft":
        customer_id = conn.execute(
            select(messages.c.customer_id).where(messages.c.id == item.message_id)
        ).scalar_one_or_none()
        if customer_id is not None:
            suppress_repeated_soft_bounces(conn, customer_ids=[customer_id], at=now)


def cancel_pending(conn: Connection, *, tenant_id: int, message_ids: Sequence[int]) -> int:
    """Drop the salon's unsent outbox rows for these messages (GDPR erasure); returns how many."""
    if not message_ids:
        return 0
    deleted = conn.execute(
        delete(outbox).where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(list(message_ids)))
    )
    return int(deleted.rowcount or 0)


def _delete(conn: Connection, item: Claimed) -> None:
    # By id, not claim token: whoever recorded the outcome first, the message is done.
    conn.execute(delete(outbox).where(outbox.c.id == item.id))


class OutboxWorker:
    """An asyncio task that sends due outbox rows through one relay session per batch."""

    def __init__(
        self,
        engine: Engine,
        relay: SmtpRelay,
        *,
        max_attempts: int = 8,
        batch_size: int = 20,
        lease: dt.timedelta = dt.timedelta(minutes=10),
        poll_seconds: float = 15.0,
        backoff: Backoff | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """Send through `relay`; `lease` must outlast a batch (about batch_size × smtp timeout)."""
        self.engine = engine
        self.relay = relay
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the worker task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish the message being sent (up to `timeout`), then stop."""
        self._stopping = True
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                # The SMTP thread cannot be interrupted; its row's lease expires and another try follows.
                self._task.cancel()
            self._task = None

    def wake(self) -> None:
        """Look for due rows now (a message was just queued); safe from any thread."""
        if self._wake is None or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run_once(self) -> int:
        """Claim one batch of due rows and send it; returns how many rows were claimed."""
        items = await asyncio.to_thread(self._claim)
        if items:
            await asyncio.to_thread(self._deliver, items)
        return len(items)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                claimed = await self.run_once()
            except Exception:  # the database is down or locked: keep the worker alive and try later
                log.exception("outbox: a batch failed; retrying later")
                claimed = 0
            if claimed >= self.batch_size or self._stopping:
                continue  # more may be due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()

    def _claim(self) -> list[Claimed]:
        with write_transaction(self.engine) as conn:
            return claim_due(conn, now=self.clock(), limit=self.batch_size, lease=self.lease)

    def _deliver(self, items: list[Claimed]) -> None:
        # Stop sending while the lease still has room for one more transaction: past it, another node
        # may claim these rows, and a row sent by both would reach the customer twice.
        deadline = time.monotonic() + self.lease.total_seconds() - 4 * self.relay.timeout
        relay_down: RelayReply | None = None
        with self.relay.session() as session:
            for item in items:
                if (self._stopping or time.monotonic() > deadline) and item is not items[0]:
                    self._release(item)  # not sent: free it for the next try at once
                    continue
                reply = self._deliver_one(session, item, relay_down)
                if reply is not None and reply.stage in ("connect", "tls", "auth"):
                    # The relay is unreachable or refuses us: the rest of the batch would fail the
                    # same way, each after its own timeout. Record that answer for them at once.
                    relay_down = reply

    def _deliver_one(
        self, session: RelaySession, item: Claimed, relay_down: RelayReply | None
    ) -> RelayReply | None:
        if item.marketing and item.suppressed:
            # Suppressed since it was queued (a complaint, a hard bounce): marketing mail stays home.
            with write_transaction(self.engine) as conn:
                _delete(conn, item)
            log.info("outbox: message %s not sent: customer suppressed for marketing", item.message_id)
            return None
        reply = relay_down or session.send(item.envelope_from, item.recipient, item.mime, envid=item.envid)
        for attempt in range(1, _RECORD_TRIES + 1):
            try:
                with write_transaction(self.engine) as conn:
                    outcome = record_outcome(
                        conn,
                        item,
                        reply,
                        now=self.clock(),
                        max_attempts=self.max_attempts,
                        backoff=self.backoff,
                    )
                break
            except Exception:  # the reply is known but not stored; the lease brings it back if we fail
                if attempt == _RECORD_TRIES:
                    log.exception("outbox: could not record the relay's answer for %s", item.message_id)
                    return reply
                time.sleep(0.2 * attempt)
        log.info(
            "outbox: message %s (salon %s) %s: %s %s",
            item.message_id,
            item.tenant_id,
            outcome,
            reply.stage,
            reply.line()[:200],
        )
        return reply

    def _release(self, item: Claimed) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == item.id, outbox.c.claim_token == item.claim_token)
                .values(claimed_until=None, claim_token=None)
            )
