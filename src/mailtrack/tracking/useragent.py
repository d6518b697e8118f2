"""User agent → device, mail client, OS and machine-fetch verdict for pixel and click hits.

Mail clients and image proxies come first, from our own rules: device-detector reads the Gmail and
Yahoo proxies as bots, Apple Mail as Safari and Outlook's `ms-office` form as "Microsoft Office", and
it is slow on a string it has not seen. Everything else (browsers, devices, bots, HTTP libraries) is
device-detector's, behind an LRU cache keyed by the agent string.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

from device_detector import DeviceDetector

logger = logging.getLogger(__name__)

DEVICES = frozenset({"mobile", "tablet", "desktop", "unknown"})
CLIENTS = frozenset({"gmail", "outlook", "apple_mail", "yahoo", "thunderbird", "other", "unknown"})
REASONS = frozenset(
    {
        "",
        "apple_privacy_proxy",
        "empty_user_agent",
        "link_scanner",
        "link_preview",
        "http_library",
        "headless_browser",
        "bot",
        "unrecognized_agent",
    }
)

# Real agents stay far below this; the cap bounds device-detector's regex work on hostile input.
MAX_USER_AGENT_LENGTH = 1024
_CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What one user agent says about the fetch: see the `mailtrack ua --json` contract."""

    device: str
    client: str
    os: str
    machine: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        """The contract's JSON object: device, client, os, machine, reason."""
        return {
            "device": self.device,
            "client": self.client,
            "os": self.os,
            "machine": self.machine,
            "reason": self.reason,
        }


def _machine(reason: str, client: str = "unknown") -> UserAgentInfo:
    # A machine's device and OS describe a data centre, not a recipient: never report them.
    return UserAgentInfo("unknown", client, "", True, reason)


_EMPTY = _machine("empty_user_agent")
_UNRECOGNIZED = _machine("unrecognized_agent")
# Apple Mail Privacy Protection prefetches every remote image through Apple's proxies with exactly
# this agent, whether or not the message is ever read.
_APPLE_PRIVACY_PROXY = _machine("apple_privacy_proxy", client="apple_mail")

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")

# Machine agents device-detector misses or files under the wrong heading. Order matters: a headless
# browser or a scanner may carry a mail client's token, so these run before the mail-client rules.
_MACHINE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"HeadlessChrome|PhantomJS|SlimerJS|HtmlUnit|Puppeteer|Playwright", re.I),
        "headless_browser",
    ),
    (
        re.compile(
            r"Barracuda|Mimecast|Proofpoint|urldefense|SafeLinks|virustotal|Google-Safety|Trend ?Micro"
            r"|IronPort|FortiMail|Forcepoint|MessageLabs|Symantec|Sophos|Zscaler|Microsoft Exchange/",
            re.I,
        ),
        "link_scanner",
    ),
    (
        re.compile(
            r"Preview|LinkExpanding|Existence Discovery|Protocol Discovery|facebookexternalhit"
            r"|WhatsApp|TelegramBot|Twitterbot|Discordbot|LinkedInBot",
            re.I,
        ),
        "link_preview",
    ),
    # Android's default HttpURLConnection agent: an app's background request, never a rendered view.
    (re.compile(r"^Dalvik/"), "http_library"),
    # iOS's account-sync daemon touches remote content while syncing, not while anyone reads.
    (re.compile(r"dataaccessd", re.I), "bot"),
)

# Image proxies fetch when the recipient opens the message, so it is a human open, but they hide
# the recipient's device.
_PROXY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"GoogleImageProxy|ggpht\.com", re.I), "gmail"),
    (re.compile(r"YahooMailProxy", re.I), "yahoo"),
    (re.compile(r"SeznamEmailProxy|RamblerMail|ImageProxy|mail\.ukr\.net proxy", re.I), "other"),
)

_MAIL_CLIENT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"Microsoft Outlook|Microsoft Office Outlook|MacOutlook|MSOffice|ms-office|OneOutlook"
            r"|Outlook-iOS|Outlook-Android",
            re.I,
        ),
        "outlook",
    ),
    (re.compile(r"Thunderbird|Icedove", re.I), "thunderbird"),
    (re.compile(r"YahooMobileMail|Yahoo%20Mail|jp\.co\.yahoo\.ymail", re.I), "yahoo"),
    (re.compile(r"com\.google\.Gmail|Android-Gmail", re.I), "gmail"),
)

# Apple Mail renders in a bare WebKit view: no Safari/ and no Version/ token, and nothing after the
# Mobile/ build on iOS. Anchoring both ends keeps out in-app browsers (Facebook, Instagram…) that
# share the prefix but append their own token.
_APPLE_MAIL_IOS = re.compile(
    r"^Mozilla/5\.0 \((?P<kind>iPhone|iPad|iPod)[^()]*\) AppleWebKit/[\d.]+ \(KHTML, like Gecko\)"
    r" Mobile/\w+$"
)
_APPLE_MAIL_MACOS = re.compile(
    r"^Mozilla/5\.0 \(Macintosh;[^()]*\) AppleWebKit/[\d.]+ \(KHTML, like Gecko\)$"
)

# Platform tokens for our own rules, most specific first (an iPad agent also says "like Mac OS X").
_PLATFORMS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"iPad", re.I), "tablet", "iPadOS"),
    (re.compile(r"iPhone|iPod|Outlook-iOS", re.I), "mobile", "iOS"),
    (re.compile(r"Android", re.I), "mobile", "Android"),
    (re.compile(r"Windows|ms-office|MSOffice", re.I), "desktop", "Windows"),
    (re.compile(r"Macintosh|Mac OS", re.I), "desktop", "macOS"),
    (re.compile(r"CrOS", re.I), "desktop", "ChromeOS"),
    (re.compile(r"Linux|X11", re.I), "desktop", "Linux"),
)

# device-detector's names, folded into the contract's vocabulary.
_DD_CLIENTS = {
    "Microsoft Outlook": "outlook",
    "Microsoft Office Outlook": "outlook",
    "Thunderbird": "thunderbird",
    "Apple Mail": "apple_mail",
    "Gmail": "gmail",
    "Yahoo Mail": "yahoo",
    "Yahoo! Mail": "yahoo",
    "YahooMobileMail": "yahoo",
}
_DD_MOBILE_TYPES = frozenset({"smartphone", "phablet", "feature phone", "wearable"})
_DD_OS_FAMILIES = {"Mac": "macOS", "GNU/Linux": "Linux", "Chrome OS": "ChromeOS", "Android": "Android"}
_DESKTOP_OSES = frozenset({"Windows", "macOS", "Linux", "ChromeOS"})
_DD_SCANNER_CATEGORIES = frozenset({"Security Checker", "Security search bot"})
_DD_KNOWN_CLIENT_TYPES = frozenset(
    {"browser", "pim", "mobile app", "desktop app", "feed reader", "messaging"}
)


def classify_user_agent(user_agent: str | None) -> UserAgentInfo:
    """Classify one User-Agent header value; never raises, whatever the input."""
    try:
        if user_agent is None:
            return _EMPTY
        text = user_agent if isinstance(user_agent, str) else _coerce(user_agent)
        # Truncate before anything else so a megabyte of junk costs no more than a real agent.
        text = _CONTROL_CHARS.sub(" ", text[:MAX_USER_AGENT_LENGTH]).strip()
    except Exception:  # noqa: BLE001  (a caller's odd object must not break a pixel)
        logger.warning("unclassifiable user agent of type %s", type(user_agent).__name__)
        return _UNRECOGNIZED
    return _classify_cached(text)


def _coerce(value: object) -> str:
    # Typed callers pass str; raw header bytes from a proxy or a log still get a fair reading.
    if isinstance(value, bytes | bytearray):
        return bytes(value[:MAX_USER_AGENT_LENGTH]).decode("utf-8", errors="replace")
    return str(value)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _classify_cached(user_agent: str) -> UserAgentInfo:
    try:
        return _classify(user_agent)
    except Exception:  # device-detector on hostile input: the hit matters more than its label
        logger.warning("user agent classification failed for %r", user_agent[:200], exc_info=True)
        return _UNRECOGNIZED


def _classify(ua: str) -> UserAgentInfo:
    # Web-server logs write a missing agent as "-"; imports carry that through.
    if not ua or ua == "-":
        return _EMPTY
    if ua.casefold() == "mozilla/5.0":
        return _APPLE_PRIVACY_PROXY
    for pattern, reason in _MACHINE_RULES:
        if pattern.search(ua):
            return _machine(reason)
    for pattern, client in _PROXY_RULES:
        if pattern.search(ua):
            return UserAgentInfo("unknown", client, "", False, "")
    apple_mail = _apple_mail(ua)
    if apple_mail is not None:
        return apple_mail
    for pattern, client in _MAIL_CLIENT_RULES:
        if pattern.search(ua):
            device, os_name = _platform(ua)
            return UserAgentInfo(device, client, os_name, False, "")
    return _from_device_detector(ua)


def _apple_mail(ua: str) -> UserAgentInfo | None:
    if match := _APPLE_MAIL_IOS.match(ua):
        if match["kind"] == "iPad":
            return UserAgentInfo("tablet", "apple_mail", "iPadOS", False, "")
        return UserAgentInfo("mobile", "apple_mail", "iOS", False, "")
    if _APPLE_MAIL_MACOS.match(ua):
        return UserAgentInfo("desktop", "apple_mail", "macOS", False, "")
    return None


def _platform(ua: str) -> tuple[str, str]:
    for pattern, device, os_name in _PLATFORMS:
        if pattern.search(ua):
            return device, os_name
    return "unknown", ""


def _from_device_detector(ua: str) -> UserAgentInfo:
    # check_cache=False: device-detector's own cache hands every caller one shared instance and
    # re-runs __init__ on it, which is both slow and unsafe across threads. Ours caches the result.
    detected: Any = DeviceDetector(ua, check_cache=False).parse()
    bot: dict[str, Any] = detected.all_details.get("bot") or {}
    if bot:
        return _from_bot(bot)
    client_type = str(detected.client_type())
    client_name = str(detected.client_name())
    if client_type == "library":
        return _machine("http_library")
    if client_name == "Headless Chrome":
        return _machine("headless_browser")
    os_name = _os_name(detected.all_details.get("os") or {})
    device = _device(str(detected.device_type()), os_name)
    if not os_name and device == "unknown" and client_type not in _DD_KNOWN_CLIENT_TYPES:
        # Every real mail client and browser announces its platform or a known name; device-detector
        # turns any other word into a "generic" client, and such an agent is a script far more
        # often than a person.
        return _UNRECOGNIZED
    client = _DD_CLIENTS.get(client_name) or _DD_CLIENTS.get(str(detected.secondary_client_name())) or "other"
    return UserAgentInfo(device, client, os_name, False, "")


def _from_bot(bot: dict[str, Any]) -> UserAgentInfo:
    name = str(bot.get("name") or "")
    category = str(bot.get("category") or "")
    if re.search(r"mail.*proxy|image ?proxy", name, re.I):
        # A webmail's image proxy we have no rule for yet: still fetched on open.
        return UserAgentInfo("unknown", "other", "", False, "")
    if category in _DD_SCANNER_CATEGORIES:
        return _machine("link_scanner")
    if category == "Social Media Agent" or "preview" in name.casefold():
        return _machine("link_preview")
    return _machine("bot")


def _os_name(os_details: dict[str, Any]) -> str:
    name = str(os_details.get("name") or "")
    if name in ("iOS", "iPadOS", "Windows"):
        return name
    family = str(os_details.get("family") or "")
    return _DD_OS_FAMILIES.get(family) or _DD_OS_FAMILIES.get(name) or name


def _device(device_type: str, os_name: str) -> str:
    if device_type in _DD_MOBILE_TYPES:
        return "mobile"
    if device_type in ("tablet", "desktop"):
        return device_type
    if device_type:
        return "unknown"  # TVs, consoles, cars: not a device class the dashboard shows
    # device-detector leaves the type empty for some plain desktop agents (Chrome on X11).
    if os_name in _DESKTOP_OSES:
        return "desktop"
    if os_name == "iPadOS":
        return "tablet"
    if os_name in ("iOS", "Android"):
        return "mobile"
    return "unknown"


_APPLE_V4 = ipaddress.IPv4Network("17.0.0.0/8")


def is_apple_proxy_ip(ip: str | None) -> bool:
    """True when the address is in Apple's 17.0.0.0/8, where Mail Privacy Protection fetches from."""
    if not isinstance(ip, str):
        return False
    text = ip.strip()[:64]
    # Cheap textual pre-check: parsing every address cost more than the rest of an ingested hit.
    if not text.startswith("17.") and ":" not in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped in _APPLE_V4
    return isinstance(address, ipaddress.IPv4Address) and address in _APPLE_V4
