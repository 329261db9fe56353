"""The point of no return: the record before the final dot also checks the suppression list,
so an address unsubscribed while a run is going is not sent to from that moment."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ledger_rows, write_csv

from mailer.cli import main
from mailer.errors import Withheld
from mailer.ledger import IN_FLIGHT, Ledger
from mailer.subscribers import Recipient
from mailer.transport import OutboxTransport

ISSUE = "2026-11-24"


def unsubscribe_at_rcpt(state: Path, targets: set[str], reason: str = "unsubscribed"):
    """A server-side hook: as the server reads RCPT TO for a target, the address is suppressed
    from another ledger connection (as `mailer serve` would): after the run chose it, before
    its final dot."""

    def fault(recipient: str, attempt: int) -> str:
        if recipient in targets:
            other = Ledger.in_dir(state)
            try:
                other.suppress(recipient, reason, "during the run")
            finally:
                other.close()
        return "ok"

    return fault


def test_an_address_unsubscribed_mid_message_is_not_sent(env, smtp, issue_file, tmp_path, capsys):
    addresses = [f"reader{n}@example.org" for n in range(30)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join(addresses) + "\n")
    state = Path(env["MAILER_STATE_DIR"])
    target = addresses[12]
    smtp.recorder.default = unsubscribe_at_rcpt(state, {target})
    assert main(["send", str(issue_file)]) == 0
    got = smtp.recorder.received()
    assert target not in got  # the server saw MAIL, RCPT, DATA and the body, never the dot
    assert smtp.recorder.attempts[target] == 1
    assert got == {a: 1 for a in addresses if a != target}
    rows = ledger_rows(state, ISSUE)
    assert rows[target]["status"] == "suppressed"
    assert all(rows[a]["status"] == "sent" for a in addresses if a != target)
    err = capsys.readouterr().err
    assert f"{target}: on the suppression list since the run started; not sent" in err


def test_many_unsubscribes_in_a_row_are_not_an_outage(env, smtp, issue_file, tmp_path):
    """Twelve recipients in a row over three domains, each withheld: not refusals, so the run
    goes on and ends with exit 0, not 75; they end suppressed, not failed nor pending."""
    addresses = [f"r{n}@example{n % 3}.org" for n in range(40)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join(addresses) + "\n")
    state = Path(env["MAILER_STATE_DIR"])
    targets = set(addresses[5:17])
    smtp.recorder.default = unsubscribe_at_rcpt(state, targets)
    assert main(["send", str(issue_file)]) == 0
    got = smtp.recorder.received()
    assert got == {a: 1 for a in addresses if a not in targets}
    rows = ledger_rows(state, ISSUE)
    assert {a for a, r in rows.items() if r["status"] == "suppressed"} == targets


def test_a_bounce_recorded_mid_run_is_honoured_too(env, smtp, issue_file, tmp_path):
    """`mailer inbox` suppressing a bounced address during a send: not sent either."""
    addresses = [f"reader{n}@example.org" for n in range(5)]
    write_csv(tmp_path / "subscribers.csv", "email\n" + "\n".join(addresses) + "\n")
    state = Path(env["MAILER_STATE_DIR"])
    smtp.recorder.default = unsubscribe_at_rcpt(state, {addresses[2]}, reason="bounced")
    assert main(["send", str(issue_file)]) == 0
    assert addresses[2] not in smtp.recorder.received()
    assert ledger_rows(state, ISSUE)[addresses[2]]["status"] == "suppressed"


# -- the ledger's side ------------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.plan(ISSUE, [Recipient(n, f"r{n}@example.org") for n in range(4)])
    yield ledger
    ledger.close()


def status(ledger: Ledger, key: str) -> str:
    row = ledger.db.execute("SELECT status FROM deliveries WHERE issue=? AND key=?", (ISSUE, key)).fetchone()
    return str(row[0])


def test_mark_dot_goes_ahead_only_for_a_pending_unsuppressed_row(ledger):
    assert ledger.mark_dot(ISSUE, "r0@example.org", 1) is True
    assert status(ledger, "r0@example.org") == IN_FLIGHT
    # not pending any more (in flight already): never a second dot
    assert ledger.mark_dot(ISSUE, "r0@example.org", 2) is False
    assert status(ledger, "r0@example.org") == IN_FLIGHT
    ledger.suppress("R1@example.org", "unsubscribed")  # any case
    assert ledger.mark_dot(ISSUE, "r1@example.org", 1) is False
    assert status(ledger, "r1@example.org") == "suppressed"


def test_a_withheld_dot_still_records_the_previous_success(ledger):
    ledger.suppress("r1@example.org", "unsubscribed")
    assert ledger.mark_dot(ISSUE, "r1@example.org", 1, sent=("r0@example.org", 1, "250 ok")) is False
    assert status(ledger, "r0@example.org") == "sent"
    assert status(ledger, "r1@example.org") == "suppressed"


def test_replay_permanent_sends_to_bounces_but_never_to_an_unsubscribe(ledger):
    ledger.suppress("r2@example.org", "bounced", "550 5.1.1")
    ledger.suppress("r3@example.org", "unsubscribed")
    assert ledger.mark_dot(ISSUE, "r2@example.org", 1, bounces_allowed=True) is True
    assert ledger.mark_dot(ISSUE, "r3@example.org", 1, bounces_allowed=True) is False
    assert status(ledger, "r3@example.org") == "suppressed"


def test_the_outbox_leaves_no_file_for_a_withheld_message(tmp_path):
    outbox = OutboxTransport(tmp_path / "outbox")
    outbox.open()

    def withheld() -> None:
        raise Withheld("r0@example.org: suppressed during the run")

    with pytest.raises(Withheld):
        outbox.send("news@example.org", "r0@example.org", b"Subject: x\r\n\r\nbody\r\n", withheld)
    assert list((tmp_path / "outbox").iterdir()) == []
