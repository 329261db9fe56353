from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from relay import postfix  # noqa: F401  (the real Postfix relay fixture)
from smtpserver import SMTPServer, start_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ISSUE = ROOT / "issues" / "2026-11-24.json"


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MAILER_ variable inherited from whoever runs the tests, and no ./.env of theirs."""
    for key in list(os.environ):
        if key.startswith("MAILER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    """A plain SMTP server on loopback that records every message it accepts."""
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def issue_file(tmp_path: Path) -> Path:
    """A copy of the example issue, under its own date name."""
    target = tmp_path / "issues" / EXAMPLE_ISSUE.name
    target.parent.mkdir()
    shutil.copy(EXAMPLE_ISSUE, target)
    return target


@pytest.fixture
def issue_data() -> dict:
    return json.loads(EXAMPLE_ISSUE.read_text(encoding="utf-8"))


def write_subscribers(path: Path, count: int, domain: str = "example.org") -> Path:
    lines = ["email,name,status"]
    lines += [f"reader{n}@{domain},Reader {n},active" for n in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path, smtp: SMTPServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for a send to the test server, in the environment of this test (and children)."""
    values = {
        "MAILER_SMTP_HOST": "127.0.0.1",
        "MAILER_SMTP_PORT": str(smtp.port),
        "MAILER_SMTP_SECURITY": "none",
        "MAILER_SMTP_TIMEOUT": "5",
        "MAILER_SMTP_CONNECTIONS": "2",
        "MAILER_RETRY_BASE_SECONDS": "0.01",
        "MAILER_MAX_ATTEMPTS": "3",
        "MAILER_FROM": "The Top Ten <news@example.org>",
        "MAILER_SECRET": "test-secret-16ch",
        "MAILER_UNSUBSCRIBE_URL": "https://example.org/unsubscribe/{token}",
        "MAILER_STATE_DIR": str(tmp_path / "state"),
        "MAILER_ISSUES_DIR": str(tmp_path / "issues"),
        "MAILER_SUBSCRIBERS": str(tmp_path / "subscribers.csv"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return values


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """A subscriber list written exactly as given (CRLF line ends, as spreadsheets do)."""
    path.write_bytes(text.replace("\n", "\r\n").encode(encoding))
    return path


def ledger_rows(state_dir: Path, issue: str) -> dict[str, dict]:
    """Every ledger row of an issue, by lower-cased address, read straight from SQLite."""
    import sqlite3

    db = sqlite3.connect(state_dir / "ledger.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM deliveries WHERE issue=?", (issue,)).fetchall()
        return {r["key"]: dict(r) for r in rows}
    finally:
        db.close()


def issue_for_date(issue_file: Path, date: str) -> Path:
    """A copy of an issue file for another day, named after that day as the rules require."""
    data = json.loads(issue_file.read_text(encoding="utf-8"))
    data["date"] = date
    target = issue_file.with_name(f"{date}.json")
    target.write_text(json.dumps(data), encoding="utf-8")
    return target
