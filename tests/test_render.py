"""Rendering: escaping, paragraphs, strict templates, premailer once per issue, the email's
structure, the unsubscribe link in all three places, and `mailer preview`."""

from __future__ import annotations

import email
import email.policy
import json
import re
import shutil
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import premailer
import pytest

import mailer.render
from mailer.cli import main
from mailer.config import Settings
from mailer.errors import InputError
from mailer.issue import Issue, load_issue
from mailer.message import MessageFactory
from mailer.render import RenderedIssue, render_issue
from mailer.subscribers import Recipient
from mailer.tokens import read_token

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "issues" / "2026-11-24.json"
TEMPLATES = ROOT / "templates"
SECRET = "render-test-secret"
UNSUBSCRIBE = "https://example.org/unsubscribe/{token}"
DONATE = "https://example.org/donate?from=email&issue=2026-11-24"


# No .env and no MAILER_* settings from the machine running the tests.
pytestmark = pytest.mark.usefixtures("clean")


def settings(**changes: Any) -> Settings:
    values = {"from": "The Top Ten <news@example.org>", "secret": SECRET, "unsubscribe_url": UNSUBSCRIBE,
              "donate_url": DONATE}
    values.update(changes)
    return Settings.model_validate({k: v for k, v in values.items() if v is not None})


def example_data() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def issue_of(data: dict[str, Any]) -> Issue:
    return Issue.model_validate(data)


def build(rendered: RenderedIssue, config: Settings, address: str = "ann@example.org",
          name: str = "Ann") -> EmailMessage:
    raw = MessageFactory(rendered, config).build(Recipient(2, address, name))
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def raw_parts(message: EmailMessage) -> tuple[str, str]:
    """The decoded HTML and text parts, with the CRLF line ends they travel with."""
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def parts(message: EmailMessage) -> tuple[str, str]:
    html, text = raw_parts(message)
    return html.replace("\r\n", "\n"), text.replace("\r\n", "\n")


def filled(rendered: RenderedIssue, address: str = "ann@example.org", name: str = "Ann") -> tuple[str, str]:
    """Both bodies for one recipient, as the message carries them."""
    return parts(build(rendered, settings(), address, name))


class Page(HTMLParser):
    """The elements of an HTML body: (tag, attributes, the text directly inside)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self.open: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "depth": len(self.open)}
        self.elements.append(element)
        if tag not in ("img", "meta", "br", "link", "hr", "input"):
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element["text"] += data

    def all(self, tag: str, cls: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.elements if e["tag"] == tag
                and (cls is None or cls in (e["attrs"].get("class") or "").split())]


@pytest.fixture(scope="module")
def example() -> RenderedIssue:
    return render_issue(load_issue(EXAMPLE), settings())


# -- text is text -----------------------------------------------------------------------------


def test_text_is_escaped_never_markup():
    data = example_data()
    first = data["stories"][0]
    first["headline"] = "Rock & Roll <script>alert('x')</script> returns"
    first["summary"] = "<b>Not bold</b> & <a href=\"https://evil.example/\">not a link</a>"
    first["source"] = "Wire <i>Service</i>"
    first["url"] = "https://news.example.org/story?id=1&page=2"
    first["image"]["alt"] = 'A "quoted" <alt> text'
    first["image"]["caption"] = "Caption <u>x</u>"
    data["intro"] = "<img src=x onerror=alert(1)>"
    data["sign_off"] = "Bye </td></tr></table> now"
    data["sponsor"]["name"] = "Fern & Leaf <Books>"
    html, text = filled(render_issue(issue_of(data), settings()), name="<Ann & Bob>")

    assert "<script" not in html and "<b>" not in html and "<i>" not in html and "<u>" not in html
    # (premailer re-serialises the page, so quotes come back as plain characters in text)
    assert "Rock &amp; Roll &lt;script&gt;alert('x')&lt;/script&gt; returns" in html
    summary = '&lt;b&gt;Not bold&lt;/b&gt; &amp; &lt;a href="https://evil.example/"&gt;not a link&lt;/a&gt;'
    assert summary in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "Bye &lt;/td&gt;&lt;/tr&gt;&lt;/table&gt; now" in html
    assert "Good morning, &lt;Ann &amp; Bob&gt;." in html
    page = Page(html)
    assert not page.all("script") and not page.all("b")
    assert all(a["attrs"]["href"] != "https://evil.example/" for a in page.all("a"))
    assert page.all("img", "photo")[0]["attrs"]["alt"] == 'A "quoted" <alt> text'
    headline = page.all("h2", "headline")[0]
    assert headline["text"] == "Rock & Roll <script>alert('x')</script> returns"
    # an & in a URL is escaped in the attribute and means the same URL
    assert 'href="https://news.example.org/story?id=1&amp;page=2"' in html
    assert headline_link(page, 0) == "https://news.example.org/story?id=1&page=2"
    assert [a["attrs"]["href"] for a in page.all("a", "button")] == [DONATE]

    # the text part is plain text: the same characters, not entities
    assert "1. Rock & Roll <script>alert('x')</script> returns" in text
    assert "Good morning, <Ann & Bob>." in text
    assert "&amp;" not in text and "&lt;" not in text


def headline_link(page: Page, index: int) -> str:
    headline = page.all("h2", "headline")[index]
    links = page.elements[page.elements.index(headline) + 1]
    assert links["tag"] == "a"
    return str(links["attrs"]["href"])


def test_a_blank_line_starts_a_new_paragraph():
    data = example_data()
    data["intro"] = "Intro one\nstill intro one.\n\nIntro two."
    data["stories"][0]["summary"] = "First line\nsame paragraph.\n\n\nSecond.\n \nThird."
    data["sign_off"] = "Bye.\r\n\r\nSee you."
    html, text = filled(render_issue(issue_of(data), settings()))
    page = Page(html)
    story = page.all("td", "story")[0]
    inside = [e for e in page.elements if e["tag"] == "p" and "text" in e["attrs"].get("class", "").split()
              and story in page.elements[: page.elements.index(e)]
              and page.elements.index(e) < page.elements.index(page.all("td", "story")[1])]
    assert [p["text"] for p in inside] == ["First line\nsame paragraph.", "Second.", "Third."]
    intro = [p["text"] for p in page.all("p", "text") if p["text"].startswith("Intro")]
    assert intro == ["Intro one\nstill intro one.", "Intro two."]
    assert "<p class=\"text\"" in html and "See you." in [p["text"] for p in page.all("p", "text")]
    # text part: one blank line between paragraphs, none inside one
    assert "First line\nsame paragraph.\n\nSecond.\n\nThird.\n" in text
    assert "Intro one\nstill intro one.\n\nIntro two." in text
    assert "Bye.\n\nSee you." in text


# -- templates are strict ---------------------------------------------------------------------


def copied_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(TEMPLATES, target)
    return target


def test_copied_templates_render(tmp_path):
    folder = copied_templates(tmp_path)
    rendered = render_issue(load_issue(EXAMPLE), settings(), templates=folder)
    html, _ = filled(rendered)
    assert load_issue(EXAMPLE).stories[0].headline in html


@pytest.mark.parametrize("template", ["email.html.j2", "email.txt.j2"])
@pytest.mark.parametrize("expression", ["{{ no_such_variable }}", "{{ issue.no_such_field }}",
                                        "{% if undefined_flag %}x{% endif %}"])
def test_an_undefined_variable_is_an_error(tmp_path, template, expression):
    folder = copied_templates(tmp_path)
    path = folder / template
    path.write_text(path.read_text(encoding="utf-8").replace("{{ greeting }}", "{{ greeting }}" + expression),
                    encoding="utf-8")
    with pytest.raises(InputError) as info:
        render_issue(load_issue(EXAMPLE), settings(), templates=folder)
    assert str(info.value).startswith("templates: ")
    assert re.search(r"no_such_variable|no_such_field|undefined_flag", str(info.value))


def test_a_broken_template_is_an_input_error(tmp_path):
    folder = copied_templates(tmp_path)
    (folder / "email.html.j2").write_text("{% for x in %}", encoding="utf-8")
    with pytest.raises(InputError, match="^templates: "):
        render_issue(load_issue(EXAMPLE), settings(), templates=folder)


# -- premailer: once per issue, styles inline --------------------------------------------------


class CountingPremailer(premailer.Premailer):  # type: ignore[misc]
    runs = 0

    def transform(self, *args: Any, **kwargs: Any) -> str:
        type(self).runs += 1
        return str(super().transform(*args, **kwargs))


def test_premailer_runs_once_for_a_whole_send(tmp_path, monkeypatch, configured):
    monkeypatch.setattr(premailer, "Premailer", CountingPremailer)  # render imports it when it runs
    CountingPremailer.runs = 0
    monkeypatch.setenv("MAILER_STATE_DIR", str(tmp_path / "state"))
    count = 25
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name\n" + "".join(f"reader{n}@example.org,Reader {n}\n" for n in range(count)),
                   encoding="utf-8")
    before = mailer.render.inline_runs
    outbox = tmp_path / "outbox"
    assert main(["send", str(EXAMPLE), "--subscribers", str(csv), "--outbox", str(outbox)]) == 0
    messages = sorted(outbox.glob("*.eml"))
    assert len(messages) == count
    assert mailer.render.inline_runs - before == 1
    assert CountingPremailer.runs == 1
    # and each recipient still got their own footer
    bodies = [parts(email.message_from_bytes(m.read_bytes(), policy=email.policy.default))[0]  # type: ignore[arg-type]
              for m in messages[:3]]
    assert len(set(bodies)) == 3
    assert all(re.search(r"reader\d+@example\.org subscribed", b) for b in bodies)


# Styles that take premailer's and cssutils' less common paths: floated pictures (given an
# `align`), `!important`, a property cssutils does not know, a value it finds invalid, a media
# query, a pseudo-class, @font-face, and inline styles already there.
ODD_CSS = """<html><head><style>
@font-face { font-family: Serif Two; src: url(https://example.org/f.woff2); }
img.left { float: left; width: 100px } img.right { float: right !important }
p { color: rgba(1, 2, 3, 0.5); margin: 0 0 1em; colour: red; mso-line-height-rule: exactly; }
.x { width: 12qq; font: 12px/1.5 Georgia, serif; } a:hover { color: red }
@media (max-width: 600px) { .x { width: 100% !important } }
</style></head><body><p class="x" style="color: #333; bogus: 1">Hi <a href="https://example.org/">a</a></p>
<img class="left" src="https://example.org/a.png"><img class="right" style="border: 0" src="https://example.org/b.png">
<p style="margin: 0 !important">text</p></body></html>"""

LIGHT = """import sys
from mailer.render import inline_css
sys.stdout.write(inline_css(sys.stdin.read()))
"""
STOCK = """import sys
import premailer
from mailer.render import PREMAILER_OPTIONS
sys.stdout.write(premailer.Premailer(sys.stdin.read(), **PREMAILER_OPTIONS).transform())
"""


@pytest.mark.parametrize("source", ["example", "odd css"])
def test_premailer_imported_lightly_inlines_exactly_what_a_stock_premailer_does(monkeypatch, source):
    """The mailer's premailer runs without cssutils' profiles (a sixth of the rendering's CPU):
    the HTML it gives is the one a premailer with them gives, to the byte."""
    import subprocess
    import sys

    html = ODD_CSS
    if source == "example":  # the example issue as the templates render it, before inlining
        seen: list[str] = []
        monkeypatch.setattr(mailer.render, "inline_css", lambda html: seen.append(html) or html)
        render_issue(load_issue(EXAMPLE), settings())
        [html] = seen
    outputs = [
        subprocess.run([sys.executable, "-c", code], input=html, capture_output=True, text=True,
                       check=True, timeout=120).stdout
        for code in (LIGHT, STOCK)
    ]
    assert outputs[0] == outputs[1]
    assert 'style="' in outputs[0] and len(outputs[0]) > len(html) / 2
    if source == "odd css":
        assert 'align="left"' in outputs[0] and 'align="right"' in outputs[0]


def test_css_is_inlined(example):
    html, _ = filled(example)
    page = Page(html)
    styled = [e for e in page.elements if e["attrs"].get("class") and e["tag"] != "body"]
    assert styled, "the template uses classes for its rules"
    assert all(e["attrs"].get("style") for e in styled), [e for e in styled if not e["attrs"].get("style")]
    assert "font-size:24px" in page.all("h2", "headline")[0]["attrs"]["style"]
    assert "padding:20px 24px 8px 24px" in page.all("td", "story")[0]["attrs"]["style"]
    assert "max-width:600px" in page.all("table", "container")[0]["attrs"]["style"]
    # only the media query is left in <style>; no stylesheet to fetch
    style = [e["text"] for e in page.all("style")]
    assert len(style) == 1 and "@media" in style[0] and ".headline {" not in style[0].split("@media")[0]
    assert not page.all("link")


# -- the structure of a real email ------------------------------------------------------------


def test_layout_is_an_email_layout(example):
    html, _ = filled(example)
    page = Page(html)
    assert page.all("html")[0]["attrs"].get("lang") == "en"
    assert any(m["attrs"].get("name") == "viewport" for m in page.all("meta"))
    tables = page.all("table")
    assert len(tables) >= 2 and all(t["attrs"].get("role") == "presentation" for t in tables)
    container = page.all("table", "container")[0]["attrs"]
    assert container["width"] == "600"
    assert "width:100%" in container["style"].replace(" ", "")
    images = page.all("img")
    assert len(images) == 10
    for img in images:
        assert re.fullmatch(r"\d+", img["attrs"].get("width") or ""), img
        # no height: a picture that is blocked or fails collapses to its alt text, not a box
        assert "height" not in img["attrs"], img
        assert int(img["attrs"]["width"]) <= 600
        assert (img["attrs"].get("alt") or "").strip()
        assert img["attrs"]["src"].startswith("https://")
        assert "height:auto" in img["attrs"]["style"].replace(" ", "")


def test_preheader_is_first_and_hidden(example):
    html, _ = filled(example)
    page = Page(html)
    body = page.all("body")[0]
    first = page.elements[page.elements.index(body) + 1]
    assert first["tag"] == "div"
    style = first["attrs"]["style"].replace(" ", "")
    assert "display:none" in style and "max-height:0" in style and "overflow:hidden" in style
    assert first["text"].startswith(example.issue.preheader)
    # the masthead's text must not be what fills the rest of the inbox preview line
    assert len(first["text"]) > len(example.issue.preheader) + 50
    # hidden without a tiny font, which spam filters score (SpamAssassin's tiny-font rules)
    assert "font-size" not in style and "mso-hide:all" in style and "opacity:0" in style


def test_no_text_is_set_under_10_px(example):
    html, _ = filled(example)
    sizes = [float(size) for size in re.findall(r"font-size:\s*([\d.]+)px", html)]
    assert sizes and min(sizes) >= 10, sorted(sizes)[:3]
    assert not re.search(r"font-size:\s*[\d.]+(pt|em|rem|%)", html.split("@media")[0])


def test_the_donate_button_is_bulletproof(example):
    html, _ = filled(example)
    page = Page(html)
    (button,) = page.all("a", "button")
    cell = page.elements[page.elements.index(button) - 1]
    assert cell["tag"] == "td"
    assert cell["attrs"].get("bgcolor") == "#b3261e"  # Outlook paints the cell, not the link
    assert "mso-padding-alt:10px 18px" in cell["attrs"]["style"].replace(": ", ":")  # and pads it
    assert "padding:10px 18px" in button["attrs"]["style"]


def test_every_link_is_absolute_https(example):
    html, text = filled(example)
    page = Page(html)
    hrefs = [a["attrs"].get("href") or "" for a in page.all("a")]
    assert len(hrefs) >= 3 * 10 + 3
    assert all(h.startswith("https://") for h in hrefs), [h for h in hrefs if not h.startswith("https://")]
    srcs = [e["attrs"]["src"] for e in page.elements if "src" in e["attrs"]]
    assert all(s.startswith("https://") for s in srcs)
    assert not re.search(r"""(href|src)=["'](?!https://)""", html)
    assert all(u.startswith("https://") for u in re.findall(r"\b[a-z]+://\S+", text))


def test_each_story_is_ranked_linked_pictured_and_sourced(example):
    html, text = filled(example)
    page = Page(html)
    stories = example.issue.ranked
    assert [p["text"] for p in page.all("p", "rank")] == [f"No. {n}" for n in range(1, 11)]
    assert [h["text"] for h in page.all("h2", "headline")] == [s.headline for s in stories]
    assert [headline_link(page, i) for i in range(10)] == [s.url for s in stories]
    mores = [a for a in page.all("a") if a["text"].startswith("Read more")]
    assert [(a["text"], a["attrs"]["href"]) for a in mores] == [
        (f"Read more at {s.source} \u2192", s.url) for s in stories]
    captions = [p["text"] for p in page.all("p", "caption")]
    assert captions == [f"{s.image.caption} {s.image.credit}" for s in stories if s.image]
    assert example.issue.date.strftime("%A, %B") in page.all("p", "masthead-date")[0]["text"]
    sponsor = example.issue.sponsor
    assert sponsor is not None
    assert sponsor.url in [a["attrs"]["href"] for a in page.all("a")]
    for s in stories:
        assert f"Read more at {s.source}: {s.url}" in text


def test_donate_link_only_when_set(example):
    html, text = filled(example)
    assert [a["attrs"]["href"] for a in Page(html).all("a") if a["attrs"]["href"] == DONATE]
    assert f"Donate to The Top Ten: {DONATE}" in text
    without = render_issue(load_issue(EXAMPLE), settings(donate_url=None))
    html, text = parts(build(without, settings(donate_url=None)))
    assert "donate" not in html.lower() and "donate" not in text.lower()
    assert not Page(html).all("a", "button")


def test_unsubscribe_link_in_html_text_and_header(example):
    message = build(example, settings(), "zoe@example.org", "Zoë")
    html, text = parts(message)
    header = str(message["List-Unsubscribe"])
    match = re.fullmatch(r"<(https://example\.org/unsubscribe/([A-Za-z0-9_.-]+))>", header)
    assert match, header
    link, token = match.groups()
    assert read_token(SECRET, token) == "zoe@example.org"
    footer_links = [a for a in Page(html).all("a") if a["text"] == "Unsubscribe"]
    assert [a["attrs"]["href"] for a in footer_links] == [link]
    assert f"Unsubscribe with one click: {link}" in text
    assert "zoe@example.org subscribed to The Top Ten" in html
    assert "Good morning, Zoë." in html and "Good morning, Zoë." in text
    assert "mailerslot" not in html and "mailerslot" not in text


# -- mailer preview ---------------------------------------------------------------------------


def preview(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["preview", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_FROM", "The Top Ten <news@example.org>")
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    monkeypatch.setenv("MAILER_UNSUBSCRIBE_URL", UNSUBSCRIBE)
    monkeypatch.setenv("MAILER_DONATE_URL", DONATE)


def test_preview_writes_what_a_subscriber_gets(tmp_path, capsys, configured):
    out = tmp_path / "pv"
    code, lines, err = preview(capsys, str(EXAMPLE), "--out", str(out))
    assert code == 0
    assert "Traceback" not in err
    assert lines == [str(out / "2026-11-24.html"), str(out / "2026-11-24.txt"), str(out / "2026-11-24.eml")]
    message = email.message_from_bytes((out / "2026-11-24.eml").read_bytes(), policy=email.policy.default)
    html, text = raw_parts(message)  # type: ignore[arg-type]
    assert (out / "2026-11-24.html").read_bytes().decode("utf-8") == html
    assert (out / "2026-11-24.txt").read_bytes().decode("utf-8") == text
    assert message["To"] == "reader@example.org"
    assert message["Subject"] == load_issue(EXAMPLE).subject
    assert "reader@example.org subscribed" in html
    assert len(html.encode()) < 102 * 1024


def test_preview_as_a_subscriber(tmp_path, capsys, configured):
    out = tmp_path / "pv"
    code, lines, _ = preview(capsys, "2026-11-24", "--out", str(out), "--as", "ann@example.org",
                             "--name", "Ann", "--env-file", str(write_env(tmp_path)))
    assert code == 0 and len(lines) == 3
    message = email.message_from_bytes((out / "2026-11-24.eml").read_bytes(), policy=email.policy.default)
    assert message["To"] == "Ann <ann@example.org>"
    html = (out / "2026-11-24.html").read_text(encoding="utf-8")
    text = (out / "2026-11-24.txt").read_text(encoding="utf-8")
    assert "Good morning, Ann." in html and "Good morning, Ann." in text
    assert "ann@example.org subscribed" in html and "reader@example.org" not in html
    token = re.search(r"https://example\.org/unsubscribe/([A-Za-z0-9_.-]+)", text)
    assert token and read_token(SECRET, token.group(1)) == "ann@example.org"


def write_env(tmp_path: Path) -> Path:
    """An env file naming the issues folder, so that a date resolves to the example."""
    env = tmp_path / "preview.env"
    env.write_text(f"MAILER_ISSUES_DIR={EXAMPLE.parent}\n", encoding="utf-8")
    return env


def test_preview_with_nothing_configured_says_so(tmp_path, capsys):
    code, lines, _ = preview(capsys, str(EXAMPLE), "--out", str(tmp_path / "pv"))
    assert code == 0
    assert lines[3:] == [f"note: MAILER_{name} is not set; the preview uses a placeholder"
                         for name in ("FROM", "SECRET", "UNSUBSCRIBE_URL")]


def test_preview_of_a_bad_address_is_refused(tmp_path, capsys, configured):
    code, lines, err = preview(capsys, str(EXAMPLE), "--out", str(tmp_path / "pv"), "--as", "not an address")
    assert code == 2 and lines == []
    assert not (tmp_path / "pv").exists()
    assert err == "mailer preview: --as not an address: An email address must have an @-sign.\n"


def warnings_of(capsys: pytest.CaptureFixture[str], tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = tmp_path / "issues" / "2026-11-24.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    code, lines, _ = preview(capsys, str(path), "--out", str(tmp_path / "pv"))
    assert code == 0
    assert lines[:3] == [str(tmp_path / "pv" / f"2026-11-24.{s}") for s in ("html", "txt", "eml")]
    return [line for line in lines if line.startswith("warning: ")]


def test_the_example_has_no_warnings(tmp_path, capsys, configured):
    assert warnings_of(capsys, tmp_path, example_data()) == []


def test_warning_fewer_than_ten_stories(tmp_path, capsys, configured):
    data = example_data()
    data["stories"] = data["stories"][:9]
    assert warnings_of(capsys, tmp_path, data) == ["warning: only 9 stories (a full issue has 10)"]


def test_warning_repeated_link(tmp_path, capsys, configured):
    data = example_data()
    data["stories"][4]["url"] = data["stories"][1]["url"] + "/"
    assert warnings_of(capsys, tmp_path, data) == [
        f"warning: story 5 links to the same page as story 2: {data['stories'][4]['url']}"]


@pytest.mark.parametrize("url", ["https://news.example.org", "https://news.example.org/"])
def test_warning_link_without_a_path(tmp_path, capsys, configured, url):
    data = example_data()
    data["stories"][6]["url"] = url
    assert warnings_of(capsys, tmp_path, data) == [
        f"warning: story 7 links to a site's front page, not a story: {url}"]


def test_warning_over_gmail_clipping_size(tmp_path, capsys, configured):
    data = example_data()
    for s in data["stories"]:
        s["summary"] = "\n\n".join(["A long paragraph of the story, for size. " * 25] * 11)
    warnings = warnings_of(capsys, tmp_path, data)
    assert len(warnings) == 1
    assert re.fullmatch(r"warning: the HTML part is (\d+) KB, over 102 KB: Gmail will clip it", warnings[0])
    size = int(re.findall(r"\d+", warnings[0])[0])
    html = (tmp_path / "pv" / "2026-11-24.html").read_bytes()
    assert abs(size - len(html) / 1024) < 2


def test_no_size_warning_just_under_the_limit(tmp_path, capsys, configured):
    data = example_data()
    for s in data["stories"]:
        s["summary"] = "\n\n".join(["A long paragraph of the story, for size. " * 25] * 6)
    assert warnings_of(capsys, tmp_path, data) == []
    assert 60 * 1024 < len((tmp_path / "pv" / "2026-11-24.html").read_bytes()) < 102 * 1024
