"""The rendered issue kept in the state directory, so that a re-run, a replay or a resumed send
of an unchanged issue skips Jinja2 and premailer, and their imports: most of a run's start-up.

An entry is used only when it was made from the same inputs, and is intact: its key is a hash
of everything the rendering reads (the issue as validated, every file in the templates folder,
the settings the templates see, and the code that renders), and its body carries a checksum.
Anything else, a missing, stale, unreadable or corrupt entry, means rendering again; an entry
that cannot be written costs the next run its rendering, never this run its send. An entry is
written once a run has ended, so that it never takes the room on disk the ledger needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

from mailer import __version__
from mailer.config import Settings
from mailer.issue import Issue
from mailer.render import SLOTS, Personalisable, RenderedIssue, settings_context, templates_dir

log = logging.getLogger("mailer")

FOLDER = "rendered"
KEEP = 14  # issues whose rendering stays: a replay of an older one renders it again
FORMAT = 1  # of the entry; a new one makes every older entry stale
# What the HTML goes through besides the mailer's own code: a new version of any may render it
# differently.
RENDERERS = ("jinja2", "markupsafe", "premailer", "cssutils", "lxml", "cssselect")
# The mailer's own code that shapes the rendering: the templates call the issue model's methods.
_RENDER_CODE = ("render.py", "issue.py")


def entry_path(state_dir: Path, issue: Issue) -> Path:
    return state_dir / FOLDER / f"{issue.date.isoformat()}.json"


def inputs_key(issue: Issue, settings: Settings) -> str | None:
    """A hash of everything the rendering of `issue` reads; None when one of those files cannot
    be read (the rendering says so if it needs that one)."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("format", str(FORMAT).encode())
    add("mailer", __version__.encode())
    for name in RENDERERS:
        add(name, _version(name).encode())
    try:
        for name in _RENDER_CODE:
            add(name, Path(__file__).with_name(name).read_bytes())
        folder = templates_dir(settings.templates_dir)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            add(f"template {path.relative_to(folder).as_posix()}", path.read_bytes())
    except OSError as exc:
        log.debug("the rendered issue is not kept: %s", exc)
        return None
    add("settings", json.dumps(settings_context(settings), sort_keys=True).encode())
    add("issue", issue.model_dump_json().encode())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "-"


def load(state_dir: Path, issue: Issue, key: str) -> RenderedIssue | None:
    """The rendering kept for `key`, or None: absent, made from other inputs, or damaged."""
    try:
        entry = json.loads(entry_path(state_dir, issue).read_bytes())
    except (OSError, ValueError, RecursionError):  # missing or unreadable; not JSON, not UTF-8
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    html, text = _cut(entry.get("html")), _cut(entry.get("text"))
    if html is None or text is None or entry.get("checksum") != _checksum(list(html), list(text)):
        log.debug("the rendered issue kept in %s is damaged: rendering again", state_dir)
        return None
    return RenderedIssue(issue, Personalisable(html, True), Personalisable(text, False))


def store(state_dir: Path, rendered: RenderedIssue, key: str) -> None:
    """Keep the rendering for the next run, replacing the file whole, and only the latest
    `KEEP` issues' renderings; a failure is only logged."""
    html, text = list(rendered.html.parts), list(rendered.text.parts)
    entry = {"key": key, "html": html, "text": text, "checksum": _checksum(html, text)}
    target = entry_path(state_dir, rendered.issue)
    temporary: Path | None = None
    try:
        target.parent.mkdir(exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        temporary = Path(name)
        with open(handle, "w", encoding="utf-8") as out:
            json.dump(entry, out, ensure_ascii=False)
        os.replace(temporary, target)
        for older in sorted(target.parent.glob("????-??-??.json"))[:-KEEP]:  # by date
            older.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        log.warning("could not keep the rendered issue in %s (%s); the next run renders it again",
                    target.parent, getattr(exc, "strerror", None) or exc)
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _checksum(html: list[str], text: list[str]) -> str:
    return hashlib.sha256(json.dumps([html, text], ensure_ascii=False).encode()).hexdigest()


def _cut(parts: object) -> tuple[str, ...] | None:
    """Text and slot names in turn, as `Personalisable` holds them; None if not that."""
    if not isinstance(parts, list) or len(parts) % 2 == 0 or not all(isinstance(p, str) for p in parts):
        return None
    if not all(p in SLOTS for p in parts[1::2]):
        return None
    return tuple(parts)
