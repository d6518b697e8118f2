"""Writes a salon's synthetic mail history through the same ingest code as real events.

Campaigns (a monthly newsletter at the salon's habitual slot, seasonal promotions), automations (welcome,
birthday offer, win-back after 60 days without an open), transactional mail (booking confirmations,
appointment reminders) and system mail (password resets, never tracked) go to population.py's customers.
Each message gets its delivery facts (sent, delivered, soft and hard bounces) and, when tracked, opens from
its customer's hazard process, Apple Mail Privacy Protection prefetches, scanner hits, clicks on its links,
unsubscribes and complaints. Messages are simulated one by one in time order and written in chunks of about
50,000 events, each in one transaction through `tracking.ingest.ingest_batch`. Same seed and `end`, same data.

Size: about 6.6 events per customer-month, so `months=6` with 25,000 customers gives ≈ 1 million
events (1,000 customers ≈ 40,000 events; 10,000 ≈ 400,000).
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import random
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Connection, Engine, func, or_, select, text

from mailtrack.db import bulk_insert_rows, refresh_statistics_as_tables_grow, utcnow, write_transaction
from mailtrack.demo.population import (
    APPLE_PROXY,
    KNOWN_AGENTS,
    SCANNER_CLICK,
    SCANNER_OPEN,
    Customer,
    SalonClock,
    build_population,
    fold_ascii,
    personal_mail,
    sample_first_open,
)
from mailtrack.messages.policy import tracking_allowed
from mailtrack.messages.queries import CustomerIn, ensure_campaign, upsert_customers
from mailtrack.messages.tables import customers as customers_table
from mailtrack.messages.tables import links as links_table
from mailtrack.messages.tables import messages as messages_table
from mailtrack.tenants.queries import get_settings, get_tenant
from mailtrack.tracking.ingest import EventIn, ingest_batch

_stamp = dt.datetime.fromtimestamp  # epoch seconds → an aware UTC datetime, with UTC

CHUNK_EVENTS = 50_000  # bigger chunks merge more customer and rollup updates; 20k cost 7% more CPU
EVENTS_PER_CUSTOMER_MONTH = 6.6  # measured; only feeds the progress estimate
HARD_BOUNCE_RATE = 0.006  # the address dies; like SES or SendGrid, the ESP then stops mailing it
SOFT_BOUNCE_RATE = 0.015
DELIVERY_REPORTED = 0.97  # the ESP misses a few delivery notifications
UNSUBSCRIBE_RATE = 0.002  # per marketing message
COMPLAINT_RATE = 0.0002
SENDS_PER_MINUTE = 600  # the ESP's throttle spreads a campaign over minutes
_UNSUBSCRIBE_BY_TIER = {"fan": 0.3, "regular": 0.7, "occasional": 1.3, "dormant": 1.6}
_DAY = 86_400
_MESSAGE_COLUMNS = ("id", "tenant_id", "external_id", "customer_id", "channel", "source", "campaign_id",
                    "smtp_message_id", "tracked", "created_at", "cohort_at")  # fmt: skip
_ARTICLES = ("ujevi-frizuratrendek", "teli-hajapolas", "tavaszi-szinek", "husveti-koromdiszites",
             "nyari-napvedelem", "strandfrizurak", "nyari-hajapolas", "iskolakezdes", "oszi-bor-felfrissites",
             "halloween-smink", "teli-kezapolas", "unnepi-frizurak")  # fmt: skip
_PROMOTIONS = (  # (month, day, campaign, landing page, interest)
    (1, 8, "New year, new look", "akciok/ujev", 0.9), (2, 6, "Valentine's Day offer", "akciok/valentin", 1.0),
    (4, 22, "Mother's Day gift cards", "ajandekkartya", 1.0), (6, 24, "Summer sale", "akciok/nyar", 0.9),
    (9, 2, "Back to school", "akciok/iskolakezdes", 0.8), (11, 24, "Black Friday", "akciok/blackfriday", 1.1),
    (12, 2, "Christmas gift cards", "ajandekkartya", 1.0))  # fmt: skip
_SLOTS = ((1, 10, 0.7), (3, 18, 0.2))  # the salon's habitual campaign slots: (weekday, hour, share)
_HARD = (("5.1.1", "550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table"),
         ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled."),
         ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
)  # fmt: skip
_SOFT = (("4.2.2", "452 4.2.2 The email account that you tried to reach is over quota."),
         ("4.7.1", "421 4.7.1 Try again later, closing connection (greylisted)."),
         ("4.4.7", "Delivery delayed: the message expired after 72 hours in the queue."))  # fmt: skip
Trigger = tuple[int, int, str, int]  # (moment, tie-breaker, kind, customer or -1 for a sweep)


@dataclass(frozen=True)
class SeedReport:
    """What `seed_history` wrote and how long it took."""

    customers: int
    messages: int
    events: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of mail: its campaign, channel, how much it attracts opens and clicks, and its links."""

    campaign: str
    channel: str
    source: str
    interest: float
    click_interest: float
    links: tuple[tuple[str, float], ...]  # (url, click weight); transactional mail gets its own per booking


class _Site:
    """The salon's web addresses, for the links its mail carries."""

    def __init__(self, salon_name: str) -> None:
        self.slug = fold_ascii(salon_name)[:30] or "szalon"
        self.host, self.base = f"{self.slug}.hu", f"https://www.{self.slug}.hu"

    def links(self, campaign: str, *own: tuple[str, float]) -> tuple[tuple[str, float], ...]:
        """The campaign's own links, then the usual footer ones; the salon's pages tagged for analytics."""
        utm = f"?utm_source=newsletter&utm_medium=email&utm_campaign={fold_ascii(campaign)[:40]}"
        pages = (*own, (f"{self.base}/idopontfoglalas", 0.35), (f"{self.base}/arlista", 0.15))
        tagged = tuple((url + utm if url.startswith(self.base) else url, weight) for url, weight in pages)
        return (*tagged, (f"https://www.instagram.com/{self.slug}/", 0.08))


def _months_before(end: dt.datetime, months: int) -> dt.datetime:
    years, month0 = divmod(end.month - 1 - months, 12)
    year, month = end.year + years, month0 + 1
    last_day = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return end.replace(year=year, month=month, day=min(end.day, last_day))


class _CustomerState:
    __slots__ = ("customer_id", "dead_at", "dnt", "joined", "last_open", "last_winback", "suppressed")

    def __init__(self, joined: int) -> None:
        self.customer_id, self.joined, self.dnt = 0, joined, False
        self.suppressed: int | None = None  # first unsubscribe, complaint or hard bounce: no marketing after
        self.dead_at: int | None = None
        self.last_open: int | None = None
        self.last_winback: int | None = None

    def suppress(self, moment: int) -> None:
        """Remember the earliest moment the customer stopped accepting marketing mail."""
        self.suppressed = moment if self.suppressed is None else min(self.suppressed, moment)


class _Writer:
    """Collects messages, links and events, and writes them a chunk at a time."""

    def __init__(self, engine: Engine, tenant_id: int, progress: Callable[[int, int], None] | None) -> None:
        self.engine, self.tenant_id, self.progress = engine, tenant_id, progress
        self.messages: list[tuple[Any, ...]] = []  # _MESSAGE_COLUMNS without the id
        self.links: list[tuple[int, int, str]] = []  # (message in chunk, position, url)
        self.events: list[EventIn] = []  # message_id: the message's index in the chunk until the flush
        self.written = self.message_count = self.expected = self.flushes = 0

    def flush(self) -> None:
        """Write the queued messages, links and events in one transaction."""
        if not self.messages:
            return
        with write_transaction(self.engine) as conn:
            ids = _reserve_ids(conn, len(self.messages))
            bulk_insert_rows(
                conn,
                messages_table,
                _MESSAGE_COLUMNS,
                [(i, *r) for i, r in zip(ids, self.messages, strict=True)],
            )
            link_rows = [(self.tenant_id, ids[local], position, url) for local, position, url in self.links]
            bulk_insert_rows(conn, links_table, ("tenant_id", "message_id", "position", "url"), link_rows)
            for event in self.events:
                event.message_id = ids[event.message_id]
            self.written += ingest_batch(conn, self.events).stored
        self.messages, self.links, self.events = [], [], []
        self.flushes += 1
        refresh_statistics_as_tables_grow(self.engine, self.flushes)
        if self.progress:
            self.progress(self.written, max(self.expected, self.written))


def _reserve_ids(conn: Connection, count: int) -> list[int]:
    # Our own ids let a chunk's events name their messages before the insert, without reading them back.
    if conn.dialect.name == "postgresql":
        query = text("SELECT nextval(pg_get_serial_sequence('messages', 'id')) FROM generate_series(1, :n)")
        return [int(value) for value in conn.execute(query, {"n": count}).scalars()]
    # SQLite: this transaction holds the database's only write lock, so max + 1 onwards stays ours.
    top = conn.execute(select(func.coalesce(func.max(messages_table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + 1 + count))


class _History:
    """The simulation: plans every send, then plays each message forward to its last event."""

    def __init__(self, population: list[Customer], clock: SalonClock, start: int, end: int, seed: int,
                 site: _Site, writer: _Writer) -> None:  # fmt: skip
        self.population, self.clock, self.start, self.end, self.site = population, clock, start, end, site
        self.writer, self.run = writer, ""
        self.rng = random.Random(f"mailtrack-demo-history-{seed}")
        self.states = [_CustomerState(start + int(c.joined_fraction * (end - start))) for c in population]
        self.kinds: dict[str, Kind] = {}
        self.campaign_ids: dict[str, int] = {}
        self.tracked: dict[tuple[str, bool], bool] = {}  # (channel, customer's do-not-track) → instrumented
        self.birthdays: dict[tuple[int, int], list[int]] = {}
        for customer in population:
            self.birthdays.setdefault(customer.birthday, []).append(customer.index)
        self.opens: list[tuple[int, int]] = []  # heap of (first human open, customer), read as time passes
        self.apple_ips = [f"17.58.{n}.{self.rng.randrange(1, 255)}" for n in range(64)]  # Apple's proxies

    def _kind(self, key: str, *spec: Any) -> str:
        self.kinds.setdefault(key, Kind(*spec))
        return key

    def plan(self) -> list[Trigger]:
        """Every trigger of the history, in time order."""
        rng, clock, site, triggers = self.rng, self.clock, self.site, list[Trigger]()

        def add(moment: int, key: str, who: int = -1) -> None:
            if self.start <= moment < self.end:
                triggers.append((moment, len(triggers), key, who))

        first_day = clock.day(self.start)
        days = [first_day + dt.timedelta(days=n) for n in range((self.end - self.start) // _DAY + 2)]
        for year, month in sorted({(day.year, day.month) for day in days}):
            name = f"{dt.date(year, month, 1):%B %Y} newsletter"
            links = site.links(name, (f"{site.base}/blog/{_ARTICLES[month - 1]}", 0.3))
            key = self._kind(name, name, "marketing", "campaign", 1.0, 1.0, links)
            add(self._slot_time(dt.date(year, month, 1)), key)
            for p_month, p_day, title, page, interest in (p for p in _PROMOTIONS if p[0] == month):
                name = f"{title} {year}"
                links = site.links(name, (f"{site.base}/{page}", 0.4), (f"{site.base}/ajandekkartya", 0.1))
                key = self._kind(name, name, "marketing", "campaign", interest, 1.2, links)
                add(self._slot_time(dt.date(year, p_month, p_day)), key)
        links = site.links("birthday", (f"{site.base}/szulinapi-ajandek", 0.5))
        birthday = self._kind("birthday", "Birthday offer", "marketing", "automation", 1.25, 1.5, links)
        links = site.links("win-back", (f"{site.base}/visszavaro-kedvezmeny", 0.5))
        winback = self._kind("winback", "Win-back", "marketing", "automation", 0.7, 1.0, links)
        for day in days:  # the automations' daily run, and the weekly win-back sweep
            add(clock.at(day, 8, rng.randrange(6)), birthday)
            if day.weekday() == 2:
                add(clock.at(day, 11, rng.randrange(6)), winback)
        links = site.links("welcome", (f"https://www.facebook.com/{site.slug}", 0.1))
        self._kind("welcome", "Welcome", "marketing", "automation", 1.3, 1.0, links)
        self._kind("confirm", "Booking confirmation", "transactional", "automation", 1.4, 0.6, ())
        self._kind("remind", "Appointment reminder", "transactional", "automation", 1.5, 0.8, ())
        self._kind("reset", "Password reset", "system", "system", 1.0, 0.0, ())
        for customer, state in zip(self.population, self.states, strict=True):
            for moment, key in personal_mail(customer, state.joined, self.start, self.end, clock, rng):
                add(moment, key, customer.index)
        return sorted(triggers)

    def _slot_time(self, earliest: dt.date) -> int:
        pick, slot = self.rng.random(), None
        for weekday, hour, share in _SLOTS:
            slot, pick = slot or ((weekday, hour) if pick < share else None), pick - share
        weekday, hour = slot or (self.rng.randrange(6), self.rng.randrange(8, 21))  # now and then, a new slot
        day = earliest + dt.timedelta(days=(weekday - earliest.weekday()) % 7)
        return self.clock.at(day, hour) + self.rng.randrange(-5 * 60, 25 * 60)

    def play(self, triggers: list[Trigger]) -> None:
        """Play every trigger in order, writing a chunk whenever one is full."""
        rng, states, writer = self.rng, self.states, self.writer
        for moment, _, key, who in triggers:
            kind = self.kinds[key]
            if who >= 0:
                self.send(who, kind, moment)
            elif key == "birthday":
                day = self.clock.day(moment)
                for index in self.birthdays.get((day.month, day.day), ()):
                    self.send(index, kind, moment + rng.randrange(60))
            elif key == "winback":
                self._win_back(kind, moment)
            else:  # a campaign to everyone subscribed, in the ESP's order
                audience = [index for index, state in enumerate(states) if state.joined <= moment]
                rng.shuffle(audience)
                for position, index in enumerate(audience):
                    self.send(index, kind, moment + position * 60 // SENDS_PER_MINUTE)
            if len(writer.events) >= CHUNK_EVENTS:
                writer.flush()
        writer.flush()

    def _win_back(self, kind: Kind, moment: int) -> None:
        while self.opens and self.opens[0][0] <= moment:
            opened, index = heapq.heappop(self.opens)
            self.states[index].last_open = opened
        quiet_since = moment - 60 * _DAY
        if quiet_since < self.start:
            return  # nobody can tell who went quiet before the history began
        for index, state in enumerate(self.states):
            if (
                state.joined <= quiet_since
                and (state.last_open is None or state.last_open < quiet_since)
                and (state.last_winback is None or state.last_winback < moment - 120 * _DAY)
            ):
                state.last_winback = moment
                self.send(index, kind, moment + self.rng.randrange(120))

    def send(self, index: int, kind: Kind, sent: int) -> None:
        """One message to one customer, from its "sent" to its last event before the history ends."""
        state, end, marketing = self.states[index], self.end, kind.channel == "marketing"
        if (
            sent >= end
            or sent < state.joined
            or (state.dead_at is not None and state.dead_at <= sent)  # the ESP no longer mails a dead address
            or (marketing and state.suppressed is not None and state.suppressed <= sent)
        ):
            return
        customer, rng, writer, site = self.population[index], self.rng, self.writer, self.site
        links = kind.links
        if kind.channel == "transactional":  # each booking has its own page
            links = ((f"{site.base}/foglalasaim/{rng.getrandbits(40):010x}", 0.6),
                     (f"https://maps.google.com/?q={site.slug}", 0.25),
                     (f"{site.base}/arlista", 0.15))  # fmt: skip
        tracked, stamp = self.tracked[(kind.channel, state.dnt)], _stamp(sent, UTC)
        number = writer.message_count
        smtp_id = f"<{self.run}.{number:07d}.{rng.getrandbits(32):08x}@mail.{site.host}>"
        row = (writer.tenant_id, f"{self.run}-m{number:07d}", state.customer_id, kind.channel, kind.source,
               self.campaign_ids[kind.campaign], smtp_id, tracked, stamp,
               stamp.replace(minute=0, second=0))  # fmt: skip
        local, events, tenant = len(writer.messages), writer.events, writer.tenant_id
        writer.messages.append(row)
        writer.links.extend((local, position, url) for position, (url, _) in enumerate(links) if tracked)
        writer.message_count += 1

        def add(type_: str, moment: int, **fields: Any) -> None:
            if moment < end:
                events.append(EventIn(tenant, local, type_, _stamp(moment, UTC), **fields))

        add("sent", sent)
        hard = state.dead_at is not None or customer.bad_address or rng.random() < HARD_BOUNCE_RATE
        if hard or rng.random() < SOFT_BOUNCE_RATE:  # a soft bounce: mailbox full, greylisting, a timeout
            status, diagnostic = rng.choice(_HARD if hard else _SOFT)
            bounced = sent + (rng.randrange(2, 90) if hard else rng.randrange(60, 6 * 3600))
            add("bounced", bounced, bounce_kind=("soft", "hard")[hard], status=status, diagnostic=diagnostic)
            if hard:
                state.dead_at = bounced if state.dead_at is None else min(state.dead_at, bounced)
                state.suppress(bounced)
            return
        delivered = sent + rng.randrange(1, 40)
        if rng.random() < DELIVERY_REPORTED:
            add("delivered", delivered)
        opened = self._opens(customer, kind, links, delivered, add) if tracked else None
        if not marketing or state.suppressed is not None:
            return
        pick = rng.random()
        if pick < COMPLAINT_RATE:
            moment = delivered + rng.randrange(600, 3 * _DAY)
            add("complained", moment)
        elif pick < COMPLAINT_RATE + UNSUBSCRIBE_RATE * _UNSUBSCRIBE_BY_TIER[customer.tier]:
            # After reading, from the footer link; unread, from the mail client's unsubscribe button.
            moment = opened + rng.randrange(20, 600) if opened else delivered + rng.randrange(3600, 5 * _DAY)
            reader = customer.readers[0]
            add("unsubscribed", moment, user_agent=reader.click_user_agent, ip=reader.click_ip)
        else:
            return
        if moment < end:
            state.suppress(moment)

    def _opens(self, customer: Customer, kind: Kind, links: tuple[tuple[str, float], ...], delivered: int,
               add: Callable[..., None]) -> int | None:  # fmt: skip
        """Machine and human opens and clicks of a tracked message; returns its first human open."""
        rng = self.rng
        if customer.mpp:  # Apple's proxy fetches the pixel on delivery, read or not
            add("opened", delivered + rng.randrange(20, 1200), user_agent=APPLE_PROXY,
                ip=rng.choice(self.apple_ips), agent=KNOWN_AGENTS[APPLE_PROXY])  # fmt: skip
        if customer.scanner:  # a gateway opens the message and follows links before the reader sees it
            moment, ip = delivered + rng.randrange(1, 6), f"209.222.82.{rng.randrange(2, 250)}"
            add("opened", moment, user_agent=SCANNER_OPEN, ip=ip, agent=KNOWN_AGENTS[SCANNER_OPEN])
            for position in rng.sample(range(len(links)), rng.randrange(len(links) + 1)):
                add("clicked", moment + rng.randrange(4), user_agent=SCANNER_CLICK, ip=ip,
                    link_position=position, agent=KNOWN_AGENTS[SCANNER_CLICK])  # fmt: skip
        opened = sample_first_open(customer, delivered, self.clock, rng, kind.interest)
        if opened is None or opened >= self.end:
            return None
        heapq.heappush(self.opens, (opened, customer.index))
        moment = opened
        for attempt in range(4):  # the first open, then now and then another look
            if attempt and (rng.random() >= customer.reopen_prob or moment >= self.end):
                break
            reader = customer.readers[-1 if rng.random() < customer.second_reader_share else 0]
            add("opened", moment, user_agent=reader.open_user_agent, ip=reader.ip, agent=reader.open_agent)
            if attempt == 0 and links and rng.random() < customer.click_prob * kind.click_interest:
                click, weights = moment, [weight for _, weight in links]
                for _ in range(2 if rng.random() < 0.2 else 1):
                    click += rng.randrange(15, 300)
                    position = rng.choices(range(len(links)), weights)[0]
                    add("clicked", click, user_agent=reader.click_user_agent, ip=reader.click_ip,
                        link_position=position, agent=reader.click_agent)  # fmt: skip
            moment += 60 + int(rng.expovariate(1 / (8 * 3600)))
        return opened


def seed_history(
    engine: Engine,
    *,
    tenant_id: int,
    months: int = 6,
    customers: int = 2000,
    seed: int = 1,
    end: dt.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SeedReport:
    """Write `months` of synthetic history for `customers` customers of the salon, ending at `end` (UTC)."""
    began = time.perf_counter()
    if months < 1 or customers < 1:
        raise ValueError("months and customers must be at least 1")
    end_at = (end or utcnow()).replace(microsecond=0)
    end_at = end_at.astimezone(dt.UTC) if end_at.tzinfo else end_at.replace(tzinfo=dt.UTC)  # naive: UTC
    with engine.connect() as conn:
        tenant = get_tenant(conn, tenant_id=tenant_id)
        if tenant is None:
            raise ValueError(f"no salon with id {tenant_id}")
        settings = get_settings(conn, tenant_id=tenant_id)
    start, stop = int(_months_before(end_at, months).timestamp()), int(end_at.timestamp())
    population, writer = build_population(customers, seed=seed), _Writer(engine, tenant_id, progress)
    clock = SalonClock(zoneinfo.ZoneInfo(tenant.timezone), start, stop)
    history = _History(population, clock, start, stop, seed, _Site(tenant.name), writer)
    history.run = f"s{seed}-{end_at:%Y%m%d%H%M}"
    for channel, dnt in itertools.product(("marketing", "transactional", "system"), (False, True)):
        history.tracked[(channel, dnt)] = tracking_allowed(
            channel=channel, settings=settings, customer_do_not_track=dnt
        )
    triggers, table = history.plan(), customers_table
    with write_transaction(engine) as conn:
        taken = select(messages_table.c.id).where(messages_table.c.external_id == f"{history.run}-m0000000")
        if conn.execute(taken.where(messages_table.c.tenant_id == tenant_id)).first() is not None:
            raise ValueError(
                f"salon {tenant_id} already has seed {seed}'s history up to {end_at:%Y-%m-%d %H:%M}"
            )
        people = [CustomerIn(c.external_id, c.name, c.email) for c in population]
        ids = upsert_customers(conn, tenant_id=tenant_id, people=people)
        # A customer seeded before keeps what they did: no marketing once suppressed, no tracking if DNT.
        flagged = select(table.c.id, table.c.suppressed_at, table.c.do_not_track).where(
            table.c.tenant_id == tenant_id, or_(table.c.suppressed_at.is_not(None), table.c.do_not_track)
        )
        flags = {row.id: (row.suppressed_at, row.do_not_track) for row in conn.execute(flagged)}
        for customer, state in zip(population, history.states, strict=True):
            state.customer_id = ids[customer.external_id]
            suppressed_at, state.dnt = flags.get(state.customer_id, (None, False))
            state.suppressed = int(suppressed_at.timestamp()) if suppressed_at else None
        for kind in history.kinds.values():
            campaign_id = ensure_campaign(conn, tenant_id=tenant_id, name=kind.campaign, source=kind.source)
            history.campaign_ids[kind.campaign] = campaign_id
    writer.expected = int(customers * months * EVENTS_PER_CUSTOMER_MONTH)
    history.play(triggers)
    if progress:
        progress(writer.written, writer.written)
    return SeedReport(len(population), writer.message_count, writer.written, time.perf_counter() - began)
