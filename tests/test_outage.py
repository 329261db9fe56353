"""A relay that accepts connections but refuses every message is an outage, not a list of bad
addresses: the run stops with exit 75, nobody is marked failed or suppressed, and once the
relay is back a re-run delivers everyone exactly once."""

from __future__ import annotations

from conftest import write_subscribers

from mailer.cli import main
from mailer.delivery import OUTAGE_STREAK
from mailer.ledger import Ledger


def counts(env) -> dict[str, int]:
    ledger = Ledger.in_dir(__import__("pathlib").Path(env["MAILER_STATE_DIR"]))
    try:
        return ledger.counts("2026-11-24")
    finally:
        ledger.close()


def suppressed(env) -> list:
    ledger = Ledger.in_dir(__import__("pathlib").Path(env["MAILER_STATE_DIR"]))
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


def test_a_few_bad_addresses_among_good_ones_are_still_failures(env, smtp, issue_file, tmp_path):
    """Fewer than OUTAGE_STREAK refusals in a row: they are the addresses' problem."""
    write_subscribers(tmp_path / "subscribers.csv", 40)
    bad = {f"reader{n}@example.org" for n in range(0, 40, 4)}
    smtp.recorder.default = lambda rcpt, attempt: "550" if rcpt in bad else "ok"
    assert len(bad) >= OUTAGE_STREAK  # many in all, but never OUTAGE_STREAK in a row
    assert main(["send", str(issue_file)]) == 1
    c = counts(env)
    assert c["failed"] == len(bad) and c["sent"] == 40 - len(bad)
    assert {s[0] for s in suppressed(env)} == bad
