"""The run stops cleanly, never hangs and never burns the list: outages, throttling, a block of
bad addresses at one domain, and an unexpected error on this machine."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import ledger_rows, write_csv, write_subscribers

from mailer.cli import main
from mailer.config import load_settings
from mailer.delivery import OUTAGE_STREAK, Delivery, _Job
from mailer.errors import DeliveryError, RunStopped
from mailer.issue import load_issue
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.render import render_issue
from mailer.subscribers import Recipient, read_subscribers
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


def _delivery(tmp_path: Path, issue_file: Path, addresses: list[str]) -> tuple[Delivery, Ledger]:
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join(addresses) + "\n")
    settings = load_settings()
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.plan(ISSUE, read_subscribers(tmp_path / "subscribers.csv"))
    factory = MessageFactory(render_issue(load_issue(issue_file), settings), settings)
    delivery = Delivery(
        ledger, ISSUE, factory, lambda: OutboxTransport(tmp_path), settings, stop=threading.Event()
    )
    return delivery, ledger


def _job(email: str, attempts: int = 1) -> _Job:
    return _Job(0.0, 0, Recipient(2, email), attempts)


def test_the_streak_ignores_throttling_and_single_domain_blocks(env, issue_file, tmp_path):
    """The rule itself, failure by failure: what counts towards an outage and what does not."""
    addresses = [f"r{n}@d{n % 4}.example.org" for n in range(4 * OUTAGE_STREAK)]
    delivery, ledger = _delivery(tmp_path, issue_file, addresses)
    delivery._domains = {"d0.example.org", "d1.example.org", "d2.example.org"}
    throttle = DeliveryError("452 4.7.1 Rate limit exceeded", code=452, transient=True, throttled=True)
    for n in range(3 * OUTAGE_STREAK):  # throttling, however long: the pacer's business
        assert delivery._outage(_job(addresses[n]), throttle, ledger) is False
    dead = DeliveryError("550 5.1.1 No such domain", code=550, transient=False)
    for n in range(3 * OUTAGE_STREAK):  # one dead domain, however many addresses at it
        assert delivery._outage(_job(f"u{n}@d0.example.org"), dead, ledger) is False
    assert delivery._abort is None
    refused = DeliveryError("554 5.7.1 Relay access denied", code=554, transient=False)
    tripped = [delivery._outage(_job(addresses[n]), refused, ledger) for n in range(1, 3)]
    assert tripped == [False, True]  # three domains now: the relay's fault, the run stops
    assert isinstance(delivery._abort, RunStopped)
    ledger.close()


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
