"""`mailer inbox` on bounces and delay warnings written by a real Postfix: the mailer sends
through the test relay, the relay returns what it could not deliver, and the inbox reads it
from the relay's Maildir."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ledger_rows

from mailer.cli import main

pytestmark = pytest.mark.relay
ISSUE = "2026-11-24"


@pytest.fixture
def relay_env(postfix, env, monkeypatch) -> Iterator:
    """The usual test settings, pointed at the real relay; deferred mail dropped after."""
    postfix.reset()
    for key, value in postfix.settings("plain").items():
        monkeypatch.setenv(key, value)
    yield postfix
    subprocess.run(["postsuper", "-c", str(postfix.etc), "-d", "ALL", "deferred"], capture_output=True)


def inbox(capsys, *argv: str) -> dict:
    capsys.readouterr()
    code = main(["inbox", "--json", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def send(tmp_path, issue_file, addresses: list[str]) -> None:
    (tmp_path / "subscribers.csv").write_text("email\n" + "\n".join(addresses) + "\n", encoding="utf-8")
    assert main(["send", str(issue_file)]) == 0


def by_kind(body: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for m in body["messages"]:
        found.setdefault(m["kind"], []).append(m)
    return found


def test_postfix_bounce_to_the_verp_address_and_its_delay_warning(
    relay_env, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    send(tmp_path, issue_file, ["gone1@example.org", "slow1@example.org", "ann@example.org"])
    bounces = relay_env.maildir("bounces")
    # The DSN for gone1, and at least one delay warning for slow1 (delay_warning_time is 1s).
    relay_env.wait_for(lambda: len(relay_env.messages("bounces")) >= 2, 90, "a bounce and a delay warning")
    raw = b"".join(p.read_bytes() for p in relay_env.messages("bounces"))
    assert b"Action: failed" in raw and b"Action: delayed" in raw
    assert b"Delivered-To: bounces+20261124-" in raw

    body = inbox(capsys, str(bounces))
    kinds = by_kind(body)
    assert [(m["address"], m["status"], m["issue"], m["outcome"]) for m in kinds["hard"]] == [
        ("gone1@example.org", "5.1.1", ISSUE, "suppressed")]
    assert body["other"] >= 1 and body["soft"] == 0  # the warning changes nothing
    rows = ledger_rows(tmp_path / "state", ISSUE)
    assert {k: r["status"] for k, r in rows.items()} == {
        "gone1@example.org": "bounced", "slow1@example.org": "sent", "ann@example.org": "sent"}
    # Read again: counted once.
    again = inbox(capsys, str(bounces))
    assert again["suppressed"] == 0
    assert all(m["outcome"].startswith(("already read", "left alone")) for m in again["messages"])


def test_postfix_headers_only_bounce_without_verp_is_known_by_our_message_id(
    relay_env, issue_file, tmp_path, capsys
) -> None:
    """No bounce address: the DSN goes to MAILER_FROM's address and, with bounce_size_limit
    small, returns only the headers (text/rfc822-headers); the Message-ID names the row."""
    previous = relay_env.postconf(bounce_size_limit="100")
    try:
        send(tmp_path, issue_file, ["gone2@example.org", "bob@example.org"])
        relay_env.wait_idle()
        relay_env.wait_for(lambda: len(relay_env.messages("all")) >= 2, 60, "the bounce to news@")
    finally:
        relay_env.postconf(**previous)
    returned = [p for p in relay_env.messages("all") if b"Action: failed" in p.read_bytes()]
    assert len(returned) == 1
    raw = returned[0].read_bytes()
    assert b"text/rfc822-headers" in raw and b"Message-ID: <2026-11-24." in raw
    body = inbox(capsys, str(relay_env.maildir("all")))
    hard = by_kind(body)["hard"]
    assert [(m["address"], m["issue"], m["outcome"]) for m in hard] == [
        ("gone2@example.org", ISSUE, "suppressed")]
    assert body["other"] == 1, body  # bob's copy of the issue, delivered
    assert ledger_rows(tmp_path / "state", ISSUE)["gone2@example.org"]["status"] == "bounced"


def test_postfix_gives_up_on_a_deferred_message_a_soft_bounce(
    relay_env, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    """maximal_queue_lifetime=0: Postfix returns a deferred message after its first attempt,
    `Action: failed` with the transient 4.4.1: counted, not suppressed."""
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    previous = relay_env.postconf(maximal_queue_lifetime="0", delay_warning_time="0")
    try:
        send(tmp_path, issue_file, ["slow3@example.org"])
        relay_env.wait_for(
            lambda: any(b"Action: failed" in p.read_bytes() for p in relay_env.messages("bounces")),
            90, "the returned message",
        )
    finally:
        relay_env.postconf(**previous)
    body = inbox(capsys, str(relay_env.maildir("bounces")))
    soft = by_kind(body)["soft"]
    assert [(m["address"], m["status"], m["issue"]) for m in soft] == [("slow3@example.org", "4.4.1", ISSUE)]
    assert soft[0]["outcome"] == "counted: 1 of 3 soft bounces in 30 days"
    assert body["suppressed"] == 0


def test_a_postfix_bounce_piped_to_the_installed_command(
    relay_env, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    """As a Postfix `pipe` transport runs it: `mailer inbox -`, the message on standard input,
    in a process of its own; a second delivery of the same bounce changes nothing."""
    import os
    import sys

    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    send(tmp_path, issue_file, ["gone3@example.org", "ann@example.org"])
    relay_env.wait_for(lambda: len(relay_env.messages("bounces")) >= 1, 90, "the bounce")
    raw = relay_env.messages("bounces")[0].read_bytes()
    mailer = [str(Path(sys.executable).parent / "mailer"), "inbox", "-"]
    outputs = []
    for _ in range(2):
        done = subprocess.run(mailer, input=raw, capture_output=True, env=dict(os.environ), timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.decode().splitlines()[0])
    assert outputs == [f"hard  gone3@example.org  5.1.1  {ISSUE}  suppressed",
                       f"hard  gone3@example.org  5.1.1  {ISSUE}  already read: nothing changed"]
    assert ledger_rows(tmp_path / "state", ISSUE)["gone3@example.org"]["status"] == "bounced"
