"""Delivery verdicts against a real Postfix relay (tests/relay.py): a refused sender, a relay
refusing everything, an outage lasting several runs, Postfix's own rate and connection limits,
a wrong password, and the recipients it refuses itself. Only evidence about an address removes
it; nothing the relay or the configuration does fails or suppresses anyone."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import ledger_rows, write_csv, write_subscribers

from mailer.cli import main
from mailer.ledger import Ledger

pytestmark = pytest.mark.relay
ISSUE = "2026-11-24"


@pytest.fixture
def relay(postfix, env, monkeypatch):
    """The usual test settings, pointed at the real relay's plain listener; its Maildirs
    emptied, so a test counts only what it delivered."""
    postfix.reset()
    use(postfix, monkeypatch, "plain")
    return postfix


def use(postfix, monkeypatch, port: str, **extra: str) -> None:
    for key, value in postfix.settings(port, **extra).items():
        monkeypatch.setenv(key, value)


def state(env) -> Path:
    return Path(env["MAILER_STATE_DIR"])


def nobody_failed_or_suppressed(env, pending: int) -> None:
    ledger = Ledger.in_dir(state(env))
    try:
        counts = ledger.counts(ISSUE)
        assert (counts["failed"], counts["pending"], counts["sent"]) == (0, pending, 0), counts
        assert ledger.suppressed() == []
    finally:
        ledger.close()


def readers(count: int) -> dict[str, int]:
    return {f"reader{n}@example.org": 1 for n in range(count)}


@pytest.mark.parametrize("port", ["reject_sender", "reject_sender_late"])
@pytest.mark.parametrize(("sender", "status"), [("news@example.org", "5.1.8"),
                                                ("notowned@example.org", "5.1.0")])
def test_the_sender_refused_is_exit_2_and_fails_no_one(
    relay, env, issue_file, tmp_path, monkeypatch, capsys, port, sender, status
):
    """553 to MAIL FROM, or (smtpd_delay_reject) to RCPT TO naming the sender: our
    configuration's business, never the 300 recipients'."""
    use(relay, monkeypatch, port)
    monkeypatch.setenv("MAILER_FROM", f"The Top Ten <{sender}>")
    write_subscribers(tmp_path / "subscribers.csv", 300)
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "MAILER_FROM" in err and f"553 {status}" in err
    nobody_failed_or_suppressed(env, 300)
    use(relay, monkeypatch, "plain")  # the sender fixed: everyone, once
    assert main(["send", str(issue_file)]) == 0
    relay.wait_idle()
    assert relay.delivered_count() == readers(300)


@pytest.mark.parametrize("size", [4, 300])
def test_a_relay_refusing_every_recipient_fails_no_one(relay, env, issue_file, tmp_path, monkeypatch, size):
    use(relay, monkeypatch, "reject_all")
    write_subscribers(tmp_path / "subscribers.csv", size)
    assert main(["send", str(issue_file)]) == 75
    nobody_failed_or_suppressed(env, size)


def test_four_runs_during_an_outage_then_a_clean_run_delivers_everyone_once(
    relay, env, issue_file, tmp_path, monkeypatch
):
    write_subscribers(tmp_path / "subscribers.csv", 300)
    use(relay, monkeypatch, "reject_all")
    for _ in range(4):  # a morning's cron attempts while the relay refuses everything
        assert main(["send", str(issue_file)]) == 75
        nobody_failed_or_suppressed(env, 300)
    use(relay, monkeypatch, "plain")
    assert main(["send", str(issue_file)]) == 0
    relay.wait_idle()
    assert relay.delivered_count() == readers(300)
    assert {r["status"] for r in ledger_rows(state(env), ISSUE).values()} == {"sent"}


def test_postfixs_rate_limit_slows_the_run_and_everyone_is_delivered_in_one_run(
    relay, env, issue_file, tmp_path, monkeypatch, capsys
):
    """Postfix answers MAIL FROM with 450 4.7.1 "too much mail" past its rate: throttling,
    which costs no attempt; the run ends later with everyone delivered and no failure."""
    count = relay.rate * 3  # three of Postfix's rate windows at least
    use(relay, monkeypatch, "ratelimit")
    write_subscribers(tmp_path / "subscribers.csv", count)
    started = time.monotonic()
    assert main(["send", str(issue_file)]) == 0
    took = time.monotonic() - started
    relay.wait_idle()
    assert relay.delivered_count() == readers(count)
    rows = ledger_rows(state(env), ISSUE)
    assert {r["status"] for r in rows.values()} == {"sent"}
    assert "Message delivery request rate limit exceeded" in relay.log()  # the limit was met
    assert took >= 2 * relay.rate_unit * 0.9
    assert took < 90, f"{took:.0f} s for {count} messages at {relay.rate} per {relay.rate_unit} s"


def test_fewer_connections_than_asked_is_not_an_outage(relay, env, issue_file, tmp_path, monkeypatch, capsys):
    use(relay, monkeypatch, "connlimit", MAILER_SMTP_CONNECTIONS="4")
    write_subscribers(tmp_path / "subscribers.csv", 200)
    log_before = len(relay.log())
    assert main(["send", str(issue_file)]) == 0
    relay.wait_for(lambda: "concurrency limit exceeded" in relay.log()[log_before:], 10, "the maillog")
    assert capsys.readouterr().err.count("fewer connections than MAILER_SMTP_CONNECTIONS") == 1
    relay.wait_idle()
    assert relay.delivered_count() == readers(200)
    assert {r["status"] for r in ledger_rows(state(env), ISSUE).values()} == {"sent"}


def test_a_wrong_password_is_exit_2_with_at_most_one_failed_login_per_connection(
    relay, env, issue_file, tmp_path, monkeypatch, capsys
):
    use(relay, monkeypatch, "auth", MAILER_SMTP_PASSWORD="not-the-password", MAILER_SMTP_CONNECTIONS="4")
    monkeypatch.setenv("MAILER_SECRET", "a-long-enough-test-secret")
    write_subscribers(tmp_path / "subscribers.csv", 50)
    log_before = len(relay.log())
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "MAILER_SMTP_USER and MAILER_SMTP_PASSWORD" in err and "535" in err
    assert "not-the-password" not in err
    relay.wait_for(lambda: "authentication failed" in relay.log()[log_before:], 10, "the maillog")
    log = relay.log()[log_before:]
    failed_logins = len(re.findall(r"SASL (?:PLAIN|LOGIN) authentication failed", log))
    connections = len(re.findall(r"\bconnect from localhost", log))
    assert failed_logins == 1, log
    assert failed_logins <= connections
    nobody_failed_or_suppressed(env, 50)


def test_unknown_mailboxes_are_suppressed_and_refused_ones_are_not(relay, env, issue_file, tmp_path):
    write_csv(
        tmp_path / "subscribers.csv",
        "email\n" + "\n".join([
            "reader0@example.org", "unknown1@example.org", "reader1@example.net",
            "blocked1@example.com", "reader2@example.com", "unknown2@example.net", "reader3@example.org",
        ]) + "\n",
    )
    assert main(["send", str(issue_file)]) == 1
    rows = ledger_rows(state(env), ISSUE)
    for address in ("unknown1@example.org", "unknown2@example.net", "blocked1@example.com"):
        assert (rows[address]["status"], rows[address]["permanent"]) == ("failed", 1), address
    ledger = Ledger.in_dir(state(env))
    try:
        assert ledger.is_suppressed("unknown1@example.org") and ledger.is_suppressed("unknown2@example.net")
        assert not ledger.is_suppressed("blocked1@example.com")
    finally:
        ledger.close()
    assert "550 5.1.1" in rows["unknown1@example.org"]["last_message"]
    assert "554 5.7.1" in rows["blocked1@example.com"]["last_message"]
    relay.wait_idle()
    assert relay.delivered_count() == dict.fromkeys(
        ["reader0@example.org", "reader1@example.net", "reader2@example.com", "reader3@example.org"], 1
    )
