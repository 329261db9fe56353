"""The morning run over a real SMTP server: retries, failures, doubt, outages, the lock, the
modes of `send`, and exit codes, every fault injected by the server itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import issue_for_date, ledger_rows, write_csv, write_subscribers
from smtpserver import free_port, start_server

from mailer.cli import main
from mailer.config import load_settings
from mailer.delivery import Delivery, run_lock
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.send import prepare
from mailer.subscribers import read_subscribers
from mailer.throttle import Pacer
from mailer.transport import SMTPTransport

ISSUE = "2026-11-24"


def reader(n: int) -> str:
    return f"reader{n}@example.org"


@pytest.fixture
def state(env) -> Path:
    return Path(env["MAILER_STATE_DIR"])


@pytest.fixture
def subscribers(env, tmp_path):
    """Write N generated subscribers where the settings look for them."""
    return lambda count: write_subscribers(tmp_path / "subscribers.csv", count)


def statuses(state: Path, issue: str = ISSUE) -> dict[str, str]:
    return {key: row["status"] for key, row in ledger_rows(state, issue).items()}


def assert_once_each(smtp, count: int) -> None:
    got = smtp.recorder.received()
    assert got == {reader(n): 1 for n in range(count)}


# -- transient and permanent replies --------------------------------------------------------


def test_451_is_retried_then_delivered_once(env, smtp, issue_file, subscribers, state):
    subscribers(10)
    smtp.recorder.scripts = {reader(3): ["451", "451", "ok"]}
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 10)
    assert smtp.recorder.attempts[reader(3)] == 3
    row = ledger_rows(state, ISSUE)[reader(3)]
    assert (row["status"], row["attempts"]) == ("sent", 3)


@pytest.mark.parametrize(("fault", "suppressed"), [("550", False), ("rcpt:550", True)],
                         ids=["after-the-message", "at-rcpt"])
def test_5xx_is_permanent_not_retried_and_only_a_mailbox_refusal_at_rcpt_suppresses(
    env, smtp, issue_file, subscribers, state, fault, suppressed, capsys
):
    """550 5.1.1 at RCPT is evidence about the address; the same reply after the message is
    a refusal of that message only: failed, not suppressed."""
    subscribers(6)
    smtp.recorder.scripts = {reader(2): [fault, "ok", "ok"]}
    assert main(["send", str(issue_file)]) == 1
    assert smtp.recorder.attempts[reader(2)] == 1  # not retried
    assert reader(2) not in smtp.recorder.received()
    row = ledger_rows(state, ISSUE)[reader(2)]
    assert (row["status"], row["permanent"], row["last_code"], row["attempts"]) == ("failed", 1, 550, 1)
    assert "550" in capsys.readouterr().err

    # The next day's issue goes to that address only when it was not evidence about it.
    next_issue = issue_for_date(issue_file, "2026-11-25")
    assert main(["send", str(next_issue)]) == 0
    assert smtp.recorder.attempts[reader(2)] == (1 if suppressed else 2)
    later = ledger_rows(state, "2026-11-25")
    assert later[reader(2)]["status"] == ("suppressed" if suppressed else "sent")
    assert Ledger.in_dir(state).counts("2026-11-25")["suppressed"] == int(suppressed)
    assert smtp.recorder.received()[reader(0)] == 2  # one copy of each issue


def test_max_attempts_exhausted_is_failed_not_suppressed(env, smtp, issue_file, subscribers, state):
    subscribers(4)
    smtp.recorder.scripts = {reader(1): ["451", "451", "451", "ok"]}  # MAILER_MAX_ATTEMPTS=3
    assert main(["send", str(issue_file)]) == 1
    assert smtp.recorder.attempts[reader(1)] == 3
    assert reader(1) not in smtp.recorder.received()
    row = ledger_rows(state, ISSUE)[reader(1)]
    assert (row["status"], row["permanent"], row["attempts"], row["last_code"]) == ("failed", 0, 3, 451)
    assert not Ledger.in_dir(state).is_suppressed(reader(1))


def _run_delivery(settings_env: dict[str, str], issue_file: Path, csv: Path) -> Delivery:
    """The delivery engine alone, so that its pace can be looked at afterwards."""
    settings = load_settings()
    prepared = prepare(issue_file, settings)
    ledger = Ledger.in_dir(settings.state_dir)
    ledger.plan(prepared.key, read_subscribers(csv))
    delivery = Delivery(
        ledger, prepared.key, MessageFactory(prepared.rendered, settings),
        lambda: SMTPTransport(settings), settings, stop=threading.Event(),
    )
    try:
        delivery.run()
    finally:
        ledger.close()
    return delivery


def test_throttling_replies_slow_the_whole_run_and_cost_no_attempt(
    env, smtp, issue_file, subscribers, state, monkeypatch
):
    monkeypatch.setenv("MAILER_RATE_LIMIT", "200")
    csv = subscribers(10)
    smtp.recorder.scripts = {reader(1): ["421", "ok"], reader(2): ["452 rate", "ok"]}
    delivery = _run_delivery(env, issue_file, csv)
    assert_once_each(smtp, 10)
    assert delivery.pacer.throttled == 2
    assert delivery.pacer.rate is not None and delivery.pacer.rate < 200  # still recovering
    assert delivery.tally.retried == 0  # throttled, not failed: no attempt spent
    rows = ledger_rows(state, ISSUE)
    assert rows[reader(1)]["attempts"] == rows[reader(2)]["attempts"] == 1


def test_throttled_more_times_than_max_attempts_is_still_delivered(env, smtp, issue_file, subscribers, state):
    subscribers(3)  # MAILER_MAX_ATTEMPTS=3
    smtp.recorder.scripts = {reader(1): ["452 rate"] * 5 + ["ok"]}
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 3)
    assert smtp.recorder.attempts[reader(1)] == 6
    assert ledger_rows(state, ISSUE)[reader(1)]["attempts"] == 1


def test_a_plain_451_costs_an_attempt_and_slows_the_run_only_a_little(
    env, smtp, issue_file, subscribers, monkeypatch
):
    monkeypatch.setenv("MAILER_RATE_LIMIT", "200")
    csv = subscribers(5)
    smtp.recorder.scripts = {reader(1): ["451", "ok"]}
    delivery = _run_delivery(env, issue_file, csv)
    assert_once_each(smtp, 5)
    assert delivery.tally.retried == 1
    assert delivery.pacer.throttled == 1
    assert delivery.pacer.rate is not None and 200 * Pacer.GENTLE <= delivery.pacer.rate <= 200


# -- dropped connections: before the dot is safe to resend, after it is in doubt -----------


def test_drop_before_the_final_dot_is_retried_and_delivered_once(env, smtp, issue_file, subscribers, state):
    subscribers(6)
    smtp.recorder.scripts = {reader(2): ["drop-rcpt", "ok"], reader(4): ["drop-rcpt", "drop-rcpt", "ok"]}
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 6)
    assert smtp.recorder.attempts[reader(4)] == 3
    assert ledger_rows(state, ISSUE)[reader(4)]["attempts"] == 3


def test_drop_after_the_final_dot_is_in_doubt_and_not_resent(env, smtp, issue_file, subscribers, state):
    subscribers(5)
    smtp.recorder.scripts = {reader(3): ["drop-dot", "ok"]}
    assert main(["send", str(issue_file)]) == 1
    assert_once_each(smtp, 5)  # the server did take it
    assert statuses(state)[reader(3)] == "in_doubt"
    assert main(["send", str(issue_file)]) == 1  # a re-run leaves it alone
    assert smtp.recorder.attempts[reader(3)] == 1
    assert_once_each(smtp, 5)
    assert statuses(state)[reader(3)] == "in_doubt"


def test_no_reply_to_the_final_dot_within_the_timeout_is_in_doubt(
    env, smtp, issue_file, subscribers, state, monkeypatch
):
    # A 1 s timeout for every SMTP operation: ample on loopback even under load; the
    # server holds its reply to the final dot for 4 s.
    monkeypatch.setenv("MAILER_SMTP_TIMEOUT", "1")
    subscribers(4)
    smtp.recorder.scripts = {reader(1): ["slow-dot:4", "ok"]}
    assert main(["send", str(issue_file)]) == 1
    assert statuses(state)[reader(1)] == "in_doubt"
    assert main(["send", str(issue_file)]) == 1
    assert smtp.recorder.attempts[reader(1)] == 1
    got = smtp.recorder.received()
    assert got[reader(1)] <= 1
    assert all(got[reader(n)] == 1 for n in (0, 2, 3))


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_every_fault_with_and_without_pipelining(env, smtp, issue_file, subscribers, state, pipelining):
    subscribers(8)
    smtp.recorder.pipelining = pipelining
    smtp.recorder.scripts = {
        reader(1): ["451", "ok"],
        reader(2): ["550"],
        reader(3): ["rcpt:550"],
        reader(4): ["drop-rcpt", "ok"],
        reader(5): ["drop-dot"],
        reader(6): ["421", "ok"],
    }
    assert main(["send", str(issue_file)]) == 1
    got = smtp.recorder.received()
    assert got == {reader(n): 1 for n in (0, 1, 4, 5, 6, 7)}
    assert statuses(state) == {
        reader(0): "sent", reader(1): "sent", reader(2): "failed", reader(3): "failed",
        reader(4): "sent", reader(5): "in_doubt", reader(6): "sent", reader(7): "sent",
    }
    assert main(["send", str(issue_file)]) == 1  # a re-run changes nothing
    assert smtp.recorder.received() == got


# -- outages --------------------------------------------------------------------------------


def test_server_unreachable_stops_early_leaving_everyone_pending(
    env, smtp, issue_file, subscribers, state, monkeypatch, capsys
):
    subscribers(30)
    monkeypatch.setenv("MAILER_SMTP_PORT", str(free_port()))  # nothing listens there
    started = time.monotonic()
    assert main(["send", str(issue_file)]) == 75
    assert time.monotonic() - started < 15  # loose: a few backoffs of 0.01 s, under load
    assert "cannot" in capsys.readouterr().err
    rows = ledger_rows(state, ISSUE)
    assert {r["status"] for r in rows.values()} == {"pending"}
    assert len(rows) == 30

    monkeypatch.setenv("MAILER_SMTP_PORT", str(smtp.port))  # the server is back
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 30)
    assert set(statuses(state).values()) == {"sent"}


def test_server_going_away_mid_run_then_back(env, issue_file, subscribers, state, monkeypatch):
    server = start_server()
    port = server.port
    monkeypatch.setenv("MAILER_SMTP_PORT", str(port))
    monkeypatch.setenv("MAILER_SMTP_TIMEOUT", "2")
    count = 60
    subscribers(count)
    server.recorder.delay = 0.02
    first = server.recorder

    def stop_after_some() -> None:
        deadline = time.monotonic() + 30
        while len(first.messages) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop()

    watcher = threading.Thread(target=stop_after_some)
    watcher.start()
    try:
        assert main(["send", str(issue_file)]) == 75
    finally:
        watcher.join()
    rows = ledger_rows(state, ISSUE)
    by_status = {s: {k for k, r in rows.items() if r["status"] == s} for s in ("sent", "pending", "in_doubt")}
    assert not any(r["status"] == "failed" for r in rows.values())
    # The server went away after about 10 of 60; under load a few more may get through
    # before it is gone, hence the loose bound.
    assert len(by_status["pending"]) >= count // 4
    assert len(by_status["in_doubt"]) <= 2  # at most one per connection
    got_first = first.received()
    assert all(got_first[a] == 1 for a in by_status["sent"])

    back = start_server(port=port)  # the same relay, restarted
    try:
        code = main(["send", str(issue_file)])
        assert code == (1 if by_status["in_doubt"] else 0)
        got = got_first + back.recorder.received()
        for n in range(count):
            if reader(n) in by_status["in_doubt"]:
                assert got[reader(n)] <= 1
            else:
                assert got[reader(n)] == 1, reader(n)
    finally:
        back.stop()


# -- the lock, the pace, the connections ----------------------------------------------------


def test_a_second_send_exits_75_at_once_while_one_holds_the_lock(
    env, smtp, issue_file, subscribers, state, capsys
):
    subscribers(3)
    with run_lock(state):
        started = time.monotonic()
        assert main(["send", str(issue_file)]) == 75
        assert time.monotonic() - started < 5
    assert "another send" in capsys.readouterr().err
    assert smtp.recorder.opened == 0
    assert main(["send", str(issue_file)]) == 0  # the lock gone, the run goes ahead
    assert_once_each(smtp, 3)


def test_the_rate_limit_is_respected(env, smtp, issue_file, subscribers, monkeypatch):
    monkeypatch.setenv("MAILER_RATE_LIMIT", "20")
    subscribers(10)
    seen: list[float] = []
    smtp.recorder.default = lambda rcpt, attempt: seen.append(time.monotonic()) or "ok"
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 10)
    # 10 messages at 20/s: nine gaps of 50 ms at least, as the server saw them.
    assert seen[-1] - seen[0] >= 0.4


def test_connections_are_reused_across_messages(env, smtp, issue_file, subscribers):
    subscribers(20)  # MAILER_SMTP_CONNECTIONS=2
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, 20)
    assert 1 <= smtp.recorder.connections <= 2
    assert smtp.recorder.opened <= 2


# -- the modes of send ----------------------------------------------------------------------


def test_dry_run_connects_to_nothing_writes_nothing_and_prints_the_plan(
    env, smtp, issue_file, tmp_path, state, capsys
):
    write_csv(
        tmp_path / "subscribers.csv",
        "email,name,status\nann@example.org,Ann,\nbob@example.org,,active\n"
        "gone@example.org,,bounced\nbroken,,\nANN@example.org,,\n",
    )
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert smtp.recorder.opened == 0
    assert not (state / "ledger.sqlite3").exists()
    assert "send  ann@example.org  (Ann)" in out
    assert "send  bob@example.org" in out
    assert "row 4: gone@example.org: skipped: status is 'bounced'" in out
    assert "row 5: broken: skipped: invalid address" in out
    assert "2 to send, 2 skipped, 0 suppressed, 1 duplicate row(s)" in out
    assert "nothing was sent" in out


def test_dry_run_after_a_send_writes_no_row(env, smtp, issue_file, subscribers, state, capsys):
    subscribers(3)
    smtp.recorder.scripts = {reader(1): ["550"]}
    assert main(["send", str(issue_file)]) == 1
    before = ledger_rows(state, ISSUE)
    write_subscribers(state.parent / "subscribers.csv", 5)
    opened = smtp.recorder.opened
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 to send" in out and "3 already handled" in out  # 2 sent, 1 failed
    assert ledger_rows(state, ISSUE) == before
    assert smtp.recorder.opened == opened


def test_test_send_goes_only_to_the_given_addresses_and_is_not_a_delivery(
    env, smtp, issue_file, subscribers, state
):
    subscribers(3)
    assert main(["send", str(issue_file), "--to", "editor@example.org", "--to", reader(1)]) == 0
    assert smtp.recorder.received() == {"editor@example.org": 1, reader(1): 1}
    assert all(m["Subject"].startswith("[TEST] ") for m in smtp.recorder.parsed())
    assert not (state / "ledger.sqlite3").exists() or ledger_rows(state, ISSUE) == {}

    assert main(["send", str(issue_file)]) == 0  # the real run still sends to reader1
    got = smtp.recorder.received()
    assert got[reader(1)] == 2 and got[reader(0)] == 1 and got["editor@example.org"] == 1
    real = [m for m in smtp.recorder.parsed() if not m["Subject"].startswith("[TEST] ")]
    assert len(real) == 3


def test_outbox_writes_one_eml_each_with_its_own_ledger(env, smtp, issue_file, subscribers, state, tmp_path):
    from email import message_from_bytes, policy

    subscribers(5)
    outbox = tmp_path / "outbox"
    assert main(["send", str(issue_file), "--outbox", str(outbox)]) == 0
    files = sorted(outbox.glob("*.eml"))
    assert [f.name for f in files] == [f"{reader(n)}.eml" for n in range(5)]
    for f in files:
        msg = message_from_bytes(f.read_bytes(), policy=policy.default)
        assert msg["To"].addresses[0].addr_spec == f.stem
    assert set(statuses(outbox).values()) == {"sent"}
    assert smtp.recorder.opened == 0
    assert not (state / "ledger.sqlite3").exists() or ledger_rows(state, ISSUE) == {}

    assert main(["send", str(issue_file)]) == 0  # the real run is not fooled
    assert_once_each(smtp, 5)


def test_an_invalid_issue_sends_nothing_and_exits_2(env, smtp, issue_file, subscribers, state, capsys):
    import json

    subscribers(3)
    data = json.loads(issue_file.read_text(encoding="utf-8"))
    data["stories"][0]["url"] = "http://insecure.example.org/"
    issue_file.write_text(json.dumps(data), encoding="utf-8")
    assert main(["send", str(issue_file)]) == 2
    assert "stories.0.url" in capsys.readouterr().err
    assert smtp.recorder.opened == 0
    assert not (state / "ledger.sqlite3").exists() or ledger_rows(state, ISSUE) == {}


def test_exit_codes(env, smtp, issue_file, subscribers, state, tmp_path):
    subscribers(3)
    assert main(["send", str(issue_file)]) == 0
    assert main(["send", str(issue_file)]) == 0  # nothing left to do is still done
    second = issue_for_date(issue_file, "2026-11-25")
    smtp.recorder.scripts = {reader(0): ["550"]}
    assert main(["send", str(second)]) == 1
    assert main(["send", str(second), "--subscribers", str(tmp_path / "nowhere.csv")]) == 2
    with run_lock(state):
        assert main(["send", str(second)]) == 75


# -- acceptance -----------------------------------------------------------------------------


def test_acceptance_200_recipients_a_tenth_failing_once(env, smtp, issue_file, subscribers, state):
    count = 200
    subscribers(count)
    flaky = {reader(n) for n in range(0, count, 10)}
    smtp.recorder.default = lambda rcpt, attempt: "451" if rcpt in flaky and attempt == 1 else "ok"
    assert main(["send", str(issue_file)]) == 0
    assert_once_each(smtp, count)
    assert all(smtp.recorder.attempts[a] == 2 for a in flaky)
    assert set(statuses(state).values()) == {"sent"}
