"""A newcomer's first hour: the example settings, a test copy to a new folder, --open without a
browser, validate's warnings, and a test send refused before it says it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE_ISSUE

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example files as a checkout has them, and `cp .env.example .env` done."""
    shutil.copytree(ROOT / "issues", tmp_path / "issues")
    shutil.copy(ROOT / "subscribers.csv.example", tmp_path)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return tmp_path


def test_a_dry_run_works_right_after_copying_the_example_settings(project):
    done = run(["send", "2026-11-24", "--dry-run"], project)
    assert done.returncode == 0, done.stderr
    assert "dry run of 2026-11-24: 5 to send, 3 skipped" in done.stdout


def test_a_test_copy_into_a_missing_outbox_folder_creates_it_at_once(project):
    started = time.monotonic()
    done = run(["send", "2026-11-24", "--to", "me@example.org", "--outbox", "new/folder/"], project)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (project / "new" / "folder").glob("*.eml")] == ["me@example.org.eml"]
    assert "attempt 1 failed" not in done.stderr
    assert time.monotonic() - started < 60  # no retries: they took 16 s, this takes one


def test_an_outbox_that_cannot_be_created_is_one_line_exit_2(project):
    (project / "taken").write_text("a file, not a folder", encoding="utf-8")
    done = run(["send", "2026-11-24", "--to", "me@example.org", "--outbox", "taken/sub"], project)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mailer send: --outbox taken/sub: cannot create")
    assert "Traceback" not in done.stderr


def test_a_test_send_refused_by_its_settings_does_not_say_it_started(project):
    done = run(["send", "2026-11-24", "--to", "me@example.org"], project, MAILER_SMTP_HOST="127.0.0.1")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "mailer send: MAILER_SECRET: still the example's placeholder, which anyone can read; set a long "
        "random string before sending for real"
    ]


def test_open_without_a_browser_says_so(project):
    done = run(["preview", "2026-11-24", "--open"], project, BROWSER="/nonexistent/browser")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "note: no web browser found to open it; open preview/2026-11-24.html yourself"
    )


def test_open_with_a_browser_opens_the_html(project):
    browser = project / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {project / "opened.txt"}\n', encoding="utf-8")
    browser.chmod(0o755)
    done = run(["preview", "2026-11-24", "--open"], project, BROWSER=str(browser))
    assert done.returncode == 0, done.stderr
    assert "no web browser" not in done.stdout
    opened = (project / "opened.txt").read_text(encoding="utf-8").strip()
    assert opened == (project / "preview" / "2026-11-24.html").as_uri()


def test_validate_prints_the_content_warnings_preview_prints(project):
    data = json.loads(EXAMPLE_ISSUE.read_text(encoding="utf-8"))
    data["stories"] = data["stories"][:9]
    data["stories"][8]["url"] = data["stories"][0]["url"]
    (project / "issues" / "2026-11-24.json").write_text(json.dumps(data), encoding="utf-8")
    validated = run(["validate", "2026-11-24"], project)
    previewed = run(["preview", "2026-11-24"], project)
    assert validated.returncode == previewed.returncode == 0, validated.stderr + previewed.stderr
    warnings = [line for line in validated.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [line for line in previewed.stdout.splitlines() if line.startswith("warning: ")]
    assert "warning: only 9 stories (a full issue has 10)" in warnings
    assert any("story 9 links to the same page as story 1" in w for w in warnings)
