"""Group commit: the final-dot records of connections waiting at the same moment go in one
SQLite transaction, and each call returns only once its own record is durable."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mailer.ledger import IN_FLIGHT, Ledger
from mailer.subscribers import Recipient

ISSUE = "2026-11-24"


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite3", busy_timeout=0.2)
    ledger.plan(ISSUE, [Recipient(n, f"r{n}@example.org") for n in range(8)])
    yield ledger
    ledger.close()


def statuses(path: Path) -> dict[str, str]:
    """As another process sees them: only what was committed."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, status FROM deliveries WHERE issue=?", (ISSUE,)).fetchall())
    finally:
        db.close()


def dots_at_once(ledger: Ledger, count: int) -> dict[int, object]:
    """`count` connections each marking a dot (r4.. r7) with its previous success (r0.. r3),
    all waiting while the ledger's lock is held, so that they meet in one commit."""
    results: dict[int, object] = {}

    def connection(n: int) -> None:
        try:
            results[n] = ledger.mark_dot(
                ISSUE, f"r{n + 4}@example.org", 1, sent=(f"r{n}@example.org", 1, "250 ok")
            )
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(count)]
    with ledger.lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(ledger._dots) < count:  # every connection is waiting for the commit
            assert time.monotonic() < deadline, "the connections never queued their records"
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    return results


def test_waiting_dots_share_one_commit_and_each_is_answered_for_itself(ledger):
    ledger.suppress("r7@example.org", "unsubscribed")  # withheld, in the middle of the group
    statements: list[str] = []
    ledger.db.set_trace_callback(statements.append)
    results = dots_at_once(ledger, 4)
    ledger.db.set_trace_callback(None)
    assert results == {0: True, 1: True, 2: True, 3: False}
    assert sum(s.startswith("BEGIN") for s in statements) == 1  # one transaction for four dots
    rows = statuses(ledger.path)
    assert [rows[f"r{n}@example.org"] for n in range(4)] == ["sent"] * 4
    assert [rows[f"r{n}@example.org"] for n in range(4, 8)] == [IN_FLIGHT] * 3 + ["suppressed"]


def test_a_failed_group_commit_lets_no_dot_go_out(ledger):
    other = sqlite3.connect(ledger.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock past the busy timeout
    try:
        results = dots_at_once(ledger, 3)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(results) == [0, 1, 2]
    assert all(isinstance(r, Exception) for r in results.values()), results
    rows = statuses(ledger.path)
    assert all(status == "pending" for status in rows.values())  # nothing recorded: no dot may go
    assert ledger.mark_dot(ISSUE, "r4@example.org", 1) is True  # and the ledger goes on after
