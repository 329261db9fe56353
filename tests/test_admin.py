"""The admin's commands (report, replay, the suppression list) over ledgers written by real
sends to the test SMTP server: never hand-made rows."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import write_subscribers
from smtpserver import free_port

from mailer.cli import main
from mailer.delivery import run_lock
from mailer.tokens import make_token

# One run with every way of missing someone. MAILER_MAX_ATTEMPTS is 3 in the `env` fixture, so
# three 451s exhaust the transient retries.
LIST = """email,name,status
first@example.org,First,
trans@example.org,Trans,active
perm@example.org,Perm,
doubt@example.org,Doubt,
not-an-address,Bad,
gone@example.org,Gone,unsubscribed
sup@example.org,Sup,
last@example.org,Last,
"""
FAULTS = {
    "trans@example.org": ["451", "451", "451"],
    "perm@example.org": ["rcpt:550"],  # 5.1.1 at RCPT: evidence about the address
    "doubt@example.org": ["drop-dot"],
}
DELIVERED = ["first@example.org", "last@example.org"]
COUNTS = {"sent": 2, "failed": 2, "in_doubt": 1, "suppressed": 1, "skipped": 2, "pending": 0}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command in-process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def report_json(capsys: pytest.CaptureFixture[str], issue: str) -> dict:
    code, out, _ = run(capsys, "report", issue, "--json")
    assert code == 0
    return json.loads(out)


def counts_of(body: dict) -> dict[str, int]:
    return {k: body[k] for k in COUNTS}


def write_issue(issue_data: dict, issues_dir: Path, date: str) -> Path:
    """Another issue: the example with another date, in a file named after it."""
    path = issues_dir / f"{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(issue_data | {"date": date}), encoding="utf-8")
    return path


@pytest.fixture
def scenario(env, smtp, issue_file, tmp_path, capsys) -> Path:
    """A real run with a transient-exhausted, a permanent (550) and an in-doubt failure, two
    skipped rows (a bad address, an `unsubscribed` status) and one suppressed address. After it
    the server accepts everything (the scripts are used up)."""
    (tmp_path / "subscribers.csv").write_text(LIST, encoding="utf-8")
    assert run(capsys, "unsubscribe", "sup@example.org")[0] == 0
    smtp.recorder.scripts = {k: list(v) for k, v in FAULTS.items()}
    code, _, _ = run(capsys, "send", str(issue_file))
    assert code == 1
    got = smtp.recorder.received()
    # The in-doubt message reached the server, which dropped the connection before replying.
    assert got == {"first@example.org": 1, "last@example.org": 1, "doubt@example.org": 1}
    assert smtp.recorder.attempts["trans@example.org"] == 3
    assert smtp.recorder.scripts == {"trans@example.org": [], "perm@example.org": [],
                                     "doubt@example.org": []}
    return issue_file


# -- report -------------------------------------------------------------------------------


def test_report_counts_runs_and_failures(scenario, capsys):
    code, out, err = run(capsys, "report", str(scenario))
    assert code == 0
    for status, n in COUNTS.items():
        assert re.search(rf"^\s+{status}\s+{n}$", out, re.M), (status, out)
    # When the run started and ended, and the rate.
    (started, ended), = re.findall(r"send run \d+: (\S+) to (\S+),", out)
    assert dt.datetime.fromisoformat(started) <= dt.datetime.fromisoformat(ended)
    rate = re.search(r"^\s+2 delivered in 1 run\(s\) at ([\d.]+) messages/s$", out, re.M)
    assert rate and float(rate.group(1)) > 0
    # Each failure with its attempts and its last SMTP code and text.
    lines = {line.split()[0]: line for line in out.splitlines() if "@" in line}
    assert re.search(r"failed \(after retries\).*after 3 attempt.*451 4\.3\.0 Temporary local problem",
                     lines["trans@example.org"])
    assert re.search(r"failed \(permanent\).*after 1 attempt.*550 5\.1\.1 No such user here",
                     lines["perm@example.org"])
    assert re.search(r"in_doubt.*after 1 attempt.*final dot", lines["doubt@example.org"])
    # And who else is missing, and why.
    assert re.search(r"skipped.*status is 'unsubscribed'", lines["gone@example.org"])
    assert re.search(r"skipped.*invalid address", lines["not-an-address"])
    assert re.search(r"suppressed.*unsubscribed", lines["sup@example.org"])
    for address in DELIVERED:
        assert address not in lines
    assert "replay" in out and "--in-doubt" in out and "--permanent" in out
    # The in-doubt message was delivered (the server has it): the report says most are, and
    # does not advise resending them as it advises retrying the failures.
    assert "Retry the failures with: mailer replay 2026-11-24 --permanent" in out
    assert "Most such messages were in fact delivered" in out
    assert "Retry with" not in out


def test_report_json_is_one_object(scenario, capsys):
    code, out, _ = run(capsys, "report", str(scenario), "--json")
    assert code == 0
    body = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(body, dict)
    assert body["issue"] == "2026-11-24"
    for key, n in COUNTS.items():
        assert type(body[key]) is int and body[key] == n, key
    started = dt.datetime.fromisoformat(body["started_at"])
    assert started <= dt.datetime.fromisoformat(body["ended_at"])
    assert body["rate_per_second"] > 0
    failures = {f["email"]: f for f in body["failures"]}
    assert set(failures) == {"trans@example.org", "perm@example.org", "doubt@example.org"}
    assert (failures["trans@example.org"]["attempts"], failures["trans@example.org"]["last_code"]) == (3, 451)
    assert (failures["perm@example.org"]["attempts"], failures["perm@example.org"]["last_code"]) == (1, 550)
    assert "No such user" in failures["perm@example.org"]["last_message"]


def test_report_csv_one_row_per_recipient(scenario, capsys):
    code, out, _ = run(capsys, "report", str(scenario), "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {"email", "status", "attempts", "last_code", "last_message", "reason"} <= set(rows[0])
    by_email = {r["email"]: r for r in rows}
    assert len(rows) == len(by_email) == 8
    assert {r["status"] for r in rows} <= set(COUNTS)
    assert {s: sum(r["status"] == s for r in rows) for s in COUNTS} == COUNTS
    assert by_email["trans@example.org"]["attempts"] == "3"
    assert by_email["trans@example.org"]["last_code"] == "451"
    assert by_email["perm@example.org"]["last_code"] == "550"
    assert by_email["doubt@example.org"]["status"] == "in_doubt"
    assert "unsubscribed" in by_email["gone@example.org"]["reason"]
    assert "unsubscribed" in by_email["sup@example.org"]["reason"]


def test_report_of_an_issue_never_sent(env, smtp, issue_file, issue_data, tmp_path, capsys):
    # No ledger at all yet.
    code, out, err = run(capsys, "report", str(issue_file))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "nothing has been sent" in err, err
    # A ledger that knows another issue only.
    write_subscribers(tmp_path / "subscribers.csv", 2)
    assert run(capsys, "send", str(issue_file))[0] == 0
    other = write_issue(issue_data, tmp_path / "issues", "2026-11-25")
    for arg in (str(other), "2026-11-25", "2026-12-31"):
        code, out, err = run(capsys, "report", arg)
        assert (code, out) == (2, "")
        assert len(err.splitlines()) == 1, err
        assert re.search(r"issue 2026-1\d-\d\d has never been sent", err), err


def test_report_resolves_a_path_a_date_and_today(env, smtp, issue_data, tmp_path, capsys):
    today = dt.date.today().isoformat()
    path = write_issue(issue_data, tmp_path / "issues", today)
    write_subscribers(tmp_path / "subscribers.csv", 3)
    assert run(capsys, "send", "today")[0] == 0
    bodies = [report_json(capsys, arg) for arg in ("today", today, str(path))]
    assert all(b["issue"] == today and b["sent"] == 3 for b in bodies)
    # The report needs only the date, not the issue file any more.
    path.unlink()
    assert report_json(capsys, today)["sent"] == 3


def test_report_counts_pending_after_an_outage(env, issue_file, tmp_path, capsys, monkeypatch):
    write_subscribers(tmp_path / "subscribers.csv", 5)
    monkeypatch.setenv("MAILER_SMTP_PORT", str(free_port()))  # nothing listens there
    code, _, err = run(capsys, "send", str(issue_file))
    assert code == 75
    body = report_json(capsys, "2026-11-24")
    assert counts_of(body) == {"sent": 0, "failed": 0, "in_doubt": 0, "suppressed": 0, "skipped": 0,
                               "pending": 5}


# -- replay -------------------------------------------------------------------------------


def test_replay_resends_only_failures_after_retries(scenario, smtp, capsys):
    code, _, _ = run(capsys, "replay", str(scenario))
    # trans recovered, but the permanent and in-doubt failures were not chosen: still exit 1.
    assert code == 1
    got = smtp.recorder.received()
    assert got == {"first@example.org": 1, "last@example.org": 1, "doubt@example.org": 1,
                   "trans@example.org": 1}
    body = report_json(capsys, "2026-11-24")
    assert counts_of(body) == COUNTS | {"sent": 3, "failed": 1}


def test_replay_in_doubt_adds_the_in_doubt(scenario, smtp, capsys):
    assert run(capsys, "replay", str(scenario), "--in-doubt")[0] == 1  # perm still failed
    got = smtp.recorder.received()
    assert got["trans@example.org"] == 1
    # The server had accepted the in-doubt message (it dropped the connection before its
    # reply), so an explicit --in-doubt replay makes that a second copy: the SPEC leaves this
    # choice to the admin, which is why a send never does it on its own.
    assert got["doubt@example.org"] == 2
    assert "perm@example.org" not in got
    assert counts_of(report_json(capsys, "2026-11-24")) == COUNTS | {"sent": 4, "failed": 1, "in_doubt": 0}


def test_replay_permanent_adds_the_refused_and_lifts_their_bounce(scenario, smtp, capsys):
    assert "perm@example.org" in run(capsys, "suppressed")[1]
    assert run(capsys, "replay", str(scenario), "--permanent")[0] == 1  # doubt still in doubt
    got = smtp.recorder.received()
    assert got["perm@example.org"] == 1 and got["trans@example.org"] == 1
    assert got["doubt@example.org"] == 1
    # Accepted now, so it is no longer suppressed for later issues.
    assert "perm@example.org" not in run(capsys, "suppressed")[1]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"trans@example.org"}),
        (["--in-doubt"], {"trans@example.org", "doubt@example.org"}),
        (["--permanent"], {"trans@example.org", "perm@example.org"}),
        (["--in-doubt", "--permanent"], {"trans@example.org", "perm@example.org", "doubt@example.org"}),
    ],
)
def test_replay_dry_run_lists_and_sends_nothing(scenario, smtp, capsys, flags, expected):
    before = report_json(capsys, "2026-11-24")
    code, out, _ = run(capsys, "replay", str(scenario), "--dry-run", *flags)
    assert code == 0
    listed = set(re.findall(r"^would send\s+(\S+)", out, re.M))
    assert listed == expected
    assert f"{len(expected)} recipient(s) would be sent to" in out
    assert sum(smtp.recorder.received().values()) == 3  # only the first run's
    assert report_json(capsys, "2026-11-24") == before


def test_replay_exit_0_when_every_failure_is_recovered(env, smtp, issue_file, tmp_path, capsys):
    write_subscribers(tmp_path / "subscribers.csv", 3)
    smtp.recorder.scripts = {"reader1@example.org": ["451"] * 3}
    assert run(capsys, "send", str(issue_file))[0] == 1
    assert report_json(capsys, "2026-11-24")["failed"] == 1
    assert run(capsys, "replay", "2026-11-24")[0] == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(3)}
    assert counts_of(report_json(capsys, "2026-11-24")) == COUNTS | {
        "sent": 3, "failed": 0, "in_doubt": 0, "suppressed": 0, "skipped": 0}


def test_replay_of_an_issue_never_sent(scenario, smtp, issue_data, tmp_path, capsys):
    other = write_issue(issue_data, tmp_path / "issues", "2026-11-25")
    for flags in ([], ["--dry-run"], ["--in-doubt", "--permanent"]):
        code, out, err = run(capsys, "replay", str(other), *flags)
        assert (code, out) == (2, "")
        assert "issue 2026-11-25 has never been sent" in err
    assert sum(smtp.recorder.received().values()) == 3


def test_replay_when_the_lock_is_held(scenario, smtp, env, capsys):
    with run_lock(Path(env["MAILER_STATE_DIR"])):
        code, _, err = run(capsys, "replay", str(scenario), "--in-doubt", "--permanent")
    assert code == 75
    assert "another send or replay" in err
    assert sum(smtp.recorder.received().values()) == 3
    assert counts_of(report_json(capsys, "2026-11-24")) == COUNTS


def test_replay_exit_1_while_some_still_fail(scenario, smtp, capsys):
    smtp.recorder.scripts = {"trans@example.org": ["451"] * 3}
    assert run(capsys, "replay", str(scenario), "--in-doubt", "--permanent")[0] == 1
    failures = {f["email"]: f for f in report_json(capsys, "2026-11-24")["failures"]}
    assert set(failures) == {"trans@example.org"}
    assert (failures["trans@example.org"]["attempts"], failures["trans@example.org"]["last_code"]) == (3, 451)
    assert "trans@example.org" not in smtp.recorder.received()


def test_an_unsubscribed_address_is_never_replayed(scenario, smtp, capsys):
    # Both a transient failure and a permanent one (already suppressed as bounced) unsubscribe.
    for address in ("trans@example.org", "perm@example.org"):
        assert run(capsys, "unsubscribe", address)[0] == 0
    code, out, _ = run(capsys, "replay", str(scenario), "--dry-run", "--in-doubt", "--permanent")
    assert set(re.findall(r"^would send\s+(\S+)", out, re.M)) == {"doubt@example.org"}
    # both failures are owed nothing any more (suppressed), and the in-doubt one was resent
    assert run(capsys, "replay", str(scenario), "--in-doubt", "--permanent")[0] == 0
    got = smtp.recorder.received()
    assert "trans@example.org" not in got and "perm@example.org" not in got
    assert "sup@example.org" not in got and "gone@example.org" not in got
    assert re.search(r"^perm@example.org\tunsubscribed\t", run(capsys, "suppressed")[1], re.M)


# -- the suppression list ------------------------------------------------------------------


def test_a_550_suppresses_the_address_for_later_issues(scenario, smtp, issue_data, tmp_path, capsys):
    out = run(capsys, "suppressed")[1]
    assert re.search(r"^perm@example.org\tbounced\t\S+\t2026-11-24: 550 5\.1\.1", out, re.M)
    second = write_issue(issue_data, tmp_path / "issues", "2026-11-25")
    before = smtp.recorder.received()
    assert run(capsys, "send", str(second))[0] == 0  # nobody failed this time
    body = report_json(capsys, "2026-11-25")
    assert counts_of(body) == {"sent": 4, "failed": 0, "in_doubt": 0, "suppressed": 2, "skipped": 2,
                               "pending": 0}
    new = smtp.recorder.received() - before
    assert new == {a: 1 for a in ("first@example.org", "trans@example.org", "doubt@example.org",
                                  "last@example.org")}
    assert smtp.recorder.attempts["perm@example.org"] == 1  # only the first issue's


def _unsubscribe_link(message: EmailMessage) -> str:
    header = str(message["List-Unsubscribe"])
    url = re.search(r"<(https://[^>]+)>", header).group(1)
    return url


def test_unsubscribe_by_address_and_by_token_from_a_received_message(
    env, smtp, issue_file, issue_data, tmp_path, capsys
):
    write_subscribers(tmp_path / "subscribers.csv", 4)
    assert run(capsys, "send", str(issue_file))[0] == 0
    message = next(m for m in smtp.recorder.parsed()
                   if m["To"].addresses[0].addr_spec == "reader1@example.org")
    url = _unsubscribe_link(message)
    token = url.rsplit("/", 1)[1]
    # The same link is in the footer of both parts.
    for part in message.walk():
        if part.get_content_maintype() == "text":
            assert url in part.get_content()
    code, out, _ = run(capsys, "unsubscribe", "--token", token)
    assert code == 0 and "reader1@example.org" in out
    code, out, _ = run(capsys, "unsubscribe", "Reader2@Example.org")
    assert code == 0
    out = run(capsys, "suppressed")[1]
    assert re.search(r"^reader1@example.org\tunsubscribed\t", out, re.M)
    assert re.search(r"^Reader2@example.org\tunsubscribed\t", out, re.M)  # the domain is lowercased
    second = write_issue(issue_data, tmp_path / "issues", "2026-11-25")
    before = smtp.recorder.received()
    assert run(capsys, "send", str(second))[0] == 0
    assert smtp.recorder.received() - before == {"reader0@example.org": 1, "reader3@example.org": 1}
    assert report_json(capsys, "2026-11-25")["suppressed"] == 2


@pytest.mark.parametrize("bad", ["a@b@c", "ann.example.org"])
def test_unsubscribe_of_something_not_an_address_changes_nothing(env, capsys, bad):
    code, out, err = run(capsys, "unsubscribe", bad)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "nothing was changed" in err
    assert run(capsys, "suppressed")[1] == "0 suppressed address(es)\n"


def test_a_forged_or_tampered_token_changes_nothing(env, smtp, issue_file, tmp_path, capsys):
    write_subscribers(tmp_path / "subscribers.csv", 1)
    assert run(capsys, "send", str(issue_file))[0] == 0
    token = _unsubscribe_link(smtp.recorder.parsed()[0]).rsplit("/", 1)[1]
    address, mac = token.split(".")
    other_address = make_token("test-secret-16ch", "reader9@example.org").split(".")[0]
    last = mac[-1]
    tampered = [
        f"{address}.{mac[:-1]}{'A' if last != 'A' else 'B'}",  # a changed MAC
        f"{other_address}.{mac}",  # another address under this MAC
        make_token("not-the-secret", "reader0@example.org"),  # forged with another key
        "garbage",
    ]
    for bad in tampered:
        code, out, err = run(capsys, "unsubscribe", "--token", bad)
        assert (code, out) == (2, ""), bad
        assert "nothing was changed" in err and len(err.splitlines()) == 1
    assert run(capsys, "suppressed")[1] == "0 suppressed address(es)\n"


def test_suppressed_lists_address_reason_and_date(scenario, capsys):
    code, out, _ = run(capsys, "suppressed")
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert {(r[0], r[1]) for r in rows} == {("sup@example.org", "unsubscribed"),
                                          ("perm@example.org", "bounced")}
    for row in rows:
        assert dt.datetime.fromisoformat(row[2]).date() <= dt.date.today() + dt.timedelta(days=1)
    assert out.splitlines()[-1] == "2 suppressed address(es)"


def test_unsuppress_lifts_one_address(scenario, smtp, issue_data, tmp_path, capsys):
    code, out, _ = run(capsys, "unsuppress", "PERM@example.org")
    assert code == 0
    assert "perm@example.org" not in run(capsys, "suppressed")[1]
    second = write_issue(issue_data, tmp_path / "issues", "2026-11-25")
    assert run(capsys, "send", str(second))[0] == 0
    assert smtp.recorder.received()["perm@example.org"] == 1
    assert report_json(capsys, "2026-11-25")["suppressed"] == 1  # sup@ still is


def test_unsuppress_of_an_unknown_address(scenario, capsys):
    code, out, err = run(capsys, "unsuppress", "nobody@example.org")
    assert (code, out) == (2, "")
    assert "nobody@example.org" in err and "not on the suppression list" in err
    assert len(run(capsys, "suppressed")[1].splitlines()) == 3


# -- the acceptance scenario ---------------------------------------------------------------


def test_an_admin_sees_who_is_missing_and_replay_recovers_everyone(scenario, smtp, capsys):
    """After transient, permanent and in-doubt failures, `report` names each missing recipient
    with the reason, and one `replay --in-doubt --permanent` brings every recoverable one to a
    copy, with no second copy for anyone already delivered."""
    out = run(capsys, "report", "2026-11-24")[1]
    missing = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and "@" in line}
    missing |= {line.split()[0] for line in out.splitlines() if line.startswith("  not-an-address")}
    assert missing == {"trans@example.org", "perm@example.org", "doubt@example.org",
                       "not-an-address", "gone@example.org", "sup@example.org"}

    assert run(capsys, "replay", "2026-11-24", "--in-doubt", "--permanent")[0] == 0
    # A second replay finds nothing left to do, and sends nothing.
    assert run(capsys, "replay", "2026-11-24", "--in-doubt", "--permanent")[0] == 0
    assert run(capsys, "send", "2026-11-24")[0] == 0

    got = smtp.recorder.received()
    # Each recoverable recipient now has exactly one copy from a completed delivery. The one in
    # doubt was in fact accepted by the server the first time (it dropped the connection after
    # the final dot), so it has two: the price of the admin's explicit --in-doubt, as the SPEC
    # says; everyone else has exactly one.
    assert got == {"first@example.org": 1, "last@example.org": 1, "trans@example.org": 1,
                   "perm@example.org": 1, "doubt@example.org": 2}
    body = report_json(capsys, "2026-11-24")
    assert counts_of(body) == {"sent": 5, "failed": 0, "in_doubt": 0, "suppressed": 1, "skipped": 2,
                               "pending": 0}
    assert body["failures"] == []
    assert body["runs"] == 4


def test_report_csv_cells_open_in_a_spreadsheet_as_text(env, smtp, issue_file, tmp_path, capsys):
    # Names and addresses as a hostile sign-up form leaves them: a spreadsheet must show them,
    # not evaluate them (CSV formula injection).
    (tmp_path / "subscribers.csv").write_text(
        "email,name\n"
        '=1+1@example.org,"=HYPERLINK(""https://evil.example/"",""click"")"\n'
        "-x@example.org,@SUM(A1:A9)\n"
        "+x@example.org,+1\n"
        "=cmd|' /C calc'!A0,Bad\n",
        encoding="utf-8",
    )
    assert run(capsys, "send", str(issue_file))[0] == 0
    code, out, _ = run(capsys, "report", str(issue_file), "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    cells = [value for row in rows for value in row.values()]
    assert not [c for c in cells if c and c[0] in "=+-@\t\r"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["'=HYPERLINK(\"https://evil.example/\",\"click\")"]["email"] == "'=1+1@example.org"
    assert by_name["'@SUM(A1:A9)"]["email"] == "'-x@example.org"
    assert by_name["'+1"]["email"] == "'+x@example.org"
    [skipped] = [r for r in rows if r["status"] == "skipped"]
    assert skipped["email"] == "'=cmd|' /C calc'!A0"  # shown as written, not run
    # Numbers stay numbers, and a cell that is text anyway is left alone.
    assert {r["attempts"] for r in rows} <= {"0", "1"}
