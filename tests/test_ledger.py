"""The ledger's schema version (SQLite's user_version): older ledgers are migrated, newer ones
refused with the file left as it was. The ledgers are written by real sends; only the schema
version itself is set by hand."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import write_subscribers

from mailer import ledger as ledger_module
from mailer.cli import main
from mailer.errors import LedgerError
from mailer.ledger import SCHEMA_VERSION, Ledger


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, for before/after comparisons."""
    db = sqlite3.connect(path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


@pytest.fixture
def ledger_path(env) -> Path:
    return Path(env["MAILER_STATE_DIR"]) / "ledger.sqlite3"


@pytest.fixture
def sent(env, smtp, issue_file, tmp_path, capsys, ledger_path) -> Path:
    """A ledger of the current version, from a real send with one permanent failure."""
    write_subscribers(tmp_path / "subscribers.csv", 4)
    smtp.recorder.scripts = {"reader2@example.org": ["550"]}
    assert run(capsys, "send", str(issue_file))[0] == 1
    assert user_version(ledger_path) == SCHEMA_VERSION
    return ledger_path


# -- older ledgers ------------------------------------------------------------------------


def test_a_version_0_file_is_migrated_by_send(env, smtp, issue_file, tmp_path, capsys, ledger_path):
    ledger_path.parent.mkdir()
    ledger_path.touch()  # user_version 0, no tables
    assert user_version(ledger_path) == 0
    write_subscribers(tmp_path / "subscribers.csv", 3)
    assert run(capsys, "send", str(issue_file))[0] == 0
    assert user_version(ledger_path) == SCHEMA_VERSION
    assert sum(smtp.recorder.received().values()) == 3
    assert json.loads(run(capsys, "report", "2026-11-24", "--json")[1])["sent"] == 3


def test_report_on_a_version_0_file_says_nothing_was_sent(env, issue_file, capsys, ledger_path):
    ledger_path.parent.mkdir()
    ledger_path.touch()
    code, out, err = run(capsys, "report", str(issue_file))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "has never been sent" in err, err


V2 = [
    "ALTER TABLE deliveries ADD COLUMN note TEXT",
    "UPDATE deliveries SET note = 'migrated'",
]


def test_a_version_1_ledger_is_migrated_without_data_loss(
    sent, smtp, issue_file, capsys, monkeypatch
):
    """The mechanism, with a stand-in second migration: a ledger written by this version of the
    code keeps every row and its suppression list when the schema moves on."""
    before = dump(sent)
    report_before = json.loads(run(capsys, "report", "2026-11-24", "--json")[1])
    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*ledger_module.MIGRATIONS, V2])
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    # report is what an admin runs first after an upgrade: it migrates too, rather than misread.
    report_after = json.loads(run(capsys, "report", "2026-11-24", "--json")[1])
    assert user_version(sent) == SCHEMA_VERSION + 1
    assert report_after == report_before
    after = dump(sent)
    assert {t: len(rows) for t, rows in after.items()} == {t: len(rows) for t, rows in before.items()}
    assert [row[:-1] for row in after["deliveries"]] == before["deliveries"]
    assert {row[-1] for row in after["deliveries"]} == {"migrated"}
    assert after["suppressions"] == before["suppressions"]

    # And a re-run of the send on the migrated ledger resumes: nobody gets a second copy.
    assert run(capsys, "send", str(issue_file))[0] == 1
    assert set(smtp.recorder.received().values()) == {1}


def test_a_failed_migration_changes_nothing(sent, capsys, monkeypatch):
    before = dump(sent)
    broken = ["ALTER TABLE deliveries ADD COLUMN note TEXT", "THIS IS NOT SQL"]
    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*ledger_module.MIGRATIONS, broken])
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(LedgerError, match=f"from version {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}"):
        Ledger(sent)
    code, out, err = run(capsys, "report", "2026-11-24")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "nothing was changed" in err, err
    assert user_version(sent) == SCHEMA_VERSION
    assert dump(sent) == before  # the first statement was rolled back with the second


def test_a_version_5_ledger_keeps_its_bounces_under_a_later_unsubscribe(env, capsys, ledger_path):
    """Version 6 keeps a bounce beside an unsubscribe. A version 5 ledger (its schema made by
    the first five migrations, as version 5 of the mailer made it) is migrated with its
    suppression list whole; an unsubscribe over one of its bounces, lifted again, leaves the
    bounce."""
    ledger_path.parent.mkdir()
    db = sqlite3.connect(ledger_path)
    for step in ledger_module.MIGRATIONS[:5]:
        for statement in step:
            db.execute(statement)
    db.execute("INSERT INTO suppressions VALUES ('bob@example.org', 'bob@example.org', 'bounced', "
               "'2026-11-20: 5.1.1 no such user', '2026-11-20T06:00:00Z')")
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()

    assert run(capsys, "unsubscribe", "bob@example.org")[0] == 0
    assert user_version(ledger_path) == SCHEMA_VERSION
    code, out, _ = run(capsys, "suppressed")
    assert code == 0
    assert out.splitlines()[0].split("\t")[:2] == ["bob@example.org", "unsubscribed"]
    assert out.splitlines()[0].endswith("; bounced too: 2026-11-20: 5.1.1 no such user")

    ledger = Ledger(ledger_path)
    try:
        assert ledger.resubscribe("bob@example.org") is False  # still off the list: it bounced
        assert ledger.suppressed() == [
            ("bob@example.org", "bounced", "2026-11-20: 5.1.1 no such user", ledger.suppressed()[0][3])
        ]
    finally:
        ledger.close()


# -- newer ledgers ------------------------------------------------------------------------


def _make_newer(origin: str, path: Path, capsys: pytest.CaptureFixture[str], issue_file: Path) -> None:
    if origin == "real send":
        assert run(capsys, "send", str(issue_file))[0] == 0
    else:  # a file some later version wrote, still in SQLite's default (rollback) journal mode
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE deliveries_v99 (issue TEXT, key TEXT)")
        db.commit()
        db.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()


@pytest.mark.parametrize("origin", ["real send", "hand-made"])
@pytest.mark.parametrize(
    "argv",
    [
        ["report", "2026-11-24"],
        ["report", "2026-11-24", "--json"],
        ["send", "2026-11-24"],
        ["replay", "2026-11-24", "--in-doubt", "--permanent"],
        ["unsubscribe", "someone@example.org"],
        ["suppressed"],
        ["unsuppress", "someone@example.org"],
    ],
)
def test_a_newer_ledger_is_refused_and_left_unchanged(
    env, smtp, issue_file, tmp_path, capsys, ledger_path, origin, argv
):
    write_subscribers(tmp_path / "subscribers.csv", 2)
    _make_newer(origin, ledger_path, capsys, issue_file)
    received = sum(smtp.recorder.received().values())
    data, mtime = ledger_path.read_bytes(), ledger_path.stat().st_mtime_ns
    siblings = sorted(p.name for p in ledger_path.parent.iterdir())

    code, out, err = run(capsys, *argv)

    assert code == 2
    assert out == ""
    # One line, besides the log line a send or replay writes as it starts.
    log_line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ")
    errors = [line for line in err.splitlines() if not log_line.match(line)]
    assert len(errors) == 1, err
    assert f"ledger schema version {SCHEMA_VERSION + 1} is newer" in err
    assert f"({SCHEMA_VERSION})" in err
    assert ledger_path.read_bytes() == data
    assert ledger_path.stat().st_mtime_ns == mtime
    assert user_version(ledger_path) == SCHEMA_VERSION + 1
    # No journal left behind either (the lock file of send and replay is not the ledger's).
    assert sorted(p.name for p in ledger_path.parent.iterdir() if p.name != "send.lock") == [
        s for s in siblings if s != "send.lock"
    ]
    assert sum(smtp.recorder.received().values()) == received


def test_a_version_1_ledger_gains_the_work_list_index(tmp_path: Path) -> None:
    """Migrations 2 to 5 on a ledger written at version 1: rows kept, the work list read in
    list order through an index that leaves the status out (a status change moves no index
    entry), with no sort of its own."""
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path)
    for statement in ledger_module.MIGRATIONS[0]:
        db.execute(statement)
    db.execute(
        "INSERT INTO deliveries (issue, key, email, status, created_at, updated_at, row) "
        "VALUES ('2026-11-24', 'a@example.org', 'a@example.org', 'sent', 'x', 'x', 2)"
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.counts("2026-11-24")["sent"] == 1
        indexes = {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "deliveries_order" in indexes
        assert not indexes & {"deliveries_queue", "deliveries_status"}
        columns = [r[2] for r in ledger.db.execute("PRAGMA index_info(deliveries_order)")]
        assert "status" not in columns
        plan = ledger.db.execute(
            "EXPLAIN QUERY PLAN SELECT row FROM deliveries WHERE issue=? AND status='pending' "
            "AND (row, key) > (?, ?) ORDER BY row, key LIMIT 10", ("2026-11-24", -1, "")
        ).fetchall()
        assert "deliveries_order" in str(plan) and "TEMP B-TREE" not in str(plan)
    finally:
        ledger.close()
    assert user_version(path) == SCHEMA_VERSION
