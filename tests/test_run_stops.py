"""The run stops cleanly, never hangs and never burns the list: outages, throttling, a block of
bad addresses at one domain, and an unexpected error on this machine."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import ledger_rows, write_csv, write_subscribers

from mailer.cli import main
from mailer.config import load_settings
from mailer.delivery import OUTAGE_STREAK, Delivery
from mailer.errors import RunStopped
from mailer.issue import load_issue
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.render import render_issue
from mailer.subscribers import read_subscribers
from mailer.transport import OutboxTransport

ISSUE = "2026-11-24"


def test_throttling_slows_the_run_instead_of_stopping_it(env, smtp, issue_file, tmp_path, monkeypatch):
    """More rate-limit replies in a row than an outage takes: the run slows down and ends
    with everyone delivered once, rather than taking the refusals for an outage."""
    monkeypatch.setenv("MAILER_MAX_ATTEMPTS", "4")
    count = OUTAGE_STREAK + 5
    write_subscribers(tmp_path / "subscribers.csv", count)
    throttled = {f"reader{n}@example.org" for n in range(OUTAGE_STREAK + 2)}
    smtp.recorder.default = lambda rcpt, attempt: "452 rate" if rcpt in throttled and attempt == 1 else "ok"
    assert main(["send", str(issue_file)]) == 0
    assert len(smtp.recorder.received()) == count
    assert set(smtp.recorder.received().values()) == {1}


def test_a_single_domain_list_with_a_block_of_dead_mailboxes_fails_no_one_and_holds_back_no_one(
    env, smtp, issue_file, tmp_path
):
    """A list all at one domain, OUTAGE_STREAK refused in a row: by the rule an outage (the
    refusals span every domain the list has), so nobody is failed or suppressed; those put back
    are tried after the rest next time, so everyone else gets the issue."""
    good = [f"staff{n}@corp.example.org" for n in range(6)]
    bad = [f"gone{n}@corp.example.org" for n in range(OUTAGE_STREAK + 2)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join([*good[:3], *bad, *good[3:]]) + "\n")
    smtp.recorder.default = lambda rcpt, attempt: "rcpt:550 bare" if rcpt.startswith("gone") else "ok"
    assert main(["send", str(issue_file)]) == 75
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert not any(r["status"] == "failed" for r in rows.values())
    main(["send", str(issue_file)])
    assert smtp.recorder.received() == dict.fromkeys(good, 1)
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert {rows[a]["status"] for a in bad} <= {"pending", "failed"}
    assert all(rows[a]["permanent"] == 0 or rows[a]["status"] == "failed" for a in bad)


def test_a_block_of_addresses_at_one_dead_domain_is_not_an_outage(env, smtp, issue_file, tmp_path):
    dead = [f"user{n}@gone.example.net" for n in range(OUTAGE_STREAK + 3)]
    good = [f"reader{n}@example.org" for n in range(5)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join([good[0], *dead, *good[1:]]) + "\n")
    smtp.recorder.default = lambda rcpt, attempt: "550" if "gone" in rcpt else "ok"
    assert main(["send", str(issue_file)]) == 1  # finished, with failures: not 75
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert all(rows[a]["status"] == "failed" for a in dead)
    assert set(smtp.recorder.received()) == set(good)


def test_a_relay_refusing_every_domain_stops_the_run(env, smtp, issue_file, tmp_path):
    domains = ["example.org", "example.net", "example.com", "example.edu"]
    write_csv(
        tmp_path / "subscribers.csv",
        "email\n" + "\n".join(f"r{n}@{domains[n % 4]}" for n in range(40)) + "\n",
    )
    smtp.recorder.default = lambda rcpt, attempt: "554"
    assert main(["send", str(issue_file)]) == 75
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert {r["status"] for r in rows.values()} == {"pending"}
    assert all(r["attempts"] == 0 for r in rows.values())  # the outage is not held against them


class _Broken(OutboxTransport):
    """A transport that fails in a way no delivery error covers, as a full disk would."""

    calls = 0

    def send(self, sender, recipient, message, before_dot):
        type(self).calls += 1
        if type(self).calls > 3:
            raise RuntimeError("disk full (simulated)")
        return super().send(sender, recipient, message, before_dot)


def test_an_unexpected_error_stops_the_run_instead_of_hanging_it(env, issue_file, tmp_path):
    write_subscribers(tmp_path / "subscribers.csv", 2000)
    settings = load_settings()
    rendered = render_issue(load_issue(issue_file), settings)
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.plan(ISSUE, read_subscribers(tmp_path / "subscribers.csv"))
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    delivery = Delivery(
        ledger,
        ISSUE,
        MessageFactory(rendered, settings),
        lambda: _Broken(outbox),
        settings,
        stop=threading.Event(),
    )
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            delivery.run()
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the run hung after its workers failed"
    assert time.monotonic() - started < 30
    assert isinstance(outcome[0], RunStopped) and "disk full" in str(outcome[0])
    counts = ledger.counts(ISSUE)
    assert counts["sent"] == 3 and counts["pending"] == 1997 and counts["failed"] == 0
    ledger.close()


def test_outbox_names_never_collide(env, issue_file, tmp_path):
    write_csv(tmp_path / "subscribers.csv", "email\na&b@example.org\na*b@example.org\na#b@example.org\n")
    outbox = tmp_path / "outbox"
    assert main(["send", str(issue_file), "--outbox", str(outbox)]) == 0
    assert len(list(Path(outbox).glob("*.eml"))) == 3


def test_a_relay_dropping_after_every_dot_stops_the_run_with_few_in_doubt(env, smtp, issue_file, tmp_path):
    """Not the whole list in doubt (each would need `replay --in-doubt`, risking two copies):
    the run stops after about OUTAGE_STREAK, the rest pending."""
    write_subscribers(tmp_path / "subscribers.csv", 60)
    smtp.recorder.default = lambda rcpt, attempt: "drop-dot"
    assert main(["send", str(issue_file)]) == 75
    rows = ledger_rows(tmp_path / "state", ISSUE)
    in_doubt = [a for a, r in rows.items() if r["status"] == "in_doubt"]
    # the streak, plus at most one more per connection in flight when it tripped
    assert OUTAGE_STREAK <= len(in_doubt) <= OUTAGE_STREAK + int(env["MAILER_SMTP_CONNECTIONS"])
    assert {r["status"] for r in rows.values()} == {"in_doubt", "pending"}


def test_under_a_rate_limit_a_success_is_recorded_before_the_wait(
    env, smtp, issue_file, tmp_path, monkeypatch
):
    """With a slow pace, a delivered message must not sit in the ledger as in flight (in
    doubt after a crash) for the whole wait before the next one."""
    monkeypatch.setenv("MAILER_RATE_LIMIT", "4")
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "1")
    write_subscribers(tmp_path / "subscribers.csv", 6)
    seen: list[int] = []
    original = smtp.recorder.fault

    def watch(rcpt: str) -> str:
        # when a message reaches the server, every earlier one is recorded as sent
        seen.append(ledger_counts_sent(tmp_path))
        return original(rcpt)

    smtp.recorder.fault = watch  # type: ignore[method-assign]
    assert main(["send", str(issue_file)]) == 0
    assert seen == list(range(6))


def ledger_counts_sent(tmp_path: Path) -> int:
    rows = ledger_rows(tmp_path / "state", ISSUE)
    return sum(1 for r in rows.values() if r["status"] == "sent")
