"""Resuming an issue with the list as it is now: nobody who was to get the issue is dropped by a
short list, someone who unsubscribed since is not sent to, and the list's faults are named."""

from __future__ import annotations

import pytest
from conftest import ledger_rows, write_csv, write_subscribers
from smtpserver import free_port

from mailer.cli import main

ISSUE = "2026-11-24"


def stopped_run(env, issue_file, monkeypatch) -> None:
    """A run that could not reach the relay: exit 75, everyone left pending."""
    monkeypatch.setenv("MAILER_SMTP_PORT", str(free_port()))
    monkeypatch.setenv("MAILER_MAX_ATTEMPTS", "1")
    assert main(["send", str(issue_file)]) == 75
    monkeypatch.setenv("MAILER_SMTP_PORT", env["MAILER_SMTP_PORT"])
    monkeypatch.setenv("MAILER_MAX_ATTEMPTS", env["MAILER_MAX_ATTEMPTS"])


def test_a_shorter_list_on_the_re_run_drops_no_one(env, smtp, issue_file, tmp_path, monkeypatch):
    listing = write_subscribers(tmp_path / "subscribers.csv", 30)
    stopped_run(env, issue_file, monkeypatch)
    lines = listing.read_text(encoding="utf-8").splitlines()
    listing.write_text("\n".join(lines[:11]) + "\n", encoding="utf-8")  # half-written export
    assert main(["send", str(issue_file)]) == 0
    assert len(smtp.recorder.received()) == 30
    assert set(smtp.recorder.received().values()) == {1}


def test_a_subscriber_set_active_again_gets_the_issue_on_the_re_run(
    env, smtp, issue_file, tmp_path, monkeypatch
):
    listing = write_csv(
        tmp_path / "subscribers.csv", "email,status\nann@example.org,active\nbo@example.org,unsubscribed\n"
    )
    assert main(["send", str(issue_file)]) == 0
    assert set(smtp.recorder.received()) == {"ann@example.org"}
    write_csv(listing, "email,status\nann@example.org,active\nbo@example.org,active\n")
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {"ann@example.org": 1, "bo@example.org": 1}


@pytest.mark.parametrize("command", [["send"], ["replay"]])
def test_unsubscribed_after_a_stopped_run_is_not_sent_by_the_resume(
    env, smtp, issue_file, tmp_path, monkeypatch, command, capsys
):
    write_subscribers(tmp_path / "subscribers.csv", 5)
    stopped_run(env, issue_file, monkeypatch)
    assert main(["unsubscribe", "reader3@example.org"]) == 0
    capsys.readouterr()
    if command == ["replay"]:
        assert main(["replay", ISSUE, "--dry-run"]) == 0
        listed = capsys.readouterr().out
        assert "reader2@example.org" in listed and "reader3@example.org" not in listed
    assert main([*command, str(issue_file)]) == 0
    assert "reader3@example.org" not in smtp.recorder.received()
    assert len(smtp.recorder.received()) == 4
    assert ledger_rows(tmp_path / "state", ISSUE)["reader3@example.org"]["status"] == "suppressed"


def test_a_list_with_only_a_header_is_refused(env, smtp, issue_file, tmp_path, capsys):
    write_csv(tmp_path / "subscribers.csv", "email,name\n")
    assert main(["send", str(issue_file)]) == 2
    assert "no subscribers in the list" in capsys.readouterr().err
    assert main(["send", str(issue_file), "--dry-run"]) == 2
    assert smtp.recorder.messages == []


def test_a_bad_byte_is_reported_on_its_own_row(env, smtp, issue_file, tmp_path, capsys):
    lines = [b"email,name"] + [f"reader{n}@example.org,Reader {n}".encode() for n in range(9998)]
    lines[4998] = b"broken@example.org,Caf\xe9"  # row 4999: the header is row 1
    (tmp_path / "subscribers.csv").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["send", str(issue_file)]) == 2
    assert "row 4999: not UTF-8" in capsys.readouterr().err
    assert smtp.recorder.messages == []


def test_an_unsubscribed_duplicate_of_an_international_address_wins(env, smtp, issue_file, tmp_path):
    write_csv(
        tmp_path / "subscribers.csv", "email,status\ne@exämple.org,active\nE@EXÄMPLE.ORG,unsubscribed\n"
    )
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.messages == []


def test_the_dry_run_plans_as_the_resume_will_send(env, smtp, issue_file, tmp_path, monkeypatch, capsys):
    """A pending row of a stopped run, unsubscribed since: the dry run does not list it."""
    write_subscribers(tmp_path / "subscribers.csv", 5)
    stopped_run(env, issue_file, monkeypatch)
    assert main(["unsubscribe", "reader1@example.org"]) == 0
    capsys.readouterr()
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "send  reader1@example.org" not in out
    assert "4 to send" in out and "1 suppressed" in out
