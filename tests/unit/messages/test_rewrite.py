"""Link rewriting, pixel and unsubscribe URL: every rule, real emails, and byte preservation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailtrack.messages.rewrite import UNSUBSCRIBE_PLACEHOLDER, Instrumented, instrument

DATA = Path(__file__).resolve().parents[2] / "data" / "html"
PIXEL = "https://t.test/o/PIX?a=1&b=2"
PIXEL_TAG = (
    '<img src="https://t.test/o/PIX?a=1&amp;b=2" width="1" height="1" alt="" '
    'style="display:block;border:0;width:1px;height:1px" />'
)
UNSUB = "https://t.test/u/UNS?a=1&b=2"
UNSUB_HTML = "https://t.test/u/UNS?a=1&amp;b=2"
TRACKED = re.compile(r"""(["'])https://t\.test/c/(\d+)\1""")
ATTR_VALUE = re.compile(r""""[^"]*"|'[^']*'|[^\t\n\f\r >]+""")
HREF_EQUALS = re.compile(r"href[\t\n\f\r ]*=[\t\n\f\r ]*\Z", re.IGNORECASE)


def click(position: int) -> str:
    return f"https://t.test/c/{position}"


def run(
    html: str | None,
    text: str | None = None,
    *,
    pixel: str | None = None,
    rewrite: bool = True,
    click_url: Callable[[int], str] = click,
) -> Instrumented:
    return instrument(
        html, text, click_url=click_url, pixel_url=pixel, rewrite_links=rewrite, unsubscribe_url=UNSUB
    )


def one_link(html: str) -> str | None:
    result = run(html)
    return result.links[0] if result.links else None


def changed_values(before: str, after: str) -> list[tuple[str, int]]:
    """Check that `after` is `before` with only href values, the pixel and the placeholder changed.

    Returns each replaced value as written in `before` with the position its tracking URL names.
    """
    if PIXEL_TAG in after:
        at = after.index(PIXEL_TAG)
        rest = after[at + len(PIXEL_TAG) :]
        assert rest == "" or rest[:6].lower() == "</body", "pixel not before </body> nor at the end"
        after = after[:at] + rest
        assert PIXEL_TAG not in after, "two pixels"
    after = after.replace(UNSUB_HTML, UNSUBSCRIBE_PLACEHOLDER)
    replaced: list[tuple[str, int]] = []
    pos = last = 0
    for match in TRACKED.finditer(after):
        chunk = after[last : match.start()]
        assert before.startswith(chunk, pos), f"bytes differ near {pos}: {before[pos : pos + 60]!r}"
        pos += len(chunk)
        assert HREF_EQUALS.search(before, max(0, pos - 64), pos), "a replaced span is not an href value"
        value = ATTR_VALUE.match(before, pos)
        assert value is not None
        replaced.append((value.group(), int(match.group(2))))
        pos, last = value.end(), match.end()
    assert before[pos:] == after[last:]
    return replaced


# --- which tags and attributes -------------------------------------------------------------------


def test_a_area_and_vml_hrefs_are_rewritten() -> None:
    html = (
        '<a href="https://a.example/">a</a><map><area shape=rect href="https://b.example/"></map>'
        '<!--[if mso]><v:roundrect href="https://c.example/"></v:roundrect>'
        '<v:rect href="https://d.example/"></v:rect><![endif]-->'
    )
    result = run(html)
    assert result.links == [f"https://{x}.example/" for x in "abcd"]
    assert result.html == (
        '<a href="https://t.test/c/0">a</a><map><area shape=rect href="https://t.test/c/1"></map>'
        '<!--[if mso]><v:roundrect href="https://t.test/c/2"></v:roundrect>'
        '<v:rect href="https://t.test/c/3"></v:rect><![endif]-->'
    )


def test_vml_button_and_its_html_twin_share_a_position() -> None:
    html = (
        '<!--[if mso]><v:roundrect href="https://s.example/book?a=1&amp;b=2"></v:roundrect><![endif]-->'
        '<!--[if !mso]><!-- --><a href="https://s.example/book?a=1&b=2">Book</a><!--<![endif]-->'
    )
    result = run(html)
    assert result.links == ["https://s.example/book?a=1&b=2"]
    assert result.html is not None
    assert result.html.count('href="https://t.test/c/0"') == 2


@pytest.mark.parametrize(
    "html",
    [
        '<link rel="stylesheet" href="https://a.example/x.css">',
        '<div href="https://a.example/">',
        '<a xhref="https://a.example/">',
        '<a data-href="https://a.example/">',
        '<img src="https://a.example/i.png">',
        "<a>no href</a>",
        "<a href>empty</a>",
    ],
)
def test_other_tags_and_attributes_are_left_alone(html: str) -> None:
    result = run(html)
    assert (result.html, result.links, result.skipped) == (html, [], [])


def test_uppercase_tags_and_attributes() -> None:
    result = run('<A HREF="https://a.example/">x</A><AREA Href=https://b.example/>')
    assert result.html == '<A HREF="https://t.test/c/0">x</A><AREA Href="https://t.test/c/1">'


def test_quoting_styles_and_spacing() -> None:
    html = "<a href='https://a.example/'><a href=https://b.example/?x=1 class=c><a\n href = \"https://c.example/\"\n>"
    assert run(html).html == (
        "<a href='https://t.test/c/0'><a href=\"https://t.test/c/1\" class=c>"
        '<a\n href = "https://t.test/c/2"\n>'
    )


def test_only_the_first_of_duplicated_hrefs_counts() -> None:
    result = run('<a href="https://first.example/" href="https://second.example/">')
    assert result.links == ["https://first.example/"]
    assert result.html == '<a href="https://t.test/c/0" href="https://second.example/">'


def test_quoted_greater_than_and_slashes_inside_a_tag() -> None:
    html = '<a title="a > b" / href="https://a.example/"/>'
    assert run(html).html == '<a title="a > b" / href="https://t.test/c/0"/>'


# --- entities and escaping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://a.example/?a=1&amp;b=2", "https://a.example/?a=1&b=2"),
        ("https://a.example/?a=1&#38;b=2&#x26;c=3", "https://a.example/?a=1&b=2&c=3"),
        ("https://a.example/?a=1&copy=2&notify=3", "https://a.example/?a=1&copy=2&notify=3"),
        ("https://a.example/?a=1&reg", "https://a.example/?a=1®"),  # at the end it is a reference
        ("https://a.example/&eacute;t&eacute;", "https://a.example/été"),
        ("https://a.example/?q=&quot;x&quot;", 'https://a.example/?q="x"'),
        ("https://a.example/?a&lt", "https://a.example/?a<"),
    ],
)
def test_entities_are_decoded_as_browsers_do_in_attributes(href: str, url: str) -> None:
    assert one_link(f'<a href="{href}">') == url


def test_new_value_is_escaped_and_quoted() -> None:
    def hostile_click(position: int) -> str:
        return f"https://t.test/c/{position}?a=1&b=\"2\"&c='3'&d=<4>"

    result = run("<a href=https://a.example/><a href='https://b.example/'>", click_url=hostile_click)
    escaped0 = "https://t.test/c/0?a=1&amp;b=&quot;2&quot;&amp;c=&#x27;3&#x27;&amp;d=&lt;4&gt;"
    assert result.html == f"<a href=\"{escaped0}\"><a href='{escaped0.replace('/0', '/1')}'>"


# --- base href -----------------------------------------------------------------------------------


def test_relative_links_resolve_against_the_first_base_href() -> None:
    html = (
        '<head><base href="https://app.example/dir/"><base href="https://ignored.example/"></head>'
        '<a href="page?x=1">1</a><a href="../up">2</a><a href="/root">3</a><a href="//cdn.example/x">4</a>'
        '<a href="#top">5</a>'
    )
    result = run(html)
    assert result.links == [
        "https://app.example/dir/page?x=1",
        "https://app.example/up",
        "https://app.example/root",
        "https://cdn.example/x",
    ]
    assert 'href="#top"' in (result.html or "")


@pytest.mark.parametrize("base", ["", '<base href="mailto:x@y.example">', '<base href="relative/">'])
def test_relative_links_without_a_usable_base_are_skipped(base: str) -> None:
    html = f'{base}<a href="page.html">x</a>'
    result = run(html)
    assert (result.html, result.links) == (html, [])
    assert list(zip(result.skipped, result.skip_reasons, strict=True)) == [("page.html", "relative")]


def test_base_href_inside_a_comment_does_not_count() -> None:
    result = run('<!-- <base href="https://app.example/"> --><a href="page">x</a>')
    assert result.links == []


# --- schemes and hostile URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "href",
    ["mailto:a@b.example?subject=Hi there", "tel:+36 1 234 5678", "TEL:+361", "sms:+361", "callto:x",
     "#top", "#", "", "   ", "{{ manage_url }}", "*|UNSUB|*", "https://a.example/?e={{email}}",
     "{% url 'x' %}", "%%view_email_url%%", "https://a.example/?e=%7B%7Bemail%7D%7D"],
)  # fmt: skip
def test_benign_non_web_links_and_merge_tags_are_left_alone_silently(href: str) -> None:
    html = f'<a href="{href}">x</a>'
    result = run(html, f"see {href} now")
    assert (result.html, result.links, result.skipped) == (html, [], [])


CTRL = "control-character"


@pytest.mark.parametrize(
    ("href", "reason", "listed"),
    [("javascript:alert(1)", "scheme", None), ("JaVaScRiPt&colon;alert(1)", "scheme", "JaVaScRiPt:alert(1)"),
     ("data:text/html,<b>x</b>", "scheme", None), ("ftp://files.example/x", "scheme", None),
     ("http://bank.example@evil.example/", "userinfo", None), ("https://u:pw@a.example/", "userinfo", None),
     ("https://a.example/x\ny", CTRL, None), ("https://a.example/x\ty", CTRL, None),
     ("https://a.example/x&#13;&#10;Cookie:1", CTRL, "https://a.example/x\r\nCookie:1"),
     ("https://a.example/x y", CTRL, None), ("https://a.example/\x00x", CTRL, None),
     ("https://a.example/\u202egnp.exe", CTRL, None), ("http:\\\\evil.example\\x", "host", None),
     ("https:///nohost", "host", None), ("https://a.example:99999/", "host", None),
     ("https://a.example/" + "x" * 2100, "too-long", None)],
)  # fmt: skip
def test_unsafe_links_are_not_tracked_and_are_listed(href: str, reason: str, listed: str | None) -> None:
    html = f'<a href="{href}">x</a>'
    result = run(html)
    assert (result.html, result.links) == (html, [])
    assert list(zip(result.skipped, result.skip_reasons, strict=True)) == [(listed or href, reason)]


def test_scheme_is_case_insensitive_and_whitespace_is_stripped() -> None:
    result = run(
        '<a href="HTTPS://A.example/X"><a href=" \n\thttp://b.example/ \r\n"><a href="&#32;http://c.example/">'
    )
    assert result.links == ["HTTPS://A.example/X", "http://b.example/", "http://c.example/"]


def test_length_limit_is_2048_characters() -> None:
    exact = "https://a.example/" + "x" * (2048 - 18)
    assert one_link(f'<a href="{exact}">') == exact
    assert one_link(f'<a href="{exact}y">') is None


def test_skipped_entries_are_listed_once() -> None:
    result = run('<a href="javascript:x()">1</a><a href="javascript:x()">2</a>', "")
    assert result.skipped == ["javascript:x()"]


# --- opting out, comments, raw text --------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    ['data-mailtrack="skip"', "data-mailtrack=SKIP", "DATA-MAILTRACK='skip'", "data-notrack", "DATA-NOTRACK"],
)
def test_opted_out_links_stay_byte_identical(attrs: str) -> None:
    href = "https://a.example/?a=1&amp;b=2"
    html = f'<a {attrs} href="{href}">x</a><a href="{href}" {attrs}>'
    result = run(html)
    assert (result.html, result.links, result.skipped) == (html, [], [])


def test_data_mailtrack_other_values_still_track() -> None:
    assert one_link('<a data-mailtrack="track" href="https://a.example/">') == "https://a.example/"


@pytest.mark.parametrize(
    "html",
    [
        '<!-- <a href="https://a.example/"> -->',
        '<!--<a href="https://a.example/">--!>',
        '<style>/* <a href="https://a.example/"> */</style>',
        "<script>document.write('<a href=\"https://a.example/\">')</script>",
        '<title><a href="https://a.example/"></title>',
        '<textarea><a href="https://a.example/"></textarea>',
        '<a href="https://a.example/"',  # cut off by the end of input: browsers drop it
        '<a title="unclosed href="https://a.example/">',
    ],
)
def test_links_that_are_not_markup_are_left_alone(html: str) -> None:
    result = run(html)
    assert (result.html, result.links) == (html, [])


def test_raw_text_ends_at_its_end_tag_case_insensitively() -> None:
    result = run('<STYLE>a{}</Style ><a href="https://a.example/">')
    assert result.links == ["https://a.example/"]


def test_conditional_comment_markup_is_rewritten_and_markers_kept() -> None:
    html = (
        '<!--[if mso | IE]><table><tr><td><a href="https://a.example/">o</a><![endif]-->'
        '<!--[if !mso]><!--><a href="https://b.example/">x</a><!--<![endif]-->'
    )
    result = run(html)
    assert result.links == ["https://a.example/", "https://b.example/"]
    assert result.html == html.replace("https://a.example/", click(0)).replace("https://b.example/", click(1))


# --- pixel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<body>x</body></html>", f"<body>x{PIXEL_TAG}</body></html>"),
        ("<BODY>x</BODY >\n", f"<BODY>x{PIXEL_TAG}</BODY >\n"),
        ("<body>a</body>b</body>c", f"<body>a</body>b{PIXEL_TAG}</body>c"),
        ("<body>x", f"<body>x{PIXEL_TAG}"),
        ("", PIXEL_TAG),
        ("x</body><!-- </body> -->", f"x{PIXEL_TAG}</body><!-- </body> -->"),
        ("x</body><!--[if mso]></body><![endif]-->", f"x{PIXEL_TAG}</body><!--[if mso]></body><![endif]-->"),
        ("x<script>'</body>'</script>", f"x<script>'</body>'</script>{PIXEL_TAG}"),
        ("x</bodyx>", f"x</bodyx>{PIXEL_TAG}"),
    ],
)
def test_pixel_goes_before_the_last_body_end_tag_or_at_the_end(html: str, expected: str) -> None:
    assert run(html, pixel=PIXEL).html == expected


def test_no_pixel_url_means_no_pixel() -> None:
    assert run("<body>x</body>", pixel=None).html == "<body>x</body>"


# --- untracked mail, unsubscribe, text part ------------------------------------------------------


def test_untracked_mail_keeps_links_and_never_asks_for_click_urls() -> None:
    def refuse(position: int) -> str:
        raise AssertionError("click_url called for untracked mail")

    html = f'<a href="https://a.example/">x</a><a href="{UNSUBSCRIBE_PLACEHOLDER}">u</a></body>'
    text = f"https://a.example/ {UNSUBSCRIBE_PLACEHOLDER}"
    result = run(html, text, pixel=None, rewrite=False, click_url=refuse)
    assert result.html == f'<a href="https://a.example/">x</a><a href="{UNSUB_HTML}">u</a></body>'
    assert result.text == f"https://a.example/ {UNSUB}"
    assert (result.links, result.skipped) == ([], [])


def test_unsubscribe_placeholder_is_replaced_everywhere_and_never_tracked() -> None:
    placeholder = UNSUBSCRIBE_PLACEHOLDER
    html = f'<a href="{placeholder}">{placeholder}</a><a href="{placeholder}">'
    result = run(html, f"Leave: {UNSUBSCRIBE_PLACEHOLDER}\n{UNSUBSCRIBE_PLACEHOLDER}")
    assert result.html == f'<a href="{UNSUB_HTML}">{UNSUB_HTML}</a><a href="{UNSUB_HTML}">'
    assert result.text == f"Leave: {UNSUB}\n{UNSUB}"
    assert result.links == []


def test_missing_parts_stay_missing() -> None:
    result = run(None, None, pixel=PIXEL)
    assert (result.html, result.text, result.links) == (None, None, [])


@pytest.mark.parametrize(
    ("text", "expected", "links"),
    [
        ("Go to https://a.example/x.", "Go to {0}.", ["https://a.example/x"]),
        ("(see https://a.example/x), ok", "(see {0}), ok", ["https://a.example/x"]),
        ("https://w.example/wiki/A_(b)!", "{0}!", ["https://w.example/wiki/A_(b)"]),
        ("<https://a.example/?q=1&r=2>", "<{0}>", ["https://a.example/?q=1&r=2"]),
        ('"HTTP://A.example/"; next', '"{0}"; next', ["HTTP://A.example/"]),
        ("a https://a.example/ b https://b.example/ c https://a.example/", "a {0} b {1} c {0}",
         ["https://a.example/", "https://b.example/"]),
        ("xhttps://a.example/ and mailto:a@b.example and www.a.example", None, []),
        ("https://bank.example@evil.example/", None, []),
    ],
)  # fmt: skip
def test_bare_urls_in_the_text_part(text: str, expected: str | None, links: list[str]) -> None:
    result = run(None, text)
    assert result.text == (text if expected is None else expected.format(click(0), click(1)))
    assert result.links == links


def test_text_urls_share_positions_with_the_html() -> None:
    result = run(
        '<a href="https://a.example/?x=1&amp;y=2">a</a><a href="https://b.example/">b</a>',
        "B: https://b.example/ A: https://a.example/?x=1&y=2 C: https://c.example/.",
    )
    assert result.links == ["https://a.example/?x=1&y=2", "https://b.example/", "https://c.example/"]
    assert result.text == f"B: {click(1)} A: {click(0)} C: {click(2)}."


def test_click_url_is_asked_once_per_position() -> None:
    asked: list[int] = []

    def counting(position: int) -> str:
        asked.append(position)
        return click(position)

    run(
        '<a href="https://a.example/"><a href="https://a.example/">', "https://a.example/", click_url=counting
    )
    assert asked == [0]


# --- real-world emails ---------------------------------------------------------------------------

REAL_WORLD = {
    "newsletter_mso_button.html": [
        "https://salon-bella.example/?utm_source=newsletter&utm_medium=email&utm_campaign=aug",
        "https://salon-bella.example/arlista#arckezeles",
        "https://salon-bella.example/foglalas?utm_source=newsletter&utm_medium=email&utm_content=button",
        "https://www.facebook.com/szalonbella",
        "https://www.instagram.com/szalonbella/",
    ],
    "promo_legacy_no_body.html": [
        "http://shop.example/sale?c=SPRING&ref=mail",
        "https://shop.example/p/123?size=M&color=rose#reviews",
        "https://shop.example/gift?amount=50&reg=hu&lang=hu",
        "https://shop.example/women?c=SPRING&ref=map",
        "https://shop.example/men?c=SPRING&ref=map",
    ],
    "transactional_base_href.html": [
        "https://app.salon.example/account/bookings/4521?from=email",
        "https://app.salon.example/help/cancellation",
        "https://maps.example/?q=V%C3%A1ci+utca+1&z=16",
        "HTTPS://Salon.Example/Offers?src=receipt",
    ],
    "mjml_hero_outlook.html": [
        "https://studio.example/autumn?utm_campaign=autumn&utm_content=hero",
        "https://studio.example/outlook-help",
        "https://studio.example/view-online?id=a1b2",
        "https://studio.example/visit?lang=en",
    ],
}
REWRITTEN_HREFS = {
    "newsletter_mso_button.html": 6,
    "promo_legacy_no_body.html": 6,
    "transactional_base_href.html": 5,
    "mjml_hero_outlook.html": 5,
}
CONDITIONAL_MARKERS = re.compile(r"<!--\[if[^\]]*\]>(?:<!-->)?|<!(?:--)?\[endif\]-->", re.IGNORECASE)


def test_every_real_world_file_is_covered() -> None:
    assert sorted(p.name for p in DATA.glob("*.html")) == sorted(REAL_WORLD)


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_real_world_emails_survive(name: str) -> None:
    source = (DATA / name).read_text(encoding="utf-8")
    text = "Plain part: " + " | ".join(REAL_WORLD[name]) + f". Leave: {UNSUBSCRIBE_PLACEHOLDER}"
    result = run(source, text, pixel=PIXEL)
    assert result.html is not None
    assert result.links == REAL_WORLD[name]
    replaced = changed_values(source, result.html)
    assert len(replaced) == REWRITTEN_HREFS[name]
    assert CONDITIONAL_MARKERS.findall(result.html) == CONDITIONAL_MARKERS.findall(source)
    assert result.html.count(PIXEL_TAG) == 1
    has_body_end = "</body>" in source.lower()
    assert result.html.endswith(PIXEL_TAG) != has_body_end
    assert UNSUBSCRIBE_PLACEHOLDER not in result.html
    assert result.html.count("{{") == source.count("{{") - source.count(UNSUBSCRIBE_PLACEHOLDER)
    assert result.text == "Plain part: " + " | ".join(click(i) for i in range(len(result.links))) + (
        f". Leave: {UNSUB}"
    )


def test_real_world_skips_are_reported() -> None:
    source = (DATA / "transactional_base_href.html").read_text(encoding="utf-8")
    result = run(source)
    assert list(zip(result.skipped, result.skip_reasons, strict=True)) == [
        ("http://bank.example@evil.example/login", "userinfo"),
        ("javascript:alert(document.cookie)", "scheme"),
        ("JaVaScRiPt:alert(1)", "scheme"),
        ("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "scheme"),
        ("https://split.example/a\nb", "control-character"),
        ("https://tab.example/a\tb", "control-character"),
        ("http:\\\\evil.example\\path", "host"),
    ]
    for name in ("newsletter_mso_button.html", "promo_legacy_no_body.html", "mjml_hero_outlook.html"):
        assert run((DATA / name).read_text(encoding="utf-8")).skipped == []


# --- properties ----------------------------------------------------------------------------------

URLS = [
    "https://example.com/", "http://example.com/a?b=1&c=2#frag", "HTTPS://Example.COM/Path",
    "https://example.com/a?b=1&amp;c=2", "mailto:a@b.example", "tel:+361", "#top", "",
    "  https://pad.example/  ", "javascript:alert(1)", "http://bank.example@evil.example/",
    "relative/page", "//proto.example/x",
    "https://x.example/{{id}}", "*|UNSUB|*", UNSUBSCRIBE_PLACEHOLDER, "https://x.example/a\nb",
    "https://x.example/&#10;", "data:text/html,hi", "https://long.example/" + "a" * 2100,
    'https://q.example/?q="x"', "https://q.example/it's", "https://e.example/&copy=1&lt",
]  # fmt: skip
TEMPLATES = [
    '<a href="{u}">x</a>', "<A HREF='{u}'>", "<a href={u}>", '<area shape=rect href="{u}">',
    '<!--[if mso]><v:roundrect href="{u}" arcsize="5%"></v:roundrect><![endif]-->',
    '<a data-notrack href="{u}">', '<a href="{u}" data-mailtrack="skip">', '<!-- <a href="{u}"> -->',
    '<style>.x{{}} <a href="{u}"></style>', "<script>s='<a href=\"{u}\">'</script>",
    '<a\nclass="btn"\nhref = "{u}"\n>', '<base href="{u}">', "<link rel=stylesheet href={u}>",
]  # fmt: skip
STATIC = [
    "</body>", "</BODY >", "<body>", "<!--", "-->", "<!--[if mso]>", "<![endif]-->", "<!--[if !mso]><!-->",
    "<!--<![endif]-->", "&amp;", "&nbsp;", "<", ">", '"', "'", "=", "href=", "<a ", '<a href="', "\n",
    UNSUBSCRIBE_PLACEHOLDER, "<table><tr><td>", "<![CDATA[", "]]>", "<?xml?>", "<!DOCTYPE html>", "</",
    "<style>", "</style>", "--!>", "https://bare.example/ ",
]  # fmt: skip
link_fragments = st.builds(lambda t, u: t.format(u=u), st.sampled_from(TEMPLATES), st.sampled_from(URLS))
fragments = st.one_of(st.sampled_from(STATIC), link_fragments, st.text(max_size=6))
documents = st.lists(fragments, max_size=30).map("".join)


@settings(max_examples=400)
@given(documents, st.one_of(st.none(), documents), st.booleans(), st.booleans())
@example('<a href="https://a.example/">', "https://a.example/", True, True)
def test_only_href_values_pixel_and_placeholder_change(
    html: str, text: str | None, pixel: bool, rewrite: bool
) -> None:
    result = run(html, text, pixel=PIXEL if pixel else None, rewrite=rewrite)
    assert result.html is not None
    if pixel:
        assert PIXEL_TAG in result.html
    replaced = changed_values(html, result.html)
    assert {position for _, position in replaced} <= set(range(len(result.links)))
    assert len(set(result.links)) == len(result.links)
    assert len(result.skipped) == len(result.skip_reasons)
    if not rewrite:
        assert (replaced, result.links, result.skipped) == ([], [], [])


safe_urls = st.sampled_from(
    ["https://a.example/", "http://b.example/x?y=1&z=2#f", "HTTPS://C.example/", "https://d.example/(x)"]
)
safe_templates = st.sampled_from([t for t in TEMPLATES if "base" not in t and "{u}>" not in t])
plain_text = st.text(alphabet=st.characters(blacklist_characters="<>&\"'=", blacklist_categories=["Cs"]))
safe_documents = st.lists(
    st.one_of(st.builds(lambda t, u: t.format(u=u), safe_templates, safe_urls), plain_text,
              st.sampled_from(["</body>", "<p>", "<!--[if mso]>", "<![endif]-->", UNSUBSCRIBE_PLACEHOLDER])),
    max_size=20,
).map("".join)  # fmt: skip


@given(safe_documents)
def test_undoing_the_rewrite_gives_back_the_input(html: str) -> None:
    result = run(html, pixel=PIXEL)
    assert result.html is not None
    undone = result.html.replace(PIXEL_TAG, "", 1).replace(UNSUB_HTML, UNSUBSCRIBE_PLACEHOLDER)
    undone = TRACKED.sub(lambda m: m.group(1) + result.links[int(m.group(2))] + m.group(1), undone)
    assert undone == html


text_fragments = st.one_of(
    st.text(max_size=8),
    st.sampled_from([*URLS, "https://a.example/x.", "(https://a.example/y)", "https://w.example/A_(b)),"]),
    st.sampled_from([" ", "\n", ".", ")", "https://", UNSUBSCRIBE_PLACEHOLDER]),
)


@settings(max_examples=300)
@given(st.lists(text_fragments, max_size=20).map("".join))
@example("https://a.example/" + ")" * 50_000)
def test_text_rewrite_is_exactly_reversible(text: str) -> None:
    result = run(None, text)
    assert result.text is not None
    undone = result.text.replace(UNSUB, UNSUBSCRIBE_PLACEHOLDER)
    undone = re.sub(r"https://t\.test/c/(\d+)", lambda m: result.links[int(m.group(1))], undone)
    assert undone == text


@settings(max_examples=300)
@given(st.text(), st.text())
@example("<" * 5000 + "<!--[if a]>" * 2000, "")
@example("<a " + 'x="' * 3000, "")
def test_arbitrary_input_never_raises(html: str, text: str) -> None:
    result = run(html, text, pixel=PIXEL)
    assert result.html is not None
    assert result.text is not None
    changed_values(html, result.html)
