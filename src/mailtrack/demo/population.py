"""A salon's synthetic customers: who they are, how they read mail, and the ground truth of their opens.

Every customer is drawn from `random.Random(seed)`, so the same seed gives the same people. Each one
has a name and an address, the mail clients they read on (with the user agents those send), maybe
Apple Mail Privacy Protection or a corporate link scanner, an engagement tier, and a weekly 7 × 24
"attention" profile in the salon's timezone: the chance that they look at their mailbox in each hour.

Opens follow one discrete-time hazard process, which `sample_first_open` (the generator) and
`true_open_probability` (the ground truth the send-time model is validated against) share: from
delivery on, in each local clock hour the customer looks at their mail with probability
`look[hour of week]`, and a look at a message `a` hours old opens it with probability
`open_prob × interest × 0.5 ** (a / 12)` — a message loses half its pull every 12 hours as it sinks
under newer mail. The first hour counts only for the part of it left after delivery.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import unicodedata
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mailtrack.tracking.useragent import UserAgentInfo

HOURS_PER_WEEK = 168
FRESHNESS_HALF_LIFE_HOURS = 12.0
SIMULATED_HOURS = 7 * 24  # a week-old message keeps 1/16384 of its pull: later opens are negligible
MAX_LOOK = 0.9  # nobody is certain to look during any given hour
MAX_OPEN = 0.98
_FRESHNESS = [0.5 ** (age / FRESHNESS_HALF_LIFE_HOURS) for age in range(SIMULATED_HOURS)]


def freshness(age_hours: int) -> float:
    """How much of a message's pull is left `age_hours` after delivery."""
    return float(0.5 ** (age_hours / FRESHNESS_HALF_LIFE_HOURS))


@dataclass(frozen=True, slots=True)
class Reader:
    """One mail client a customer reads on: what it sends when it loads the pixel and when a link opens."""

    client: str  # our own label, e.g. "gmail_android", "apple_ios", "outlook_windows"
    device: str  # the truth (a Gmail or Yahoo proxy hides it from the tracker)
    open_user_agent: str
    click_user_agent: str
    ip: str  # where the pixel is fetched from: the reader's network, or their provider's image proxy
    click_ip: str  # a click always comes from the reader's own network
    open_agent: UserAgentInfo
    click_agent: UserAgentInfo


@dataclass(frozen=True, slots=True)
class Customer:
    """A synthetic customer and their habits: everything the generator needs to write their history."""

    index: int
    external_id: str
    name: str
    email: str
    bad_address: bool  # a typo or an abandoned mailbox: their first message hard-bounces
    readers: tuple[Reader, ...]  # the first is the main one
    second_reader_share: float
    mpp: bool  # Apple Mail Privacy Protection: Apple's proxy fetches the pixel of every message
    scanner: bool  # a corporate gateway opens every message and follows links on delivery
    persona: str
    look: tuple[float, ...]  # 168 hourly chances of looking at the mailbox, Monday 00:00 first (local)
    max_look: float
    tier: str
    open_prob: float  # chance that a look at a fresh message opens it
    click_prob: float  # chance that an open leads to a click
    reopen_prob: float
    birthday: tuple[int, int]  # (month, day)
    joined_fraction: float  # 0: before the history starts; else how far into it they signed up
    visit_every_days: float | None  # None: no appointments


# --- names and addresses ---------------------------------------------------------------------------
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


HU_FEMALE = _words("""Anna Zsófia Éva Katalin Erzsébet Ildikó Judit Andrea Mónika Krisztina Eszter Réka Nóra
    Dóra Petra Lilla Boglárka Fanni Kitti Viktória Ágnes Orsolya Tímea Beáta Gabriella Zsuzsanna Emese Enikő
    Noémi Luca Hanna Csilla Melinda Brigitta Adrienn Dorina Bernadett Szilvia Rita Veronika""")
HU_MALE = _words("""László István Gábor Péter Zoltán Tamás Balázs Dávid Ádám Bence Máté Gergő Levente Attila
    Norbert Csaba Dániel Márk Áron Zsolt""")
HU_FAMILY = _words("""Nagy Kovács Tóth Szabó Horváth Varga Kiss Molnár Németh Farkas Balogh Papp Takács Juhász
    Lakatos Mészáros Oláh Simon Rácz Fekete Szilágyi Török Fehér Balázs Gál Szűcs Kocsis Pintér Fodor Szalai
    Sipos Magyar Lukács Gulyás Bíró Király Katona Jakab Sándor Boros Fazekas Kelemen Antal Orosz Somogyi
    Fülöp Veres Vincze Hegedűs Deák Bálint Illés Vass Szőke Fábián Vörös Lengyel Bodnár Hajdu Halász Kozma
    Székely Gáspár""")
INTL_FEMALE = _words("""Emma Sophie Laura Julia Sarah Maria Elena Chloé Léa Lucía Sofía Olivia Mia Hannah Lena
    Aylin Priya Ioana Katarzyna Zuzana Mei Inès""")
INTL_MALE = _words("Lukas Thomas Marco Luca Daniel Matteo Jan Tomasz Andrei Noah Jérôme")
INTL_FAMILY = _words("""Müller Schmidt Fischer Weber Wagner Rossi Bianchi Ferrari García Martínez López Dubois
    Lefèvre Moreau Smith Brown Williams Dvořák Nowak Wiśniewska Popescu Ionescu Horvat Schneider Hoffmann
    Jiménez Çelik Søndergaard O'Brien""")
# NFKD leaves these letters whole; an address needs them spelled in ASCII.
_ASCII_SPELLING = str.maketrans({"ß": "ss", "ø": "o", "ł": "l", "đ": "d", "æ": "ae", "œ": "oe", "ı": "i"})
_LOCAL_PARTS = ("{g}.{f}", "{f}.{g}", "{g}{f}", "{g}.{f}{y}", "{i}{f}", "{g}_{f}", "{f}{g}{n}")

# The provider shapes which client people read it with: reader kind → weight.
_GMAIL = {"gmail_android": 40, "gmail_ios": 12, "gmail_web": 20, "apple_ios": 18, "apple_mac": 3,
          "samsung_email": 5, "outlook_ios": 2}  # fmt: skip
_HU_WEBMAIL = {"webmail_desktop": 35, "webmail_mobile": 15, "apple_ios": 20, "samsung_email": 15,
               "thunderbird": 5, "outlook_windows": 10}  # fmt: skip
_MICROSOFT = {"outlook_windows": 25, "outlook_ios": 15, "outlook_android": 10, "new_outlook": 15,
              "webmail_desktop": 25, "apple_ios": 10}  # fmt: skip
_ISP = {"thunderbird": 40, "outlook_windows": 30, "webmail_desktop": 30}
_COMPANY = {"outlook_windows": 60, "new_outlook": 20, "outlook_ios": 10, "apple_mac": 10}
DOMAINS: dict[str, tuple[float, dict[str, int]]] = {
    "gmail.com": (45, _GMAIL), "freemail.hu": (13, _HU_WEBMAIL), "citromail.hu": (5, _HU_WEBMAIL),
    "vipmail.hu": (1, _HU_WEBMAIL), "outlook.com": (5, _MICROSOFT), "hotmail.com": (4, _MICROSOFT),
    "icloud.com": (8, {"apple_ios": 70, "apple_mac": 20, "apple_ipad": 10}),
    "yahoo.com": (3, {"yahoo": 80, "apple_ios": 20}), "t-online.hu": (2, _ISP), "gmx.net": (2, _ISP),
    "dunaconsulting.hu": (4, _COMPANY), "pannonlogistics.hu": (3, _COMPANY),
}  # fmt: skip
_TYPOS = {"gmail.com": ("gmial.com", "gmail.co", "gmai.com"), "freemail.hu": ("freemial.hu", "fremail.hu"),
          "citromail.hu": ("citromial.hu",), "outlook.com": ("outlok.com",), "hotmail.com": ("hotmial.com",),
          "icloud.com": ("icoud.com",), "yahoo.com": ("yaho.com",)}  # fmt: skip

# --- user agents (the strings real clients send; see tests/data/user_agents.jsonl) -------------------
KNOWN_AGENTS: dict[str, UserAgentInfo] = {}
"""What each agent the generator sends is, handed to the ingest so no event waits for device-detector."""


def _known(device: str, client: str, os_name: str, *user_agents: str, reason: str = "") -> tuple[str, ...]:
    # The tracker must read each string the same way; a unit test holds the two together.
    for user_agent in user_agents:
        KNOWN_AGENTS[user_agent] = UserAgentInfo(device, client, os_name, bool(reason), reason)
    return user_agents


_WEBKIT, _BLINK = "AppleWebKit/605.1.15 (KHTML, like Gecko)", "AppleWebKit/537.36 (KHTML, like Gecko)"
_MAC, _WIN = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
(GMAIL_PROXY,) = _known("unknown", "gmail", "", "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                        "(via ggpht.com GoogleImageProxy)")  # fmt: skip
(YAHOO_PROXY,) = _known("unknown", "yahoo", "", "YahooMailProxy; "
                        "https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html")  # fmt: skip
# Apple Mail Privacy Protection's prefetch: a bare agent, from Apple's addresses.
(APPLE_PROXY,) = _known("unknown", "apple_mail", "", "Mozilla/5.0", reason="apple_privacy_proxy")
SCANNER_OPEN, SCANNER_CLICK = _known(
    "unknown", "unknown", "", "Barracuda Sentinel (EE)",
    f"Mozilla/5.0 (X11; Linux x86_64) {_BLINK} Chrome/112.0.0.0 Safari/537.36 AppEngine-Google; "
    "(+http://code.google.com/appengine; appid: s~virustotalcloud)", reason="link_scanner",
)  # fmt: skip
_WIN_BROWSERS = _known("desktop", "other", "Windows", f"{_WIN} {_BLINK} Chrome/131.0.0.0 Safari/537.36",
                       f"{_WIN} {_BLINK} Chrome/136.0.0.0 Safari/537.36",
                       f"{_WIN} {_BLINK} Chrome/136.0.0.0 Safari/537.36 Edg/136.0.0.0",
                       f"{_WIN[:-1]}; rv:133.0) Gecko/20100101 Firefox/133.0")  # fmt: skip
_MAC_BROWSERS = _known("desktop", "other", "macOS", f"{_MAC} {_WEBKIT} Version/18.3 Safari/605.1.15",
                       f"{_MAC} {_BLINK} Chrome/131.0.0.0 Safari/537.36")  # fmt: skip
_ANDROID_BROWSERS = _known(
    "mobile", "other", "Android",
    f"Mozilla/5.0 (Linux; Android 10; K) {_BLINK} Chrome/131.0.0.0 Mobile Safari/537.36",
    f"Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-A546B) {_BLINK} SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile "
    "Safari/537.36",
)  # fmt: skip
# Samsung Email, like most Android mail apps, renders in the system web view with no app token.
_ANDROID_WEBVIEWS = _known("mobile", "other", "Android", *(
    f"Mozilla/5.0 (Linux; Android {version}; {model} Build/{build}; wv) {_BLINK} Version/4.0 Chrome/{chrome} "
    "Mobile Safari/537.36" for version, model, build, chrome in (
        ("14", "SM-A546B", "UP1A.231005.007", "131.0.6778.135"),
        ("13", "SM-S918B", "TP1A.220624.014", "119.0.6045.163"),
        ("14", "SM-G991B", "UP1A.231005.007", "126.0.6478.122"))))  # fmt: skip
_OUTLOOK_WINDOWS = _known("desktop", "outlook", "Windows", *(
    f"Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.{b}; Pro)" for b in (14931, 17928)),
    "Mozilla/4.0 (compatible; ms-office; MSOffice 16)")  # fmt: skip
(_NEW_OUTLOOK,) = _known("desktop", "outlook", "Windows", f"{_WIN} {_BLINK} Chrome/136.0.0.0 Safari/537.36 "
                         "Edg/136.0.0.0 OneOutlook/1.2025.516.400")  # fmt: skip
_OUTLOOK_IOS = _known("mobile", "outlook", "iOS", "Outlook-iOS/709.2226530.prod.iphone (3.24.1)",
                      "Outlook-iOS/723.4027091.prod.iphone (4.2408.0)")  # fmt: skip
(_OUTLOOK_ANDROID,) = _known("mobile", "outlook", "Android", "Outlook-Android/2.0")
(_APPLE_MAC,) = _known("desktop", "apple_mail", "macOS", f"{_MAC} {_WEBKIT}")
_THUNDERBIRD = (  # (mail client, the browser it hands links to)
    (_known("desktop", "thunderbird", "Windows", f"{_WIN[:-1]}; rv:128.0) Gecko/20100101 "
            "Thunderbird/128.5.2")[0], _WIN_BROWSERS[3]),
    (_known("desktop", "thunderbird", "Linux", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
            "Thunderbird/128.3.0")[0], _known("desktop", "other", "Linux", "Mozilla/5.0 (X11; Ubuntu; Linux "
            "x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")[0]),
)  # fmt: skip
_IOS = ("16_7_10", "17_5_1", "17_6_1", "18_1_1", "18_3_2", "18_5")


def _apple(version: str, *, ipad: bool, safari: bool) -> str:
    # Apple Mail renders in a bare web view: nothing after Mobile/; Safari adds Version/ and Safari/.
    short = ".".join(version.split("_")[:2])
    tail = f" Version/{short} Mobile/15E148 Safari/604.1" if safari else " Mobile/15E148"
    platform = f"iPad; CPU OS {version}" if ipad else f"iPhone; CPU iPhone OS {version}"
    device, os_name = ("tablet", "iPadOS") if ipad else ("mobile", "iOS")
    client = "other" if safari else "apple_mail"
    return _known(device, client, os_name, f"Mozilla/5.0 ({platform} like Mac OS X) {_WEBKIT}{tail}")[0]


_HOME_V4 = ("84.0", "84.1", "84.2", "84.3", "80.98", "176.63", "188.6", "188.156", "91.120", "178.48")
_MOBILE_V4 = ("37.76", "46.139", "31.46", "5.187", "89.134", "87.97")
_HOME_V6 = ("2001:4c4c", "2a02:ab88", "2a01:36d")
_PROXY_V4 = {"google": ("66.249.80", "66.249.84", "66.102.6", "66.102.8"), "yahoo": ("98.137.64", "74.6.128")}


def _reader(kind: str, rng: random.Random, home_ip: str, mobile_ip: str) -> Reader:
    ios, desk = rng.choice(_IOS), rng.choice((*_WIN_BROWSERS, *_MAC_BROWSERS))
    safari = _apple(ios, ipad=False, safari=True)
    google, yahoo = (f"{rng.choice(prefixes)}.{rng.randrange(2, 250)}" for prefixes in _PROXY_V4.values())
    # kind: (device, pixel agent, click agent, pixel address)
    options: dict[str, tuple[str, str, str, str]] = {
        "gmail_android": ("mobile", GMAIL_PROXY, rng.choice(_ANDROID_BROWSERS), google),
        "gmail_ios": ("mobile", GMAIL_PROXY, safari, google),
        "gmail_web": ("desktop", GMAIL_PROXY, desk, google),
        "apple_ios": ("mobile", _apple(ios, ipad=False, safari=False), safari, mobile_ip),
        "apple_ipad": ("tablet", _apple(ios, ipad=True, safari=False), _apple(ios, ipad=True, safari=True),
                       home_ip),
        "apple_mac": ("desktop", _APPLE_MAC, _MAC_BROWSERS[0], home_ip),
        "outlook_windows": ("desktop", rng.choice(_OUTLOOK_WINDOWS), rng.choice(_WIN_BROWSERS[1:3]), home_ip),
        "new_outlook": ("desktop", _NEW_OUTLOOK, _WIN_BROWSERS[2], home_ip),
        "outlook_ios": ("mobile", rng.choice(_OUTLOOK_IOS), safari, mobile_ip),
        "outlook_android": ("mobile", _OUTLOOK_ANDROID, _ANDROID_BROWSERS[0], mobile_ip),
        "samsung_email": ("mobile", rng.choice(_ANDROID_WEBVIEWS), _ANDROID_BROWSERS[1], mobile_ip),
        "yahoo": ("desktop", YAHOO_PROXY, desk, yahoo),
        "thunderbird": ("desktop", *rng.choice(_THUNDERBIRD), home_ip),
        "webmail_desktop": ("desktop", desk, desk, home_ip),
        "webmail_mobile": ("mobile", safari, safari, mobile_ip),
    }  # fmt: skip
    device, pixel, click, ip = options[kind]
    click_ip = (mobile_ip if device == "mobile" else home_ip) if ip in (google, yahoo) else ip
    return Reader(kind, device, pixel, click, ip, click_ip, KNOWN_AGENTS[pixel], KNOWN_AGENTS[click])


# --- reading habits --------------------------------------------------------------------------------
_WEEKDAYS, _WEEKEND, _ALL = range(5), (5, 6), range(7)
# persona: (share of customers, [(days, hours, attention relative to their peak)]).
PERSONAS: dict[str, tuple[float, tuple[tuple[Sequence[int], Sequence[int], float], ...]]] = {
    "morning_commuter": (0.18, ((_WEEKDAYS, (6, 7, 8), 1.0), (_WEEKDAYS, (12,), 0.3),
                                (_WEEKDAYS, (21,), 0.25), (_WEEKEND, (9, 10), 0.5))),
    "lunch_break": (0.17, ((_WEEKDAYS, (12, 13), 1.0), (_WEEKDAYS, (8,), 0.25), (_WEEKDAYS, (17, 18), 0.35),
                           (_WEEKEND, (11, 12), 0.4))),
    "office_hours": (0.13, ((_WEEKDAYS, (9,), 1.0), (_WEEKDAYS, range(10, 17), 0.55), (_WEEKDAYS, (17,), 0.4),
                            (_WEEKEND, (11,), 0.1))),
    "evening": (0.22, ((_ALL, (19, 20, 21), 1.0), (_ALL, (22,), 0.5), (_WEEKDAYS, (7,), 0.2),
                       (_WEEKEND, (10,), 0.3))),
    "weekend": (0.12, ((_WEEKEND, (9, 10, 11), 1.0), (_WEEKEND, (17, 18, 19), 0.6), ((4,), (19, 20), 0.5),
                       (_WEEKDAYS, (20,), 0.15))),
    "night_owl": (0.08, ((_ALL, (22, 23, 0), 1.0), (_ALL, (1,), 0.5), (_WEEKDAYS, (13,), 0.3))),
    "always_on": (0.10, ((_ALL, range(7, 23), 0.45), (_ALL, (8, 12, 20), 0.9))),
}  # fmt: skip
# tier: (share, open_prob, click_prob and reopen_prob ranges, days between visits or None).
_Span = tuple[float, float]
TIERS: dict[str, tuple[float, _Span, _Span, _Span, _Span]] = {
    "fan": (0.15, (0.75, 0.95), (0.25, 0.45), (0.3, 0.5), (21, 42)),
    "regular": (0.35, (0.4, 0.7), (0.1, 0.25), (0.15, 0.35), (35, 70)),
    "occasional": (0.30, (0.12, 0.3), (0.04, 0.12), (0.05, 0.2), (60, 120)),
    "dormant": (0.20, (0.0, 0.04), (0.02, 0.06), (0.0, 0.05), (90, 180)),
}  # fmt: skip


def _persona_shape(persona: str) -> list[float]:
    shape = [0.0] * HOURS_PER_WEEK
    for days, hours, level in PERSONAS[persona][1]:
        for day in days:
            for hour in hours:
                shape[day * 24 + hour] = max(shape[day * 24 + hour], level)
    return shape


def _attention(persona: str, rng: random.Random) -> tuple[float, ...]:
    shape = _SHAPES[persona]
    shift = rng.choice((-1, 0, 0, 1))  # nobody keeps the persona's exact hours
    shape = shape[-shift:] + shape[:-shift] if shift else shape
    # Noise on every hour, and an occasional glance at any waking hour (rarely at night).
    noise = rng.random
    shape = [value * (0.6 + 0.8 * noise()) + glance for value, glance in zip(shape, _GLANCE, strict=True)]
    scale = rng.uniform(0.35, 0.9) / max(shape)  # their chance of looking in their favourite hour
    return tuple(min(MAX_LOOK, value * scale) for value in shape)


_GLANCE = tuple(0.04 if 7 <= how % 24 <= 22 else 0.005 for how in range(HOURS_PER_WEEK))
_SHAPES = {persona: _persona_shape(persona) for persona in PERSONAS}


def fold_ascii(text: str) -> str:
    """Lower-case ASCII letters and digits of a name: "Szűcs Éva" → "szucseva"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_ASCII_SPELLING))
    return "".join(ch for ch in decomposed if ch.isascii() and ch.isalnum())


def _name_and_address(rng: random.Random, used: set[str]) -> tuple[str, str, str]:
    female = rng.random() < 0.8  # a salon's clientele
    if rng.random() < 0.82:
        given, family = rng.choice(HU_FEMALE if female else HU_MALE), rng.choice(HU_FAMILY)
        # Hungarians write the family name first; many booking forms get it the other way round.
        name = f"{family} {given}" if rng.random() < 0.55 else f"{given} {family}"
    else:
        given, family = rng.choice(INTL_FEMALE if female else INTL_MALE), rng.choice(INTL_FAMILY)
        name = f"{given} {family}"
    g, f = fold_ascii(given) or "info", fold_ascii(family) or "mail"
    local = rng.choice(_LOCAL_PARTS).format(
        g=g, f=f, i=g[0], y=rng.randrange(60, 100), n=rng.randrange(1, 100)
    )
    domain = rng.choices(list(DOMAINS), [share for share, _ in DOMAINS.values()])[0]
    while f"{local}@{domain}" in used:
        local += str(rng.randrange(10))
    used.add(f"{local}@{domain}")
    return name, local, domain


def _ip(rng: random.Random, prefixes: tuple[str, ...]) -> str:
    return f"{rng.choice(prefixes)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def build_population(count: int, *, seed: int) -> list[Customer]:
    """`count` customers, the same ones for the same seed."""
    rng, used, people = random.Random(seed), set[str](), []
    personas, persona_shares = list(PERSONAS), [share for share, _ in PERSONAS.values()]
    tiers, tier_shares = list(TIERS), [spec[0] for spec in TIERS.values()]
    for index in range(count):
        name, local, domain = _name_and_address(rng, used)
        mix = DOMAINS[domain][1]
        bad_address = rng.random() < 0.012
        if bad_address and domain in _TYPOS and rng.random() < 0.6:
            domain = rng.choice(_TYPOS[domain])  # as typed at the reception desk
        home_ip = _ip(rng, _HOME_V4)
        if rng.random() < 0.15:
            home_ip = f"{rng.choice(_HOME_V6)}:{rng.randrange(65536):x}:{rng.randrange(65536):x}::{index:x}"
        mobile_ip, kinds = _ip(rng, _MOBILE_V4), list(mix)
        first = rng.choices(kinds, list(mix.values()))[0]
        readers = [_reader(first, rng, home_ip, mobile_ip)]
        if rng.random() < 0.3:  # a second device or client
            second = rng.choices(kinds, [0 if kind == first else weight for kind, weight in mix.items()])[0]
            readers.append(_reader(second, rng, home_ip, mobile_ip))
        persona = rng.choices(personas, persona_shares)[0]
        look = _attention(persona, rng)
        tier = rng.choices(tiers, tier_shares)[0]
        _, open_range, click_range, reopen_range, visits = TIERS[tier]
        birthday = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(365))
        people.append(Customer(
            index=index, external_id=f"s{seed}-c{index:06d}", name=name, email=f"{local}@{domain}",
            bad_address=bad_address, readers=tuple(readers),
            second_reader_share=rng.uniform(0.15, 0.45) if len(readers) > 1 else 0.0,
            # About half of Apple Mail users leave Mail Privacy Protection on.
            mpp=any(reader.client.startswith("apple_") for reader in readers) and rng.random() < 0.55,
            scanner=(mix is _COMPANY and rng.random() < 0.3) or rng.random() < 0.005,
            persona=persona, look=look, max_look=max(look), tier=tier, open_prob=rng.uniform(*open_range),
            click_prob=rng.uniform(*click_range), reopen_prob=rng.uniform(*reopen_range),
            birthday=(birthday.month, birthday.day),
            joined_fraction=0.0 if rng.random() < 0.8 else rng.uniform(0.02, 0.98),
            visit_every_days=None if tier == "dormant" and rng.random() < 0.5 else rng.uniform(*visits),
        ))  # fmt: skip
    return people


class SalonClock:
    """Epoch seconds ↔ the salon's local time, with the local hour of the week precomputed (DST included)."""

    def __init__(self, zone: zoneinfo.ZoneInfo, start: int, end: int) -> None:
        self.zone = zone
        self.origin = int(dt.datetime.fromtimestamp(start, zone).replace(minute=0, second=0).timestamp())
        moments = (dt.datetime.fromtimestamp(self.origin + hour * 3600, zone)
                   for hour in range((end - self.origin) // 3600 + SIMULATED_HOURS + 2))  # fmt: skip
        self.hour_of_week = [moment.weekday() * 24 + moment.hour for moment in moments]

    def at(self, day: dt.date, hour: int, minute: int = 0) -> int:
        """Epoch seconds of a local wall-clock time."""
        return int(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.zone).timestamp())

    def day(self, moment: int) -> dt.date:
        """The local date of an epoch second."""
        return dt.datetime.fromtimestamp(moment, self.zone).date()


def personal_mail(
    customer: Customer, joined: int, start: int, end: int, clock: SalonClock, rng: random.Random
) -> Iterator[tuple[int, str]]:
    """The customer's own occasions for mail: (moment, "welcome" | "confirm" | "remind" | "reset")."""
    day_length = 86_400

    def habit_time(day: dt.date) -> int:
        # People book and reset passwords on their phone, at the hours they also look at their mail.
        hours = customer.look[day.weekday() * 24 : day.weekday() * 24 + 24]
        return clock.at(day, rng.choices(range(24), hours)[0]) + rng.randrange(3600)

    newcomer = joined > start  # they signed up by booking their first visit
    if newcomer:
        yield joined + rng.randrange(60, 600), "welcome"
    interval = (customer.visit_every_days or 0.0) * day_length
    moment = (
        joined + rng.randrange(day_length, 21 * day_length) if newcomer else start - rng.uniform(0, interval)
    )
    while interval and moment < end + 3 * day_length:
        day = clock.day(int(moment))
        day += dt.timedelta(days=1 if day.weekday() == 6 else 0)  # the salon is closed on Sundays
        appointment = clock.at(day, rng.randrange(9, 19), rng.choice((0, 30)))
        ahead = day - dt.timedelta(days=rng.randrange(1, 22))
        booked, newcomer = max(joined, joined if newcomer else habit_time(ahead)), False
        yield booked + rng.randrange(5, 60), "confirm"
        if appointment - day_length > booked + 3600:
            yield appointment - day_length, "remind"
        moment += interval * rng.uniform(0.75, 1.3)
    moment = start + int(rng.expovariate(1 / (540 * day_length)))  # a password reset every year and a half
    while moment < end:
        yield max(joined, habit_time(clock.day(moment))), "reset"
        moment += int(rng.expovariate(1 / (540 * day_length)))


def sample_first_open(
    customer: Customer, delivered: int, clock: SalonClock, rng: random.Random, interest: float = 1.0
) -> int | None:
    """When the customer first opens a message delivered at `delivered` (epoch seconds), or None."""
    chance = min(MAX_OPEN, customer.open_prob * interest)
    if chance <= 0.0:
        return None
    log, look, top, decay = math.log, customer.look, customer.max_look, _FRESHNESS
    slot = (delivered - clock.origin) // 3600
    slot_start, hour_of_week = clock.origin + slot * 3600, clock.hour_of_week
    first_share = 1.0 - (delivered - slot_start) / 3600.0
    for block in range(0, SIMULATED_HOURS, 24):
        # Thinning, exact and cheap: within a day, hours are candidates with a bound's chance (a geometric
        # jump to the next one), and a candidate is kept with the true hazard ÷ the bound.
        ceiling = top * decay[block]
        log_miss, age = math.log1p(-chance * ceiling), block - 1
        while (age := age + 1 + int(log(1.0 - rng.random()) / log_miss)) < block + 24:
            if rng.random() * ceiling < look[hour_of_week[slot + age]] * decay[age] * (
                first_share if age == 0 else 1.0
            ):
                begin = delivered if age == 0 else slot_start + age * 3600
                return begin + int(rng.random() * (slot_start + (age + 1) * 3600 - begin))
    return None


def _local_hours_of_week(send_at_local: dt.datetime, horizon_hours: int) -> tuple[list[int], float]:
    """The local hour of the week of each hourly slot after sending, and the share of the first one left."""
    floor = send_at_local.replace(minute=0, second=0, microsecond=0)
    left = 1.0 - (send_at_local - floor).total_seconds() / 3600.0
    if send_at_local.tzinfo is None:  # wall-clock hours
        start = floor.weekday() * 24 + floor.hour
        return [(start + age) % HOURS_PER_WEEK for age in range(horizon_hours)], left
    # Real hours read on the local clock, as the generator lives them: DST shifts the hours after it.
    zone, base = send_at_local.tzinfo, floor.astimezone(dt.UTC)
    moments = ((base + dt.timedelta(hours=age)).astimezone(zone) for age in range(horizon_hours))
    return [moment.weekday() * 24 + moment.hour for moment in moments], left


def true_open_probability(
    customer: Customer, send_at_local: dt.datetime, horizon_hours: int = 72, *, interest: float = 1.0
) -> float:
    """The chance that `customer` opens a message delivered at `send_at_local` within `horizon_hours`.

    The horizon counts clock hours, the delivery hour first. `send_at_local` is in the salon's timezone
    (naive: wall-clock hours; aware: real hours, DST-exact); `interest` scales the open chance by kind of
    mail (1.0: a newsletter).
    """
    hours, first_share = _local_hours_of_week(send_at_local, horizon_hours)
    chance, survive, look = min(MAX_OPEN, customer.open_prob * interest), 1.0, customer.look
    for age, how in enumerate(hours):
        pull = _FRESHNESS[age] if age < SIMULATED_HOURS else freshness(age)
        survive *= 1.0 - look[how] * (first_share if age == 0 else 1.0) * chance * pull
    return 1.0 - survive


def population_open_rate(
    population: Sequence[Customer], weekday: int, hour: int, horizon_hours: int = 72
) -> float:
    """The expected open rate of a message sent on `weekday` (0 = Monday) at `hour`:00 local time.

    Customers whose address bounces are left out: an open rate is counted over delivered mail.
    """
    monday = dt.datetime(2024, 1, 1)  # noqa: DTZ001 - naive on purpose: wall-clock hours, as a grid means them
    send_at = monday + dt.timedelta(days=weekday, hours=hour)
    reachable = [customer for customer in population if not customer.bad_address]
    rates = [true_open_probability(customer, send_at, horizon_hours) for customer in reachable]
    return math.fsum(rates) / len(rates) if rates else 0.0
