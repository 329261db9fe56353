"""`mailer inbox`: the classifier on returned messages in the formats real mail systems write,
and the command over ledgers written by real sends to the test SMTP server."""

from __future__ import annotations

import io
import json
import mailbox
import random
import sqlite3
from pathlib import Path

import pytest
from conftest import issue_for_date, ledger_rows

from mailer.bounces import classify
from mailer.cli import main
from mailer.tokens import make_token

RETURNED = Path(__file__).parent / "returned"
ISSUE = "2026-11-24"

# Who each returned message is about, as its own format says it.
FORMATS = {
    "exim.eml": ("hard", "5.1.1", "exim.user@example.net"),
    "exim_plain.eml": ("hard", "5.1.1", "exim.user@example.net"),
    "sendmail.eml": ("hard", "5.1.1", "sendmail.user@example.com"),
    "exchange.eml": ("hard", "5.0.0", "exchange.user@exchange.example.com"),
    "qmail.eml": ("hard", "5.1.1", "qmail.user@qmail.example.net"),
    "gmail.eml": ("hard", "5.1.1", "gmail.user@gmail.example"),
    "office365.eml": ("hard", "5.1.10", "o365.user@o365.example.com"),
    "soft.eml": ("soft", "4.2.2", "full@example.net"),
    "feedback_rcpt.eml": ("complaint", "", "complainer@isp.example"),
}
OTHER = ["delayed.eml", "autoreply.eml", "reply.eml", "feedback_authfail.eml", "garbage.eml"]
SUBSCRIBERS = [address for _, _, address in FORMATS.values()] + [
    "redacted.reader@fbl.example.net", "ann@example.org", "bob@example.net",
]


def fill(name: str, message_id: str = "<none@example.org>", verp: str = "", n: int = 1) -> bytes:
    raw = (RETURNED / name).read_bytes()
    return (raw.replace(b"{{message_id}}", message_id.encode()).replace(b"{{verp}}", verp.encode())
            .replace(b"{{n}}", str(n).encode()))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def inbox_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run(capsys, "inbox", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def write_list(path: Path, addresses: list[str]) -> None:
    path.write_text("email,name\n" + "".join(f"{a},\n" for a in addresses), encoding="utf-8")


def sent_ids(smtp) -> dict[str, str]:
    """The Message-ID and envelope sender of each message the server received, by recipient."""
    from email import message_from_bytes

    found = {}
    for sender, rcpts, data in smtp.recorder.messages:
        msg = message_from_bytes(data)
        found[rcpts[0].lower()] = (msg["Message-ID"], sender)
    return found


def maildir(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.Maildir(path, create=True)
    for raw in messages:
        box.add(raw)
    return path


def suppressions(state: Path) -> dict[str, str]:
    db = sqlite3.connect(state / "ledger.sqlite3")
    try:
        return dict(db.execute("SELECT key, reason FROM suppressions").fetchall())
    finally:
        db.close()


# -- the classifier, alone ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_is_classified_with_its_address_and_status(name: str) -> None:
    kind, status, address = FORMATS[name]
    finding = classify(fill(name))
    assert (finding.kind, finding.status) == (kind, status)
    assert finding.recipients and finding.recipients[0] == address


@pytest.mark.parametrize("name", OTHER)
def test_warnings_replies_and_junk_are_other(name: str) -> None:
    assert classify(fill(name, "<2026-11-24.0123456789abcdef0123456789abcdef@example.org>")).kind == "other"


def test_a_redacted_feedback_report_is_a_complaint_known_by_our_message_id() -> None:
    ours = "<2026-11-24.0123456789abcdef0123456789abcdef@example.org>"
    finding = classify(fill("feedback_redacted.eml", ours))
    assert finding.kind == "complaint"
    assert finding.recipients == []
    assert finding.message_ids == [("2026-11-24", "0123456789abcdef0123456789abcdef")]


def test_the_same_message_has_the_same_identity_and_a_different_one_does_not() -> None:
    assert classify(fill("soft.eml", n=1)).identity == classify(fill("soft.eml", n=1)).identity
    assert classify(fill("soft.eml", n=1)).identity != classify(fill("soft.eml", n=2)).identity


@pytest.mark.parametrize("path", sorted(RETURNED.glob("*.eml")), ids=lambda p: p.name)
def test_a_damaged_message_never_raises(path: Path) -> None:
    """Cut short anywhere, with junk appended or bytes flipped: a kind, never an exception."""
    raw = path.read_bytes()
    rng = random.Random(path.name)
    for cut in range(0, len(raw), 7):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        damaged = bytearray(raw[:cut] + junk + raw[cut + 3:])
        for _ in range(3):
            damaged[rng.randrange(len(damaged))] = rng.choice(b"\x00\xff;:<>@\r\n-")
        finding = classify(bytes(damaged), secret="test-secret-16ch", unsubscribe_to="unsub@example.org")
        assert finding.kind in ("hard", "soft", "complaint", "unsubscribe", "other")


def test_a_mailed_unsubscribe_needs_a_genuine_token_sent_to_the_unsubscribe_address() -> None:
    token = make_token("test-secret-16ch", "ann@example.org")

    def mail(to: str, subject: str, body: str = "", auto: str = "") -> bytes:
        extra = f"Auto-Submitted: {auto}\n" if auto else ""
        return (f"From: ann@example.org\nTo: {to}\nSubject: {subject}\nMessage-ID: <u{hash(subject)}@x>\n"
                f"{extra}\n{body}\n").encode()

    def kind(raw: bytes) -> tuple[str, list[str]]:
        f = classify(raw, secret="test-secret-16ch", unsubscribe_to="unsub@example.org")
        return f.kind, f.recipients

    assert kind(mail("unsub@example.org", f"unsubscribe {token}")) == ("unsubscribe", ["ann@example.org"])
    assert kind(mail("unsub@example.org", "please", f"unsubscribe {token}\n")) == (
        "unsubscribe", ["ann@example.org"])
    forged = make_token("another-secret", "ann@example.org")
    assert kind(mail("unsub@example.org", f"unsubscribe {forged}"))[0] == "other"
    # A reply to the newsletter quotes the footer, with its token: not an unsubscribe.
    quoting = mail("news@example.org", "Re: ten stories", f"> unsubscribe: https://x/{token}")
    assert kind(quoting)[0] == "other"
    assert kind(mail("unsub@example.org", f"Auto: unsubscribe {token}", auto="auto-replied"))[0] == "other"


# -- the command over real sends --------------------------------------------------------------


@pytest.fixture
def sent(env, smtp, issue_file, tmp_path, capsys) -> dict[str, tuple[str, str]]:
    """The issue really sent to every subscriber the returned messages are about."""
    write_list(tmp_path / "subscribers.csv", SUBSCRIBERS)
    code, _, err = run(capsys, "send", str(issue_file))
    assert code == 0, err
    return sent_ids(smtp)


def test_inbox_suppresses_bounced_and_complaining_addresses_and_reading_again_changes_nothing(
    sent, tmp_path, capsys
) -> None:
    messages = [fill(name, sent[FORMATS[name][2]][0]) for name in FORMATS if name != "soft.eml"]
    messages.append(fill("feedback_redacted.eml", sent["redacted.reader@fbl.example.net"][0]))
    messages += [fill(name, sent["ann@example.org"][0]) for name in OTHER]
    box = maildir(tmp_path / "bounces", messages)
    body = inbox_json(capsys, str(box))
    assert {k: body[k] for k in ("hard", "soft", "complaint", "unsubscribe", "other")} == {
        "hard": 7, "soft": 0, "complaint": 2, "unsubscribe": 0, "other": len(OTHER)}
    state = tmp_path / "state"
    expected = {a: "bounced" for n, (k, _, a) in FORMATS.items() if k == "hard"}
    expected |= {"complainer@isp.example": "complained", "redacted.reader@fbl.example.net": "complained"}
    assert suppressions(state) == expected
    rows = ledger_rows(state, ISSUE)
    assert {k: r["status"] for k, r in rows.items() if r["status"] != "sent"} == expected
    for m in body["messages"]:
        if m["kind"] != "other":
            assert m["issue"] == ISSUE and m["address"] in expected
    report = json.loads(run(capsys, "report", ISSUE, "--json")[1])
    # exim.eml and exim_plain.eml are about one address: six bounced; ann, bob and full still sent
    assert (report["bounced"], report["complained"], report["sent"]) == (6, 2, 3)
    code, out, _ = run(capsys, "suppressed")
    assert "gmail.user@gmail.example\tbounced" in out and f"5.1.1 returned, issue {ISSUE}" in out
    assert "complainer@isp.example\tcomplained" in out
    csv_out = run(capsys, "report", ISSUE, "--csv")[1]
    assert ",complainer@isp.example,,complained," in csv_out

    before = (suppressions(state), ledger_rows(state, ISSUE))
    again = inbox_json(capsys, str(box))
    assert all(m["outcome"].startswith(("already read", "left alone")) for m in again["messages"])
    assert again["suppressed"] == 0
    assert (suppressions(state), ledger_rows(state, ISSUE)) == before


def test_the_text_output_is_one_line_per_message_then_a_summary(sent, tmp_path, capsys) -> None:
    box = maildir(tmp_path / "b", [fill("gmail.eml", sent["gmail.user@gmail.example"][0]),
                                   fill("delayed.eml")])
    code, out, _ = run(capsys, "inbox", str(box))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert f"hard  gmail.user@gmail.example  5.1.1  {ISSUE}  suppressed" in lines
    assert "other  -  -  -  left alone" in lines
    assert lines[-1].startswith("2 message(s) read: 1 hard, 0 soft, 0 complaint, 0 unsubscribe, 1 other")


def test_a_dry_run_changes_nothing(sent, tmp_path, capsys) -> None:
    box = maildir(tmp_path / "b", [fill("qmail.eml")])
    body = inbox_json(capsys, "--dry-run", str(box))
    assert body["messages"][0]["outcome"] == "would suppress"
    assert suppressions(tmp_path / "state") == {}
    assert inbox_json(capsys, str(box))["messages"][0]["outcome"] == "suppressed"


def test_a_bounce_about_an_address_never_sent_to_changes_nothing(sent, tmp_path, capsys) -> None:
    raw = fill("qmail.eml").replace(b"qmail.user@", b"stranger@")
    box = maildir(tmp_path / "b", [raw])
    body = inbox_json(capsys, str(box))
    assert body["messages"][0]["address"] == "stranger@qmail.example.net"
    assert body["messages"][0]["outcome"] == "not an address this list sent to: nothing changed"
    assert suppressions(tmp_path / "state") == {}


def test_soft_bounces_from_three_issues_within_30_days_suppress(
    env, smtp, issue_file, tmp_path, capsys
) -> None:
    write_list(tmp_path / "subscribers.csv", ["full@example.net", "ann@example.org"])
    ids = []
    for date in ("2026-11-24", "2026-11-25", "2026-11-26"):
        smtp.recorder.messages.clear()
        assert run(capsys, "send", str(issue_for_date(issue_file, date)))[0] == 0
        ids.append(sent_ids(smtp)["full@example.net"][0])
    state = tmp_path / "state"
    first = inbox_json(capsys, str(maildir(tmp_path / "b1", [fill("soft.eml", ids[0], n=1)])))
    assert first["messages"][0]["outcome"] == "counted: 1 of 3 soft bounces in 30 days"
    # The same issue again, in another message: still one issue.
    second = inbox_json(capsys, str(maildir(tmp_path / "b2", [fill("soft.eml", ids[0], n=2)])))
    assert second["messages"][0]["outcome"] == "counted: 1 of 3 soft bounces in 30 days"
    third = inbox_json(capsys, str(maildir(tmp_path / "b3", [fill("soft.eml", ids[1], n=3)])))
    assert third["messages"][0]["outcome"] == "counted: 2 of 3 soft bounces in 30 days"
    assert suppressions(state) == {}
    last = inbox_json(capsys, str(maildir(tmp_path / "b4", [fill("soft.eml", ids[2], n=4)])))
    assert last["messages"][0]["outcome"] == "suppressed: 3 soft bounces in 30 days"
    assert last["messages"][0]["issue"] == "2026-11-26"
    assert suppressions(state) == {"full@example.net": "bounced"}
    # A soft bounce leaves the row `sent`: the message may yet have been delivered elsewhere.
    assert ledger_rows(state, "2026-11-26")["full@example.net"]["status"] == "sent"


def test_soft_bounce_limit_setting(env, smtp, issue_file, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAILER_SOFT_BOUNCE_LIMIT", "1")
    write_list(tmp_path / "subscribers.csv", ["full@example.net"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    returned = fill("soft.eml", sent_ids(smtp)["full@example.net"][0])
    body = inbox_json(capsys, str(maildir(tmp_path / "b", [returned])))
    assert body["messages"][0]["outcome"] == "suppressed: 1 soft bounces in 30 days"
    monkeypatch.setenv("MAILER_SOFT_BOUNCE_LIMIT", "0")
    code, _, err = run(capsys, "inbox", str(tmp_path / "b"))
    assert code == 2 and err.startswith("mailer inbox: MAILER_SOFT_BOUNCE_LIMIT:")


def test_a_send_a_hard_bounce_then_the_next_issue_skips_the_address(
    env, smtp, issue_file, tmp_path, capsys
) -> None:
    write_list(tmp_path / "subscribers.csv", ["gmail.user@gmail.example", "ann@example.org"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    message_id = sent_ids(smtp)["gmail.user@gmail.example"][0]
    assert inbox_json(capsys, str(maildir(tmp_path / "b", [fill("gmail.eml", message_id)])))["hard"] == 1
    smtp.recorder.messages.clear()
    # The bounced issue's re-run: its row is done (bounced), nothing is sent again, exit 0.
    assert run(capsys, "send", str(issue_file))[0] == 0
    assert smtp.recorder.messages == []
    assert run(capsys, "send", str(issue_for_date(issue_file, "2026-11-25")))[0] == 0
    assert [r[0] for _, r, _ in smtp.recorder.messages] == ["ann@example.org"]
    report = json.loads(run(capsys, "report", "2026-11-25", "--json")[1])
    assert (report["sent"], report["suppressed"]) == (1, 1)
    assert "bounced (5.1.1 returned, issue 2026-11-24)" in report["not_sent"][0]["reason"]


def test_a_mailed_unsubscribe_is_honoured(sent, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAILER_UNSUBSCRIBE_MAILTO", "unsub@example.org")
    token = make_token("test-secret-16ch", "bob@example.net")
    raw = (f"From: bob@example.net\nTo: unsub@example.org\nSubject: unsubscribe {token}\n"
           "Message-ID: <u1@example.net>\n\n").encode()
    body = inbox_json(capsys, str(maildir(tmp_path / "b", [raw])))
    assert body["unsubscribe"] == 1 and body["messages"][0]["address"] == "bob@example.net"
    assert suppressions(tmp_path / "state") == {"bob@example.net": "unsubscribed"}


# -- sources ----------------------------------------------------------------------------------


def test_sources_mbox_file_and_standard_input(sent, tmp_path, capsys, monkeypatch) -> None:
    box = mailbox.mbox(tmp_path / "bounces.mbox")
    box.add(fill("qmail.eml"))
    box.add(fill("delayed.eml"))
    box.flush()
    one = tmp_path / "one.eml"
    one.write_bytes(fill("sendmail.eml"))

    class Stdin:
        buffer = io.BytesIO(fill("exim.eml"))

    monkeypatch.setattr("sys.stdin", Stdin)
    body = inbox_json(capsys, str(tmp_path / "bounces.mbox"), str(one), "-")
    assert [(m["kind"], m["address"]) for m in body["messages"]] == [
        ("hard", "qmail.user@qmail.example.net"), ("other", None),
        ("hard", "sendmail.user@example.com"), ("hard", "exim.user@example.net")]
    assert {m["source"] for m in body["messages"]} == {str(tmp_path / "bounces.mbox"), str(one), "-"}


@pytest.mark.parametrize("make", ["missing", "plain-folder", "unreadable"])
def test_a_source_that_cannot_be_read_is_one_line_and_exit_2(env, tmp_path, capsys, make) -> None:
    target = tmp_path / "src"
    if make == "plain-folder":
        target.mkdir()
    elif make == "unreadable":
        target.mkdir()
        target = target / "bounce.eml"
        target.mkdir()  # a folder where a message file is expected
    code, out, err = run(capsys, "inbox", str(target))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err


def test_without_a_source_the_imap_settings_are_required(env, capsys) -> None:
    code, _, err = run(capsys, "inbox")
    assert code == 2
    assert "MAILER_INBOX_IMAP_HOST: required" in err


def test_config_shows_the_inbox_settings_with_the_password_masked(clean, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAILER_INBOX_IMAP_PASSWORD", "hunter2-imap")
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    code, out, _ = run(capsys, "config")
    assert code == 0 and "hunter2" not in out
    for line in ("MAILER_INBOX_IMAP_PASSWORD=********", "MAILER_INBOX_IMAP_PORT=993",
                 "MAILER_INBOX_IMAP_FOLDER=INBOX", "MAILER_INBOX_DONE_FOLDER=Processed",
                 "MAILER_SOFT_BOUNCE_LIMIT=3", "MAILER_BOUNCE_ADDRESS=bounces@example.org",
                 "MAILER_INBOX_IMAP_HOST=(not set)"):
        assert line in out.splitlines()


# -- VERP ---------------------------------------------------------------------------------------


def test_with_a_bounce_address_each_message_has_its_own_verp_envelope_sender(
    env, smtp, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    write_list(tmp_path / "subscribers.csv", ["ann@example.org", "bob@example.net"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    senders = {r: s for r, (_, s) in sent_ids(smtp).items()}
    assert len(set(senders.values())) == 2
    for sender in senders.values():
        local, _, domain = sender.rpartition("@")
        assert domain == "example.org" and local.startswith("bounces+20261124-")
        assert len(local) <= 64 and local == local.lower()
    # A test send is not a delivery of the issue: its envelope sender is the plain From.
    smtp.recorder.messages.clear()
    assert run(capsys, "send", str(issue_file), "--to", "me@example.org")[0] == 0
    assert smtp.recorder.messages[0][0] == "news@example.org"


def test_without_a_bounce_address_the_envelope_sender_is_from(
    env, smtp, issue_file, tmp_path, capsys
) -> None:
    write_list(tmp_path / "subscribers.csv", ["ann@example.org"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    assert smtp.recorder.messages[0][0] == "news@example.org"


def test_a_bounce_to_the_verp_address_about_a_forwarding_target_finds_the_subscriber(
    env, smtp, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    """ann@example.org forwards to new-home@elsewhere.example, which bounces: the report names
    only the target, the VERP address it was returned to names Ann."""
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", "bounces@example.org")
    write_list(tmp_path / "subscribers.csv", ["ann@example.org", "bob@example.net"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    verp = sent_ids(smtp)["ann@example.org"][1]
    body = inbox_json(capsys, str(maildir(tmp_path / "b", [fill("forwarded.eml", verp=verp)])))
    assert body["messages"][0] | {"source": ""} == {
        "kind": "hard", "address": "ann@example.org", "status": "5.1.1", "issue": ISSUE,
        "outcome": "suppressed", "source": ""}
    assert suppressions(tmp_path / "state") == {"ann@example.org": "bounced"}
    # A token altered by one character is no one's: the report's own address is tried, and
    # the list never sent to it.
    local, _, domain = verp.rpartition("@")
    forged = local[:-1] + ("b" if local[-1] == "a" else "a") + "@" + domain
    body = inbox_json(capsys, str(maildir(tmp_path / "c", [fill("forwarded.eml", verp=forged, n=2)])))
    assert body["messages"][0]["address"] == "new-home@elsewhere.example"
    assert body["messages"][0]["outcome"] == "not an address this list sent to: nothing changed"


@pytest.mark.parametrize("value", ["not an address", "Bounces <b@example.org>",
                                   "a-very-long-local-part-that-leaves-no-room-for-a-token@example.org"])
def test_a_bad_bounce_address_is_refused(clean, capsys, monkeypatch, value) -> None:
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", value)
    code, _, err = run(capsys, "config")
    assert code == 2 and err.startswith("mailer config: MAILER_BOUNCE_ADDRESS:")


def test_without_an_unsubscribe_address_only_the_subject_is_read(sent, smtp, tmp_path, capsys) -> None:
    """A copy of the newsletter itself (forwarded, or a returned copy) carries the reader's
    token in its footer: it unsubscribes no one."""
    copy = smtp.recorder.messages[0][2]
    token = make_token("test-secret-16ch", "bob@example.net")
    asked = (f"From: bob@example.net\nTo: news@example.org\nSubject: unsubscribe {token}\n"
             "Message-ID: <u2@example.net>\n\n").encode()
    body = inbox_json(capsys, str(maildir(tmp_path / "b", [copy, asked])))
    assert sorted((m["kind"], str(m["address"])) for m in body["messages"]) == [
        ("other", "None"), ("unsubscribe", "bob@example.net")]


def test_the_verp_address_fits_a_local_part_at_the_longest_bounce_address_allowed(
    clean, capsys, monkeypatch
) -> None:
    from mailer.verp import envelope_sender

    local = "b" * 38
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", f"{local}@example.org")
    assert run(capsys, "config")[0] == 0
    sender = envelope_sender(f"{local}@example.org", "test-secret-16ch", ISSUE, "Ann.Long.Name@Example.org")
    assert len(sender.partition("@")[0]) == 64
    same = envelope_sender(f"{local}@example.org", "test-secret-16ch", ISSUE, "ann.long.name@example.org")
    assert sender == same
    monkeypatch.setenv("MAILER_BOUNCE_ADDRESS", f"{local}b@example.org")
    assert run(capsys, "config")[0] == 2


def test_a_ledger_held_by_another_writer_is_exit_75_and_nothing_is_lost(
    sent, tmp_path, capsys, monkeypatch
) -> None:
    """The ledger locked past the busy timeout (shortened here): exit 75, the message unread,
    so that the next run (or Postfix's retry of a pipe) reads it again."""
    monkeypatch.setattr(sqlite3, "connect", _short_timeout(sqlite3.connect))
    holder = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
    holder.execute("BEGIN IMMEDIATE")
    try:
        code, _, err = run(capsys, "inbox", str(maildir(tmp_path / "b", [fill("qmail.eml")])))
    finally:
        holder.rollback()
        holder.close()
    assert code == 75 and "the ledger cannot be written" in err and len(err.splitlines()) == 1
    assert inbox_json(capsys, str(tmp_path / "b"))["messages"][0]["outcome"] == "suppressed"


def _short_timeout(connect):
    def short(*args, **kwargs):
        db = connect(*args, **{**kwargs, "timeout": 0.2})
        real = db.execute

        class Wrapped:
            def __getattr__(self, name):
                return getattr(db, name)

            def execute(self, sql, *rest):
                if sql.startswith("PRAGMA busy_timeout"):
                    sql = "PRAGMA busy_timeout=200"
                return real(sql, *rest)

        return Wrapped()

    return short
