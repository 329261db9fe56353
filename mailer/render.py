"""Rendering: Jinja2 templates and premailer, run once per issue.

The per-recipient values (greeting, address, unsubscribe link) are rendered as slot markers,
so that the costly part (templating and CSS inlining) runs once for the whole list and each
recipient only costs a string join.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import escape

from mailer.config import Settings
from mailer.errors import ConfigError, InputError
from mailer.issue import Issue

if TYPE_CHECKING:
    from premailer import Premailer

SLOTS = ("greeting", "email", "unsubscribe_url")
DEFAULT_LIST_NAME = "The Top Ten"

#: How many times premailer has run in this process; a send runs it once per issue.
inline_runs = 0


def templates_dir(setting: Path | None = None) -> Path:
    """`MAILER_TEMPLATES_DIR`, else `templates/` in the working directory when there is one,
    else the templates installed with the package."""
    if setting is not None:
        if not setting.is_dir():
            raise ConfigError(f"MAILER_TEMPLATES_DIR: no such folder: {setting}")
        return setting
    local = Path("templates")
    if (local / "email.html.j2").is_file():
        return local
    return Path(str(resources.files("mailer.templates")))


@dataclass(frozen=True)
class Personalisable:
    """A rendered body cut at its slots: `parts` alternates text and slot names."""

    parts: tuple[str, ...]
    escape_values: bool

    def fill(self, values: Mapping[str, str]) -> str:
        out = list(self.parts)
        for i in range(1, len(out), 2):
            value = values[out[i]]
            out[i] = str(escape(value)) if self.escape_values else value
        return "".join(out)

    @property
    def static_size(self) -> int:
        return sum(len(p.encode()) for p in self.parts[0::2])


@dataclass(frozen=True)
class RenderedIssue:
    issue: Issue
    html: Personalisable
    text: Personalisable


def greeting(name: str) -> str:
    return f"Good morning, {name}." if name else "Good morning."


def settings_context(settings: Settings) -> dict[str, str | None]:
    """What the templates see of the settings (the rendered issue kept between runs is keyed
    on it)."""
    display_name = parseaddr(settings.from_ or "")[0]
    return {"list_name": display_name or DEFAULT_LIST_NAME, "donate_url": settings.donate_url}


def render_issue(issue: Issue, settings: Settings, templates: Path | None = None) -> RenderedIssue:
    """Render both parts of the email with slot markers, and inline the HTML's CSS once."""
    global inline_runs
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

    nonce = secrets.token_hex(6)
    markers = {slot: f"mailerslot-{slot.replace('_', '-')}-{nonce}" for slot in SLOTS}
    env = Environment(
        loader=FileSystemLoader(templates or templates_dir(settings.templates_dir)),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    context = {
        "issue": issue,
        "stories": issue.ranked,
        **settings_context(settings),
        "date_long": f"{issue.date:%A, %B} {issue.date.day}, {issue.date.year}",
        **markers,
    }
    try:
        html = env.get_template("email.html.j2").render(context)
        text = env.get_template("email.txt.j2").render(context)
    except TemplateError as exc:
        raise InputError(f"templates: {exc}") from None
    html = inline_css(html)
    inline_runs += 1
    return RenderedIssue(
        issue=issue,
        html=_cut(html, markers, escape_values=True),
        text=_cut(text, markers, escape_values=False),
    )


# premailer with the network off: every style a client needs goes inline. premailer would copy a
# CSS `width`/`height` over the template's own attributes (turning `<img width="552"
# height="311">` into `width="100%" height="auto"`, and the 600px container into 100%); Outlook
# reads only the attributes, so the template's must stay.
PREMAILER_OPTIONS: dict[str, Any] = {
    "allow_network": False,
    "disable_basic_attributes": ["width", "height"],
    "disable_validation": True,
    "strip_important": False,
    "cssutils_logging_level": logging.CRITICAL,
    "disable_link_rewrites": True,
}


def inline_css(html: str) -> str:
    """The HTML with its CSS inlined by premailer (`PREMAILER_OPTIONS`)."""
    return _premailer()(html, **PREMAILER_OPTIONS).transform()


def _premailer() -> type[Premailer]:
    """premailer, without what the mailer never needs of it: cssutils checks every inline style
    against its CSS profiles, only to log what it finds (a log premailer's logging level hides),
    compiling the profiles' regular expressions to do so (40 ms, a sixth of the CPU of
    rendering an issue). With the profiles removed there is nothing to compile, and the HTML is
    the same to the byte (tests/test_render.py)."""
    import cssutils
    from premailer import Premailer  # with cssutils and requests: imported only to render

    cssutils.profile.removeProfile(all=True)
    return Premailer


def _cut(body: str, markers: Mapping[str, str], escape_values: bool) -> Personalisable:
    by_marker = {marker: slot for slot, marker in markers.items()}
    pattern = re.compile("|".join(re.escape(m) for m in markers.values()))
    parts: list[str] = []
    last = 0
    for match in pattern.finditer(body):
        parts += [body[last : match.start()], by_marker[match.group()]]
        last = match.end()
    parts.append(body[last:])
    return Personalisable(tuple(parts), escape_values)
