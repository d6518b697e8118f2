"""Instrument outgoing mail in place: tracked links, an open pixel and the unsubscribe URL.

Re-serializing a parsed DOM reflows markup and breaks Outlook's conditional comments, so this module
never builds one. A small tokenizer that follows the HTML5 rules for tags, attributes, comments and raw
text records where each attribute value lies; only those spans change (plus the inserted pixel and the
unsubscribe placeholder), every other byte is copied as it was.

What is rewritten: the first `href` of `<a>`, `<area>` and VML `<v:*>` start tags, including those
inside Outlook conditional comments (`<!--[if mso]>…<![endif]-->`), whose content is markup to
Outlook. Ordinary comments, `<script>`/`<style>`/`<title>`/`<textarea>` content are not markup and are
left alone. Values are entity-decoded as a browser would (`&amp;` → `&`, `&copy=` in a query stays),
stripped of surrounding whitespace and resolved against the document's first `<base href>`; an http(s)
result gets a tracking URL. One URL has one position wherever it appears (HTML, MSO twin, text part).

What is left byte-identical:
* silently: links carrying `data-notrack` or `data-mailtrack="skip"`; empty hrefs, `#fragments`,
  `mailto:`/`tel:`/`sms:`/`callto:` links; values holding merge tags (`{{…}}`, `{%…%}`, `*|…|*`,
  `%%…%%`), including UNSUBSCRIBE_PLACEHOLDER;
* listed in `Instrumented.skipped`, with the reason at the same index of `Instrumented.skip_reasons`:
  `control-character` (whitespace such as CR, LF or tab, or a control or invisible formatting character
  inside), `scheme` (any scheme but http/https, e.g. javascript:, data:), `relative` (no usable
  `<base href>`), `too-long` (over 2048 characters), `userinfo` (`http://bank.example@evil.example/`),
  `host` (no host, a backslash or a bad port). Each distinct (href, reason) pair is listed once; the
  text part's bare URLs follow the same rules.

The pixel goes just before the last `</body>` end tag that is real markup (not in a comment, script or
Outlook-only block), or at the very end when there is none.
"""

from __future__ import annotations

import html as htmllib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.entities import html5 as html5_entities
from urllib.parse import urljoin, urlsplit

UNSUBSCRIBE_PLACEHOLDER = "{{mailtrack_unsubscribe_url}}"
MAX_URL_LENGTH = 2048
PIXEL_TEMPLATE = (
    '<img src="{src}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px" />'
)


@dataclass(frozen=True, slots=True)
class Instrumented:
    """The instrumented parts, the tracked URLs by position and the hrefs refused as unsafe."""

    html: str | None
    text: str | None
    links: list[str]  # absolute original URLs; the index is the link position
    skipped: list[str]  # hrefs left as they were because they were unsafe
    skip_reasons: list[str] = field(default_factory=list)  # parallel to `skipped`


# --- tokenizer -----------------------------------------------------------------------------------

_WS = re.compile(r"[\t\n\f\r ]*")
_ATTR_SEP = re.compile(r"[\t\n\f\r /]*")  # HTML5 reads a stray '/' between attributes as a separator
_ATTR_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r />=]*")  # a leading '=' belongs to the name
_UNQUOTED = re.compile(r"[^\t\n\f\r >]*")
_COMMENT_CLOSE = re.compile(r"--!?>")
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_CONDITIONAL = re.compile(r"<!--\[if\b[^\]>]{0,200}\]>", re.IGNORECASE)  # bounded: no rescans
_RAW_TEXT = {
    name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE)
    for name in ("script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes")
}


@dataclass(frozen=True, slots=True)
class _Attr:
    name: str  # lower-cased
    start: int  # value span, quotes included; -1 when the attribute has no value
    end: int
    quote: str  # '"', "'" or "" for an unquoted value
    raw: str | None  # the value as written, without quotes


@dataclass(frozen=True, slots=True)
class _Tag:
    name: str  # lower-cased
    start: int
    closing: bool
    attrs: tuple[_Attr, ...]
    conditional: bool  # inside a comment that only Outlook reads as markup

    def attr(self, name: str) -> _Attr | None:
        # Browsers keep the first of duplicated attributes and ignore the rest.
        return next((a for a in self.attrs if a.name == name), None)


def _comment_end(s: str, index: int) -> int:
    """Where an HTML5 comment whose text starts at index ends, or -1 if it runs to the end."""
    if s.startswith(">", index):
        return index + 1
    if s.startswith("->", index):
        return index + 2
    close = _COMMENT_CLOSE.search(s, index)  # one pass: a separate find per closer rescans the document
    return close.end() if close else -1


def _skip(pattern: re.Pattern[str], s: str, index: int) -> int:
    match = pattern.match(s, index)
    return match.end() if match else index


def _parse_attrs(s: str, index: int) -> tuple[int, tuple[_Attr, ...]] | None:
    """Attributes from index to the tag's '>', and the index after it; None when the input ends first."""
    n = len(s)
    attrs: list[_Attr] = []
    while True:
        index = _skip(_ATTR_SEP, s, index)
        if index >= n:
            return None
        if s[index] == ">":
            return index + 1, tuple(attrs)
        name = _ATTR_NAME.match(s, index)
        assert name is not None  # the separator left a name character here
        after = _skip(_WS, s, name.end())
        if after >= n or s[after] != "=":
            attrs.append(_Attr(name.group().lower(), -1, -1, "", None))
            index = name.end()
            continue
        start = _skip(_WS, s, after + 1)
        if start >= n:
            return None
        quote = s[start]
        if quote in "\"'":
            close = s.find(quote, start + 1)
            if close < 0:
                return None
            attrs.append(_Attr(name.group().lower(), start, close + 1, quote, s[start + 1 : close]))
            index = close + 1
        else:
            end = _skip(_UNQUOTED, s, start)
            attrs.append(_Attr(name.group().lower(), start, end, "", s[start:end]))
            index = end


def _tags(s: str) -> Iterator[_Tag]:
    """Start and end tags of an HTML document, with Outlook-only markup included and flagged."""
    n = len(s)
    index = 0
    hidden_until = -1  # end of the comment a conditional opened: non-Outlook clients skip up to here
    while True:
        lt = s.find("<", index)
        if lt < 0 or lt + 1 >= n:
            return
        c = s[lt + 1]
        if c == "!":
            if s.startswith("<!--", lt):
                conditional = _CONDITIONAL.match(s, lt)
                if conditional is not None:
                    # Keep scanning inside: Outlook reads this comment's content as markup. A
                    # conditional nested in a hidden stretch ends no later than it, so skip the search.
                    if lt >= hidden_until:
                        end = _comment_end(s, lt + 4)
                        hidden_until = end if end >= 0 else n
                    index = conditional.end()
                    continue
                end = _comment_end(s, lt + 4)
            else:
                gt = s.find(">", lt + 2)  # <!DOCTYPE>, <![endif]>, CDATA: bogus comments to '>'
                end = gt + 1 if gt >= 0 else -1
            if end < 0:
                return
            index = end
            continue
        if c == "?" or (c == "/" and not (lt + 2 < n and s[lt + 2].isascii() and s[lt + 2].isalpha())):
            gt = s.find(">", lt + 2)  # '<?…>' and '</…>' without a name are bogus comments too
            if gt < 0:
                return
            index = gt + 1
            continue
        if not (c == "/" or (c.isascii() and c.isalpha())):
            index = lt + 1  # a lone '<' is text
            continue
        closing = c == "/"
        name = _TAG_NAME.match(s, lt + (2 if closing else 1))
        assert name is not None  # the pattern matches the empty string
        parsed = _parse_attrs(s, name.end())
        if parsed is None:
            return  # a tag cut off by the end of input is dropped, as browsers do
        index, attrs = parsed
        tag_name = name.group().lower()
        yield _Tag(tag_name, lt, closing, attrs, lt < hidden_until)
        if not closing and tag_name in _RAW_TEXT:
            close = _RAW_TEXT[tag_name].search(s, index)
            if close is None:
                return
            index = close.start()


# --- URLs ----------------------------------------------------------------------------------------

_LONGEST_LEGACY_ENTITY = 6  # "middot", "frac34": the semicolon-less names are short
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_STRIP = "".join(map(chr, range(0x21)))  # what the URL standard strips: C0 controls and space
_IGNORED_SCHEMES = frozenset({"mailto", "tel", "sms", "callto"})
_MERGE_TAGS = ("{{", "}}", "{%", "%}", "*|", "|*", "%%", "%7b%7b", "%7d%7d")
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
_TEXT_URL = re.compile(r"(?<![A-Za-z0-9+.\-])https?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _unescape_attr(value: str) -> str:
    """Decode character references as HTML5 does inside an attribute value."""
    if "&" not in value:
        return value

    def one(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref[0] == "#":
            return htmllib.unescape(match.group())
        if ref[-1] == ";" and ref in html5_entities:
            return html5_entities[ref]
        name = ref.rstrip(";")
        for size in range(min(len(name), _LONGEST_LEGACY_ENTITY), 1, -1):
            if name[:size] in html5_entities:  # the keys without ';' are the legacy, semicolon-less names
                following = ref[size:] or value[match.end() : match.end() + 1]
                # In attributes `&copy=2` or `&notify` stay literal: query strings rely on that.
                if following[:1] == "=" or following[:1] in _ASCII_ALNUM:
                    return match.group()
                return html5_entities[name[:size]] + ref[size:]
        return match.group()

    return _CHARREF.sub(one, value)


def _classify(value: str, base: str | None) -> tuple[str | None, str | None]:
    """(absolute URL to track, None), (None, reason it is unsafe) or (None, None) to leave it alone."""
    url = value.strip(_STRIP)
    lowered = url.lower()
    if not url or url.startswith("#") or any(tag in lowered for tag in _MERGE_TAGS):
        return None, None
    scheme = _SCHEME.match(url)
    name = scheme.group(1).lower() if scheme is not None else None
    if name in _IGNORED_SCHEMES:
        return None, None  # mail and phone links are not web pages: nothing to track, nothing unsafe
    if len(url) > MAX_URL_LENGTH:
        return None, "too-long"
    if any(ch.isspace() or unicodedata.category(ch) in _INVISIBLE for ch in url):
        return None, "control-character"
    if name is None:
        if base is None:
            return None, "relative"
        url = urljoin(base, url)
    elif name not in ("http", "https"):
        return None, "scheme"
    if len(url) > MAX_URL_LENGTH:  # again: resolving against <base> made it longer
        return None, "too-long"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None, "host"
    if "@" in parts.netloc:
        return None, "userinfo"
    if not parts.hostname or "\\" in parts.netloc:
        return None, "host"
    return url, None


def _trim_text_url(url: str) -> str:
    """Drop sentence punctuation a bare URL in prose is followed by; keep balanced closers."""
    # Counted once and updated: recounting per character would be quadratic on "))))…".
    balance = {closer: url.count(opener) - url.count(closer) for closer, opener in _CLOSERS.items()}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in balance:
            if balance[last] >= 0:
                break
            balance[last] += 1
        elif last not in ".,;:!?'\"":
            break
        end -= 1
    return url[:end]


class _Registry:
    """Positions shared by the HTML and the text part, and what was refused."""

    def __init__(self, click_url: Callable[[int], str]) -> None:
        self._click_url = click_url
        self.positions: dict[str, int] = {}
        self.links: list[str] = []
        self.tracking: list[str] = []
        self.skipped: list[str] = []
        self.reasons: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def track(self, url: str) -> str:
        position = self.positions.get(url)
        if position is None:
            position = self.positions[url] = len(self.links)
            self.links.append(url)
            self.tracking.append(self._click_url(position))
        return self.tracking[position]

    def skip(self, href: str, reason: str) -> None:
        if (href, reason) not in self._seen:
            self._seen.add((href, reason))
            self.skipped.append(href)
            self.reasons.append(reason)


# --- instrumenting -------------------------------------------------------------------------------


def _is_link_tag(name: str) -> bool:
    return name in ("a", "area") or name.startswith("v:")


def _opted_out(tag: _Tag) -> bool:
    if tag.attr("data-notrack") is not None:
        return True
    marker = tag.attr("data-mailtrack")
    return marker is not None and _unescape_attr(marker.raw or "").strip(_STRIP).lower() == "skip"


def _base_url(tags: list[_Tag]) -> str | None:
    """The first `<base href>`, when it is a usable absolute http(s) URL (HTML5 uses only the first)."""
    for tag in tags:
        href = tag.attr("href") if tag.name == "base" and not tag.closing else None
        if href is not None and href.raw is not None:
            url, _ = _classify(_unescape_attr(href.raw), None)
            return url
    return None


def _instrument_html(source: str, registry: _Registry | None, pixel_url: str | None) -> str:
    tags = list(_tags(source))
    edits: list[tuple[int, int, str]] = []
    if registry is not None:
        base = _base_url(tags)
        for tag in tags:
            if tag.closing or not _is_link_tag(tag.name):
                continue
            href = tag.attr("href")
            if href is None or href.raw is None or _opted_out(tag):
                continue
            value = _unescape_attr(href.raw)
            url, reason = _classify(value, base)
            if url is not None:
                quote = href.quote or '"'
                escaped = htmllib.escape(registry.track(url), quote=True)
                edits.append((href.start, href.end, quote + escaped + quote))
            elif reason is not None:
                registry.skip(value.strip(_STRIP), reason)
    if pixel_url is not None:
        bodies = [t.start for t in tags if t.closing and t.name == "body" and not t.conditional]
        at = bodies[-1] if bodies else len(source)
        edits.append((at, at, PIXEL_TEMPLATE.format(src=htmllib.escape(pixel_url, quote=True))))
    pieces: list[str] = []
    done = 0
    for start, end, replacement in sorted(edits):
        pieces += (source[done:start], replacement)
        done = end
    pieces.append(source[done:])
    return "".join(pieces)


def _instrument_text(text: str, registry: _Registry) -> str:
    def one(match: re.Match[str]) -> str:
        candidate = _trim_text_url(match.group())
        url, reason = _classify(candidate, None)
        if reason is not None:
            registry.skip(candidate, reason)
        if url != candidate:  # not trackable (or not as written): keep the prose exactly as it was
            return match.group()
        return registry.track(url) + match.group()[len(candidate) :]

    return _TEXT_URL.sub(one, text)


def instrument(
    html: str | None,
    text: str | None,
    *,
    click_url: Callable[[int], str],
    pixel_url: str | None,
    rewrite_links: bool,
    unsubscribe_url: str,
) -> Instrumented:
    """Rewrite links, add the open pixel and fill in the unsubscribe URL, changing nothing else."""
    registry = _Registry(click_url)
    tracker = registry if rewrite_links else None
    out_html = out_text = None
    if html is not None:
        out_html = _instrument_html(html, tracker, pixel_url)
        # After rewriting, so the unsubscribe URL itself is never turned into a click redirect.
        out_html = out_html.replace(UNSUBSCRIBE_PLACEHOLDER, htmllib.escape(unsubscribe_url, quote=True))
    if text is not None:
        out_text = _instrument_text(text, tracker) if tracker is not None else text
        out_text = out_text.replace(UNSUBSCRIBE_PLACEHOLDER, unsubscribe_url)
    return Instrumented(out_html, out_text, registry.links, registry.skipped, registry.reasons)
