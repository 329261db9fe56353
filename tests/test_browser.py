"""The preview in a real browser: headless Chromium at 600 and 375 px wide.

Screenshots are kept under artifacts/ at the project root (git-ignored) for a person to look at;
the assertions measure the page with a small script injected into a copy of the preview, read
back with --dump-dom. Headless Chromium will not make a window narrower than 500 px, so the
measured copy runs in an iframe of the exact width, which is also what a phone's media query
sees. Chromium never touches the network: every host name resolves to nothing, and the pictures
are replaced by a local placeholder of the real size (or left broken, to see that their alt text
does not push the layout wider either).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mailer.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "issues" / "2026-11-24.json"
ARTIFACTS = ROOT / "artifacts"
# Generous: the machine has two cores and other test runs may share them.
TIMEOUT = 60

MEASURE = """
<script>
/* On load, so the pictures have arrived (or failed) before they are measured; the host page's
   own load, after which Chromium dumps the DOM, waits for this frame's. */
/* Every piece of text a reader sees (an element's own text, or a broken picture's alt text):
   its size, its colour, and the colour it is drawn on (the first opaque background above it). */
function texts() {
  var found = [];
  document.querySelectorAll("body *").forEach(function (el) {
    if (el.closest(".preheader") || el.getClientRects().length === 0) return;
    var own = "";
    el.childNodes.forEach(function (n) { if (n.nodeType === 3) own += n.textContent; });
    if (el.tagName === "IMG" && !el.naturalWidth) own = el.alt;
    if (!own.trim()) return;
    var style = getComputedStyle(el), bg = "rgb(255, 255, 255)";
    for (var up = el; up; up = up.parentElement) {
      var b = getComputedStyle(up).backgroundColor;
      if (b !== "transparent" && !/, 0\\)$/.test(b)) { bg = b; break; }
    }
    found.push({what: el.tagName + "." + el.className, text: own.trim().slice(0, 40),
                size: parseFloat(style.fontSize), color: style.color, background: bg});
  });
  return found;
}

window.addEventListener("load", function () {
  var root = document.documentElement;
  var widest = 0, culprit = "";
  document.querySelectorAll("body *").forEach(function (el) {
    var box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) return;  /* hidden, like the preheader */
    if (box.right > widest) { widest = box.right; culprit = el.tagName + "." + el.className; }
  });
  var fonts = [];
  document.querySelectorAll("p.text").forEach(function (el) {
    fonts.push(parseFloat(getComputedStyle(el).fontSize));
  });
  /* The host page around the iframe (same origin: srcdoc) collects the result. */
  var out = parent.document.getElementById("measured");
  out.textContent = JSON.stringify({
    viewport: root.clientWidth,
    scrollWidth: root.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    widest: widest,
    culprit: culprit,
    height: Math.ceil(document.body.getBoundingClientRect().bottom),
    container: document.querySelector("table.container").getBoundingClientRect().width,
    photos: Array.prototype.map.call(document.querySelectorAll("img.photo"), function (img) {
      return img.getBoundingClientRect().width;
    }),
    loaded: Array.prototype.map.call(document.querySelectorAll("img.photo"), function (img) {
      return img.naturalWidth;
    }),
    smallestText: Math.min.apply(null, fonts),
    photoHeights: Array.prototype.map.call(document.querySelectorAll("img.photo"), function (img) {
      return img.getBoundingClientRect().height;
    }),
    texts: texts()
  });
});
</script>
"""

PLACEHOLDER = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="1104" height="622" viewBox="0 0 1104 622">'
    '<rect width="1104" height="622" fill="#b8b2a6"/>'
    '<path d="M0 622 L380 260 L620 470 L820 330 L1104 622 Z" fill="#8c8577"/></svg>'
)


# A 42-letter German compound, the kind that widened the page to 652 px at 375.
LONG_WORD = "Donaudampfschifffahrtsgesellschaftskapitän"


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "headless Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.fixture(scope="module")
def preview_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mailer preview` of the example issue, as an editor would make it."""
    return make_preview(tmp_path_factory.mktemp("preview"), EXAMPLE)


@pytest.fixture(scope="module")
def long_word_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with one long word in a headline, a summary, a caption and a source."""
    folder = tmp_path_factory.mktemp("long-word")
    data = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    story = data["stories"][0]
    story["headline"] = f"{LONG_WORD} sails again"
    story["summary"] = f"The {LONG_WORD} said so."
    story["image"]["caption"] = f"The {LONG_WORD}."
    story["source"] = LONG_WORD
    issue = folder / "2026-11-24.json"
    issue.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return make_preview(folder, issue)


def make_preview(folder: Path, issue: Path) -> Path:
    env = folder / "preview.env"
    env.write_text(
        "MAILER_FROM=The Top Ten <news@example.org>\n"
        "MAILER_SECRET=browser-test-secret\n"
        "MAILER_UNSUBSCRIBE_URL=https://example.org/unsubscribe/{token}\n"
        "MAILER_DONATE_URL=https://example.org/donate\n",
        encoding="utf-8",
    )
    out = folder / "out"
    assert main(["preview", str(issue), "--out", str(out), "--env-file", str(env),
                 "--as", "ann@example.org", "--name", "Ann"]) == 0
    (out / "placeholder.svg").write_text(PLACEHOLDER, encoding="utf-8")
    return out


def page_copy(preview_dir: Path, name: str, *, pictures: bool, measure: bool) -> Path:
    text = (preview_dir / "2026-11-24.html").read_text(encoding="utf-8")
    assert text.count('src="https://images.example.org/') == 10
    if pictures:
        text = re.sub(r'src="https://images\.example\.org/[^"]+"', 'src="placeholder.svg"', text)
    if measure:
        text = text.replace("</body>", MEASURE + "</body>")
    path = preview_dir / name
    path.write_text(text, encoding="utf-8")
    return path


def run_chromium(chromium: str, page: Path, width: int, height: int, tmp_path: Path, *extra: str) -> str:
    profile = tmp_path / f"profile-{width}"
    profile.mkdir(exist_ok=True)
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--hide-scrollbars", "--mute-audio",
        # nothing leaves the machine: every host name fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
        f"--user-data-dir={profile}", f"--window-size={width},{height}",
        *extra, page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def measure(chromium: str, page: Path, width: int, tmp_path: Path) -> dict[str, Any]:
    """Load `page` in an iframe exactly `width` px wide and read back what its script found."""
    host = page.with_name(page.stem + f"-in-{width}.html")
    host.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">'
        '<pre id="measured"></pre>'
        f'<iframe style="border:0;display:block;width:{width}px;height:30000px" '
        f'srcdoc="{html.escape(page.read_text(encoding="utf-8"), quote=True)}"></iframe>'
        "</body></html>",
        encoding="utf-8",
    )
    dom = run_chromium(chromium, host, max(width, 800) + 40, 1000, tmp_path, "--dump-dom")
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run: " + dom[-500:]
    return dict(json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")))


@pytest.mark.parametrize("width", [375, 600])
def test_screenshot(chromium, preview_dir, tmp_path, width):
    page = page_copy(preview_dir, f"screenshot-{width}.html", pictures=True, measure=False)
    height = int(measure(chromium, page_copy(preview_dir, "tall.html", pictures=True, measure=True),
                         width, tmp_path)["height"])
    assert 3000 < height < 30000
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"preview-{width}px.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, page, width, height, tmp_path, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == width  # the PNG's own width, from its IHDR chunk
    assert len(data) > 20_000  # a page with text on it, not a blank


@pytest.mark.parametrize("pictures", [True, False], ids=["pictures", "broken-pictures"])
def test_nothing_overflows_at_375(chromium, preview_dir, tmp_path, pictures):
    page = page_copy(preview_dir, f"measure-{pictures}.html", pictures=pictures, measure=True)
    got = measure(chromium, page, 375, tmp_path)
    assert got["viewport"] == 375
    assert got["scrollWidth"] <= 375, got
    assert got["bodyScrollWidth"] <= 375, got
    assert got["widest"] <= 375.5, f"{got['culprit']} reaches {got['widest']}px"
    assert got["container"] == 375
    # the placeholders loaded from disk; the real pictures were never fetched
    assert got["loaded"] == ([1104] * 10 if pictures else [0] * 10)
    if pictures:
        # a picture fills the column, less the mobile padding, and keeps its proportions
        assert all(343 - 1 <= w <= 343 + 1 for w in got["photos"]), got["photos"]
    assert got["smallestText"] >= 16


def test_600_px_and_wider_is_a_600_px_column(chromium, preview_dir, tmp_path):
    page = page_copy(preview_dir, "measure-wide.html", pictures=True, measure=True)
    at_600 = measure(chromium, page, 600, tmp_path)
    assert at_600["scrollWidth"] <= 600 and at_600["widest"] <= 600.5, at_600
    assert at_600["container"] == 600
    assert all(w == 552 for w in at_600["photos"]), at_600["photos"]
    at_900 = measure(chromium, page, 900, tmp_path)
    assert at_900["container"] == 600
    assert all(w == 552 for w in at_900["photos"])


def test_a_long_word_breaks_instead_of_widening_the_page_at_375(chromium, long_word_dir, tmp_path):
    page = page_copy(long_word_dir, "long-word.html", pictures=True, measure=True)
    assert LONG_WORD in page.read_text(encoding="utf-8")
    got = measure(chromium, page, 375, tmp_path)
    assert got["scrollWidth"] <= 375, got
    assert got["widest"] <= 375.5, f"{got['culprit']} reaches {got['widest']}px"
    assert got["container"] == 375


def luminance(css: str) -> float:
    red, green, blue = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_helper_knows_the_wcag_figures():
    assert round(contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)"), 1) == 21.0
    assert round(contrast("rgb(138, 138, 138)", "rgb(255, 255, 255)"), 2) == 3.45  # the old credit


@pytest.mark.parametrize("pictures", [True, False], ids=["pictures", "blocked-pictures"])
def test_every_text_meets_wcag_aa_contrast_and_is_10_px_or_more(chromium, preview_dir, tmp_path, pictures):
    """From the rendered page: each text's colour against what it is drawn on, at 4.5:1 (WCAG
    AA for normal text), and no text under 10 px outside the hidden preheader."""
    page = page_copy(preview_dir, f"contrast-{pictures}.html", pictures=pictures, measure=True)
    texts = measure(chromium, page, 600, tmp_path)["texts"]
    kinds = {t["what"] for t in texts}
    for expected in ("SPAN.credit", "P.sponsor-label", "P.caption", "A.button", "P.footer-text"):
        assert expected in kinds, kinds
    if not pictures:
        assert "IMG.photo" in kinds  # a blocked picture's alt text is text too
    ratios = [(t, contrast(t["color"], t["background"])) for t in texts]
    poor = [(t["what"], t["text"], t["color"], t["background"], round(r, 2)) for t, r in ratios if r < 4.5]
    assert not poor, poor
    small = [(t["what"], t["text"], t["size"]) for t in texts if t["size"] < 10]
    assert not small, small


def test_a_blocked_picture_collapses_to_its_alt_text(chromium, preview_dir, tmp_path):
    page = page_copy(preview_dir, "blocked.html", pictures=False, measure=True)
    got = measure(chromium, page, 375, tmp_path)
    assert got["loaded"] == [0] * 10
    # a line or three of 13 px alt text, not an empty 311 px (or 193 px) box each
    assert all(0 < h <= 60 for h in got["photoHeights"]), got["photoHeights"]
    with_pictures = measure(chromium, page_copy(preview_dir, "shown.html", pictures=True, measure=True),
                            375, tmp_path)
    assert all(190 <= h <= 196 for h in with_pictures["photoHeights"]), with_pictures["photoHeights"]
