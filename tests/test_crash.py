"""A real `mailer send` process, killed mid-run: the re-run finishes the list, and no one gets
two copies, save a message in doubt (its final dot sent, no reply yet), which gets at most one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ledger_rows, write_subscribers

from mailer.cli import main

ISSUE = "2026-11-24"
COUNT = 80
CONNECTIONS = 2


@pytest.fixture
def slow_run(env, smtp, issue_file, tmp_path):
    """80 subscribers and a server that takes a while over each message, so that the run
    lasts a few seconds and a signal lands in the middle of it."""
    write_subscribers(tmp_path / "subscribers.csv", COUNT)
    # The reply comes 30 ms after the message is stored: a kill in that window leaves a
    # message the server has but the mailer never heard back about.
    smtp.recorder.delay = 0.03
    return tmp_path


def start_send(issue_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "send", str(issue_file)],
        cwd=cwd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for_messages(smtp, proc: subprocess.Popen[bytes], count: int) -> None:
    # Generous deadline: the machine may be busy with other test runs.
    deadline = time.monotonic() + 60
    while len(smtp.recorder.messages) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the send never got going"
        time.sleep(0.01)


def reader(n: int) -> str:
    return f"reader{n}@example.org"


def test_killed_with_sigkill_then_rerun_no_one_gets_two_copies(slow_run, smtp, issue_file, env):
    proc = start_send(issue_file, slow_run)
    wait_for_messages(smtp, proc, 20)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(smtp.recorder.messages) < COUNT, "the run ended before the kill; slow the server down"

    state = Path(env["MAILER_STATE_DIR"])
    after_kill = ledger_rows(state, ISSUE)
    in_flight = {k for k, r in after_kill.items() if r["status"] == "dot"}
    assert len(in_flight) <= CONNECTIONS
    assert {r["status"] for r in after_kill.values()} <= {"sent", "pending", "dot"}

    code = main(["send", str(issue_file)])
    rows = ledger_rows(state, ISSUE)
    in_doubt = {k for k, r in rows.items() if r["status"] == "in_doubt"}
    assert in_doubt == in_flight  # exactly those whose final dot had gone out
    assert code == (1 if in_doubt else 0)
    assert {r["status"] for r in rows.values()} <= {"sent", "in_doubt"}
    assert len(rows) == COUNT

    got = smtp.recorder.received()
    for n in range(COUNT):
        if reader(n) in in_doubt:
            assert got[reader(n)] <= 1, reader(n)
        else:
            assert got[reader(n)] == 1, reader(n)
    assert set(got) <= {reader(n) for n in range(COUNT)}


def test_sigterm_finishes_the_messages_in_flight_and_exits_75(slow_run, smtp, issue_file, env):
    proc = start_send(issue_file, slow_run)
    wait_for_messages(smtp, proc, 20)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err.decode()
    assert b"SIGTERM" in err
    received_then = smtp.recorder.received()
    assert sum(received_then.values()) < COUNT, "the run ended before the signal; slow the server down"

    state = Path(env["MAILER_STATE_DIR"])
    rows = ledger_rows(state, ISSUE)
    # Every message in flight was finished and recorded: the ledger agrees with the server.
    assert {r["status"] for r in rows.values()} <= {"sent", "pending"}
    assert {k for k, r in rows.items() if r["status"] == "sent"} == set(received_then)

    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {reader(n): 1 for n in range(COUNT)}
    assert {r["status"] for r in ledger_rows(state, ISSUE).values()} == {"sent"}


def test_the_report_counts_what_a_killed_run_delivered_and_tells_the_truth_about_doubt(
    slow_run, smtp, issue_file, env, capsys
):
    import json

    proc = start_send(issue_file, slow_run)
    wait_for_messages(smtp, proc, 20)
    proc.kill()
    proc.wait(timeout=30)
    state = Path(env["MAILER_STATE_DIR"])
    sent_by_killed = sum(1 for r in ledger_rows(state, ISSUE).values() if r["status"] == "sent")
    assert sent_by_killed >= 15  # the server had 20; the last few may be in flight
    assert main(["send", str(issue_file)]) in (0, 1)
    capsys.readouterr()
    assert main(["report", ISSUE, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["runs"] == 2
    assert body["delivered_by_runs"] == body["sent"]
    assert main(["report", ISSUE]) == 0
    out = capsys.readouterr().out
    first, second = [line for line in out.splitlines() if " run " in line and "send run" in line]
    assert f", {sent_by_killed} delivered" in first and "never ended" in first
    assert f"{body['sent']} delivered in 2 run(s)" in out
    if body["in_doubt"]:
        assert "Most such messages were in fact delivered" in out
        assert "second copy" in out
        assert not out.rstrip().splitlines()[-1].startswith("Retry")
