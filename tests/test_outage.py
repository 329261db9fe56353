"""A relay that accepts connections but refuses every message is an outage, not a list of bad
addresses: the run stops with exit 75, nobody is marked failed or suppressed, and once the
relay is back a re-run delivers everyone exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ledger_rows, write_csv, write_subscribers
from smtpserver import free_port

from mailer.cli import main
from mailer.delivery import Delivery
from mailer.ledger import Ledger
from mailer.outage import OUTAGE_STREAK, OutageWatch

ISSUE = "2026-11-24"


def counts(env) -> dict[str, int]:
    ledger = Ledger.in_dir(Path(env["MAILER_STATE_DIR"]))
    try:
        return ledger.counts("2026-11-24")
    finally:
        ledger.close()


def suppressed(env) -> list:
    ledger = Ledger.in_dir(Path(env["MAILER_STATE_DIR"]))
    try:
        return ledger.suppressed()
    finally:
        ledger.close()


def test_every_message_refused_temporarily_stops_the_run_and_fails_no_one(
    env, smtp, issue_file, tmp_path, capsys
):
    write_subscribers(tmp_path / "subscribers.csv", 60)
    smtp.recorder.default = lambda rcpt, attempt: "451"
    assert main(["send", str(issue_file)]) == 75
    c = counts(env)
    assert c["failed"] == 0 and c["sent"] == 0 and c["pending"] == 60
    assert "refusing everything" in capsys.readouterr().err
    smtp.recorder.default = None
    assert main(["send", str(issue_file)]) == 0
    assert set(smtp.recorder.received().values()) == {1}
    assert len(smtp.recorder.received()) == 60


def test_a_relay_refusing_everything_permanently_suppresses_no_one(env, smtp, issue_file, tmp_path):
    write_subscribers(tmp_path / "subscribers.csv", 60)
    smtp.recorder.default = lambda rcpt, attempt: "554"
    assert main(["send", str(issue_file)]) == 75
    c = counts(env)
    assert c["failed"] == 0 and c["pending"] == 60
    assert suppressed(env) == []
    smtp.recorder.default = None
    assert main(["send", str(issue_file)]) == 0
    assert len(smtp.recorder.received()) == 60


def test_an_outage_leaves_no_bounce_under_an_unsubscribe_made_during_it(env, smtp, issue_file, tmp_path):
    """A reader unsubscribes while the run is on (the list is checked at the final dot, after
    RCPT TO), and the relay, refusing everything as unknown, answers their RCPT with 5.1.1. The
    outage undoes that refusal: no bounce is left under the unsubscribe, so the reader can
    resubscribe; an older bounce kept under another address's unsubscribe stays."""
    addresses = [f"reader{n}@example{n % 3}.org" for n in range(30)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join(addresses) + "\n")
    state = Path(env["MAILER_STATE_DIR"])
    target = addresses[4]
    ledger = Ledger.in_dir(state)
    ledger.suppress("old@example.org", "bounced", "2026-11-20: 5.1.1 no such user")
    ledger.suppress("old@example.org", "unsubscribed", "by one-click")
    ledger.close()

    def refuse_all(recipient: str, attempt: int) -> str:
        if recipient == target:  # as `mailer serve` would, from another connection
            other = Ledger.in_dir(state)
            try:
                other.suppress(recipient, "unsubscribed", "during the run")
            finally:
                other.close()
        return "rcpt:550"

    smtp.recorder.default = refuse_all
    assert main(["send", str(issue_file)]) == 75
    assert counts(env)["failed"] == 0
    assert smtp.recorder.attempts[target] == 1  # its refusal was one of those undone
    listed = {row[0]: row[1:3] for row in suppressed(env)}
    assert listed == {
        target: ("unsubscribed", "during the run"),
        "old@example.org": ("unsubscribed", "by one-click; bounced too: 2026-11-20: 5.1.1 no such user"),
    }
    ledger = Ledger.in_dir(state)
    try:
        assert ledger.resubscribe(target) is True
        assert ledger.resubscribe("old@example.org") is False
    finally:
        ledger.close()


def test_a_few_bad_addresses_among_good_ones_are_still_failures(env, smtp, issue_file, tmp_path):
    """Fewer than OUTAGE_STREAK refusals in a row: they are the addresses' problem."""
    write_subscribers(tmp_path / "subscribers.csv", 40)
    bad = {f"reader{n}@example.org" for n in range(0, 40, 4)}
    smtp.recorder.default = lambda rcpt, attempt: "rcpt:550" if rcpt in bad else "ok"
    assert len(bad) >= OUTAGE_STREAK  # many in all, but never OUTAGE_STREAK in a row
    assert main(["send", str(issue_file)]) == 1
    c = counts(env)
    assert c["failed"] == len(bad) and c["sent"] == 40 - len(bad)
    assert {s[0] for s in suppressed(env)} == bad


# -- the rule itself, refusal by refusal ------------------------------------------------------


def _watch(pending: int, domains: int, clock=lambda: 0.0) -> OutageWatch[str]:
    return OutageWatch(pending, domains, clock=clock, throttled_seconds=300)


def test_nothing_delivered_and_every_recipient_refused_is_an_outage_whatever_the_list_size():
    for pending in (1, 4, 9):
        watch = _watch(pending, domains=1)
        results = [watch.refused(f"r{n}@example.org", "example.org", f"r{n}") for n in range(pending)]
        assert results[:-1] == [None] * (pending - 1)
        assert results[-1] == [f"r{n}" for n in range(pending)]
    watch = _watch(300, domains=3)
    results = [watch.refused(f"r{n}@d{n % 3}.org", f"d{n % 3}.org", n) for n in range(OUTAGE_STREAK)]
    assert results[-1] == list(range(OUTAGE_STREAK)) and results[:-1] == [None] * (OUTAGE_STREAK - 1)


def test_a_recipient_counts_once_however_many_attempts():
    watch = _watch(300, domains=3)
    for attempt in range(2 * OUTAGE_STREAK):
        assert watch.refused("same@d0.org", "d0.org", attempt) is None
    assert len(watch.streak) == 1


def test_refusals_at_fewer_domains_than_the_list_has_are_the_addresses_business():
    watch = _watch(300, domains=3)
    assert not any(watch.refused(f"r{n}@dead.org", "dead.org", n) for n in range(3 * OUTAGE_STREAK))
    assert watch.refused("x@other.org", "other.org", "x") is None  # two domains so far
    assert watch.refused("y@third.org", "third.org", "y") is not None


def test_after_deliveries_it_takes_ten_in_a_row():
    watch = _watch(5, domains=3)
    watch.delivered()
    assert not any(watch.refused(f"r{n}@d{n % 3}.org", f"d{n % 3}.org", n) for n in range(OUTAGE_STREAK - 1))
    watch.delivered()  # a delivery breaks the streak
    assert not any(watch.refused(f"s{n}@d{n % 3}.org", f"d{n % 3}.org", n) for n in range(OUTAGE_STREAK - 1))
    assert watch.refused("last@d2.org", "d2.org", "last") is not None


def test_throttled_with_nothing_delivered_for_five_minutes_is_an_outage():
    now = [0.0]
    watch = _watch(300, domains=3, clock=lambda: now[0])
    now[0] = 299.0
    assert watch.throttled() is None
    watch.delivered()
    now[0] = 598.0
    assert watch.throttled() is None
    watch.refused("a@d0.org", "d0.org", "a")
    now[0] = 599.5
    assert watch.throttled() == ["a"]  # the refusals it held are undone with it


# -- runs against a fault-injecting server ---------------------------------------------------


def outcome(env) -> tuple[dict[str, int], list]:
    return counts(env), suppressed(env)


@pytest.mark.parametrize("size", [4, 300])
def test_a_list_refused_entirely_is_an_outage_whatever_its_size(env, smtp, issue_file, tmp_path, size):
    write_subscribers(tmp_path / "subscribers.csv", size)
    smtp.recorder.default = lambda rcpt, attempt: "rcpt:554 relay"
    assert main(["send", str(issue_file)]) == 75
    c, s = outcome(env)
    assert c["failed"] == 0 and c["pending"] == size and s == []
    assert smtp.recorder.received() == {}


@pytest.mark.parametrize("fault", ["rcpt:450 domain", "rcpt:452 storage", "452 storage"])
def test_the_relays_own_trouble_for_everyone_fails_no_one(env, smtp, issue_file, tmp_path, fault):
    """450 4.1.2 Domain not found (the relay's DNS) or 452 4.3.1 for every recipient: exit 75
    for cron to try again, not exit 1 with everyone failed."""
    write_subscribers(tmp_path / "subscribers.csv", 300)
    smtp.recorder.default = lambda rcpt, attempt: fault
    assert main(["send", str(issue_file)]) == 75
    c, s = outcome(env)
    assert c["failed"] == 0 and c["pending"] == 300 and s == []
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), ISSUE)
    assert all(r["attempts"] == 0 for r in rows.values())


def test_insufficient_storage_at_mail_from_for_everything_is_throttling_then_an_outage(
    env, smtp, issue_file, tmp_path, monkeypatch
):
    """452 4.3.1 to MAIL FROM: the relay puts off the sender; no attempt is spent, and once
    nothing has been delivered for the throttling limit the run stops (exit 75)."""
    monkeypatch.setattr(Delivery, "throttled_seconds", 2.0)
    write_subscribers(tmp_path / "subscribers.csv", 30)
    smtp.recorder.mail_reply = "452 storage"
    started = time.monotonic()
    assert main(["send", str(issue_file)]) == 75
    assert time.monotonic() - started < 30
    c, s = outcome(env)
    assert c["failed"] == 0 and c["pending"] == 30 and s == []
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), ISSUE)
    assert all(r["attempts"] == 0 for r in rows.values())
    smtp.recorder.mail_reply = None
    assert main(["send", str(issue_file)]) == 0
    assert set(smtp.recorder.received().values()) == {1} and len(smtp.recorder.received()) == 30


def test_four_runs_during_an_outage_fail_no_one_then_a_clean_run_delivers_everyone_once(
    env, smtp, issue_file, tmp_path
):
    write_subscribers(tmp_path / "subscribers.csv", 40)
    smtp.recorder.default = lambda rcpt, attempt: "rcpt:554 relay"
    for _ in range(4):
        assert main(["send", str(issue_file)]) == 75
        c, s = outcome(env)
        assert c["failed"] == 0 and c["pending"] == 40 and s == []
    smtp.recorder.default = None
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(40)}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_the_sender_refused_is_exit_2_at_once_and_fails_no_one(
    env, smtp, issue_file, tmp_path, capsys, pipelining
):
    write_subscribers(tmp_path / "subscribers.csv", 300)
    smtp.recorder.pipelining = pipelining
    smtp.recorder.mail_reply = "553 sender"
    assert main(["send", str(issue_file)]) == 2
    c, s = outcome(env)
    assert c["failed"] == 0 and c["pending"] == 300 and s == []
    err = capsys.readouterr().err
    assert "MAILER_FROM" in err and "553 5.1.8" in err
    assert 1 <= smtp.recorder.mail_commands <= int(env["MAILER_SMTP_CONNECTIONS"])  # stopped at once
    smtp.recorder.mail_reply = None
    assert main(["send", str(issue_file)]) == 0  # the setting fixed: everyone, once
    assert len(smtp.recorder.received()) == 300 and set(smtp.recorder.received().values()) == {1}


def test_fewer_connections_than_asked_is_not_an_outage(env, smtp, issue_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "4")
    write_subscribers(tmp_path / "subscribers.csv", 60)
    smtp.recorder.max_sessions = 2
    smtp.recorder.delay = 0.01  # the first sessions are still busy when the others connect
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(60)}
    assert smtp.recorder.turned_away >= 1
    err = capsys.readouterr().err
    assert err.count("fewer connections") == 1


def test_an_unreachable_relay_is_one_warning_per_problem(
    env, smtp, issue_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "4")
    monkeypatch.setenv("MAILER_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("MAILER_SMTP_PORT", str(free_port()))  # nothing listens there
    write_subscribers(tmp_path / "subscribers.csv", 20)
    assert main(["send", str(issue_file)]) == 75
    lines = capsys.readouterr().err.splitlines()
    warnings = [line for line in lines if " WARNING " in line and "cannot reach" in line]
    assert len(warnings) == 1 and "Connection refused" in warnings[0], lines
    assert sum("cannot reach" in line for line in lines) <= 3  # that warning, the stop, the summary


def test_a_relay_wanting_a_login_is_exit_2_naming_the_credentials(env, smtp, issue_file, tmp_path, capsys):
    write_subscribers(tmp_path / "subscribers.csv", 20)
    smtp.recorder.mail_reply = "530 auth"
    assert main(["send", str(issue_file)]) == 2
    assert "MAILER_SMTP_USER and MAILER_SMTP_PASSWORD" in capsys.readouterr().err
    c, s = outcome(env)
    assert c["failed"] == 0 and c["pending"] == 20 and s == []
