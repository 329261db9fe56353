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


def test_a_list_that_lost_most_of_its_rows_is_refused_unless_removals_are_allowed(
    env, smtp, issue_file, tmp_path, monkeypatch, capsys
):
    """A half-written export on the re-run: exit 2 and nothing sent; with --allow-removals,
    those still in the list get it and those missing stay pending, not sent to."""
    listing = write_subscribers(tmp_path / "subscribers.csv", 30)
    stopped_run(env, issue_file, monkeypatch)
    lines = listing.read_text(encoding="utf-8").splitlines()
    listing.write_text("\n".join(lines[:11]) + "\n", encoding="utf-8")  # half-written export
    capsys.readouterr()
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "lacks 20 of the 30 recipients" in err and "--allow-removals" in err
    assert main(["send", str(issue_file), "--dry-run"]) == 2
    assert smtp.recorder.messages == []
    capsys.readouterr()
    assert main(["send", str(issue_file), "--dry-run", "--allow-removals"]) == 0
    assert "10 to send" in capsys.readouterr().out
    assert main(["send", str(issue_file), "--allow-removals"]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(10)}
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert [rows[f"reader{n}@example.org"]["status"] for n in range(10, 30)] == ["pending"] * 20


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


def test_replay_after_the_list_marks_someone_unsubscribed_does_not_send_to_them(
    env, smtp, issue_file, tmp_path, capsys
):
    listing = write_subscribers(tmp_path / "subscribers.csv", 5)
    smtp.recorder.scripts = {"reader1@example.org": ["451"] * 3, "reader3@example.org": ["451"] * 3}
    assert main(["send", str(issue_file)]) == 1  # both failed after their retries
    text = listing.read_text(encoding="utf-8").replace("reader3@example.org,Reader 3,active",
                                                       "reader3@example.org,Reader 3,unsubscribed")
    listing.write_text(text, encoding="utf-8")
    capsys.readouterr()
    assert main(["replay", ISSUE, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "reader1@example.org" in listed and "reader3@example.org" not in listed
    assert main(["replay", ISSUE]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in (0, 1, 2, 4)}
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert rows["reader3@example.org"]["status"] == "skipped"


def test_replay_takes_the_list_it_is_given(env, smtp, issue_file, tmp_path):
    write_subscribers(tmp_path / "subscribers.csv", 3)
    smtp.recorder.scripts = {"reader2@example.org": ["451"] * 3}
    assert main(["send", str(issue_file)]) == 1
    other = write_csv(tmp_path / "other.csv", "email,status\nreader0@example.org,\nreader1@example.org,\n"
                      "reader2@example.org,unsubscribed\n")
    assert main(["replay", ISSUE, "--subscribers", str(other)]) == 0
    assert "reader2@example.org" not in smtp.recorder.received()
    assert main(["replay", ISSUE, "--subscribers", str(tmp_path / "nowhere.csv")]) == 2


@pytest.mark.parametrize("command", ["send", "replay"])
def test_a_list_that_lost_a_fifth_of_its_pending_rows_is_refused_unless_allowed(
    env, smtp, issue_file, tmp_path, monkeypatch, capsys, command
):
    listing = write_subscribers(tmp_path / "subscribers.csv", 50)
    stopped_run(env, issue_file, monkeypatch)
    lines = listing.read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [line for n, line in enumerate(lines[1:]) if n % 5]  # every fifth row gone
    listing.write_text("\n".join(kept) + "\n", encoding="utf-8")
    target = str(issue_file) if command == "send" else ISSUE
    capsys.readouterr()
    assert main([command, target]) == 2
    assert "lacks 10 of the 50 recipients" in capsys.readouterr().err
    assert smtp.recorder.messages == []
    assert main([command, target, "--allow-removals"]) == 0
    got = smtp.recorder.received()
    assert got == {f"reader{n}@example.org": 1 for n in range(50) if n % 5}
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert {rows[f"reader{n}@example.org"]["status"] for n in range(0, 50, 5)} == {"pending"}


def test_a_list_missing_a_few_is_sent_without_them(env, smtp, issue_file, tmp_path, monkeypatch, capsys):
    """Under a tenth missing: no flag needed; they are not sent to and stay pending."""
    listing = write_subscribers(tmp_path / "subscribers.csv", 30)
    stopped_run(env, issue_file, monkeypatch)
    lines = listing.read_text(encoding="utf-8").splitlines()
    listing.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")  # the last two rows gone
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "28 to send" in out and "2 of an earlier plan missing from the list" in out
    assert main(["send", str(issue_file)]) == 0
    assert len(smtp.recorder.received()) == 28
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert rows["reader29@example.org"]["status"] == "pending"


def test_addresses_unsubscribed_and_then_taken_out_of_the_list_are_not_missed(
    env, smtp, issue_file, tmp_path, monkeypatch
):
    """The 10% guard is about a half-written export, not about people who left."""
    listing = write_subscribers(tmp_path / "subscribers.csv", 30)
    stopped_run(env, issue_file, monkeypatch)
    for n in range(5):
        assert main(["unsubscribe", f"reader{n}@example.org"]) == 0
    lines = listing.read_text(encoding="utf-8").splitlines()
    listing.write_text("\n".join([lines[0], *lines[6:]]) + "\n", encoding="utf-8")  # their rows gone
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(5, 30)}


def test_a_failed_reader_who_unsubscribes_is_no_longer_owed_the_issue(env, smtp, issue_file, tmp_path):
    """Refused (5.7.1, not suppressed), then unsubscribed: later runs of the issue end in 0,
    not in exit 1 for ever, and nobody is sent anything more."""
    write_subscribers(tmp_path / "subscribers.csv", 12)
    smtp.recorder.scripts = {"reader3@example.org": ["rcpt:554"]}
    assert main(["send", str(issue_file)]) == 1
    assert ledger_rows(tmp_path / "state", "2026-11-24")["reader3@example.org"]["status"] == "failed"
    assert main(["unsubscribe", "reader3@example.org"]) == 0
    received = sum(smtp.recorder.received().values())
    assert main(["send", str(issue_file)]) == 0
    assert main(["replay", str(issue_file), "--permanent"]) == 0
    assert sum(smtp.recorder.received().values()) == received
    row = ledger_rows(tmp_path / "state", "2026-11-24")["reader3@example.org"]
    assert row["status"] == "suppressed" and row["last_code"] == 554
