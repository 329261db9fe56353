"""Broken input and broken state, as operators' real files and machines produce them: every
command, against each, ends in one line naming the culprit and the code cron acts on (2: fix
it, 75: try later), never a traceback, and nothing is half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ledger_rows, write_subscribers

import mailer.ledger
from mailer.cli import main

ISSUE = "2026-11-24"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")

# Every command, as cron, an editor or an admin types it.
COMMAND_LINES: dict[str, list[str]] = {
    "validate": ["validate", "{issue}"],
    "preview": ["preview", "{issue}", "--out", "preview"],
    "send": ["send", "{issue}"],
    "send-dry-run": ["send", "{issue}", "--dry-run"],
    "send-to": ["send", "{issue}", "--to", "me@example.org"],
    "send-outbox": ["send", "{issue}", "--outbox", "outbox"],
    "replay": ["replay", "{issue}"],
    "replay-dry-run": ["replay", "{issue}", "--dry-run"],
    "report": ["report", "{issue}"],
    "report-json": ["report", "{issue}", "--json"],
    "report-csv": ["report", "{issue}", "--csv"],
    "unsubscribe": ["unsubscribe", "someone@example.org"],
    "suppressed": ["suppressed"],
    "unsuppress": ["unsuppress", "reader0@example.org"],
    "config": ["config"],
}
EVERY = tuple(COMMAND_LINES)
READS_THE_ISSUE = ("validate", "preview", "send", "send-dry-run", "send-to", "send-outbox", "replay")
READS_THE_LIST = ("send", "send-dry-run", "send-outbox")
USES_THE_LEDGER = ("send", "send-dry-run", "replay", "replay-dry-run", "report", "report-json",
                   "report-csv", "unsubscribe", "suppressed", "unsuppress")
SENDS_FOR_REAL = ("send", "replay")


@dataclass
class World:
    """A working set-up after one good send; each broken environment breaks one thing in it."""

    root: Path
    issue: Path
    state: Path
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def set(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)

    def send_once(self) -> None:
        """A good send to three subscribers: a working ledger to break."""
        write_subscribers(self.root / "subscribers.csv", 3)
        assert main(["send", str(self.issue)]) == 0

    def issue_data(self) -> dict:
        return json.loads(self.issue.read_text(encoding="utf-8"))

    def write_issue(self, data: dict) -> None:
        self.issue.write_text(json.dumps(data), encoding="utf-8")


@dataclass(frozen=True)
class Broken:
    name: str
    setup: Callable[[World], None]
    culprit: str  # what the one line must name
    commands: tuple[str, ...]
    code: int = 2
    codes: dict[str, int] = field(default_factory=dict)  # commands that answer otherwise
    root_only: bool = False
    needs_ledger: bool = False  # else the breakage stops every command before the ledger

    def expected(self, command: str) -> int:
        return self.codes.get(command, self.code)


def _issue_with(**changes: object) -> Callable[[World], None]:
    def setup(world: World) -> None:
        world.write_issue(world.issue_data() | changes)
    return setup


def _story_with(**changes: object) -> Callable[[World], None]:
    def setup(world: World) -> None:
        data = world.issue_data()
        data["stories"][0] |= changes
        world.write_issue(data)
    return setup


def _raw_issue(text: Callable[[str], str]) -> Callable[[World], None]:
    def setup(world: World) -> None:
        world.issue.write_text(text(world.issue.read_text(encoding="utf-8")), encoding="utf-8")
    return setup


def _setting(name: str, value: str) -> Callable[[World], None]:
    return lambda world: world.set(name, value)


def _env_file(content: bytes) -> Callable[[World], None]:
    def setup(world: World) -> None:
        (world.root / ".env").write_bytes(content)
    return setup


def _subscribers(text: str) -> Callable[[World], None]:
    def setup(world: World) -> None:
        (world.root / "subscribers.csv").write_text(text, encoding="utf-8")
    return setup


def _random_ledger(world: World) -> None:
    (world.state / "ledger.sqlite3").write_bytes(os.urandom(8192))
    for extra in ("ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        (world.state / extra).unlink(missing_ok=True)


def _state_is_a_file(world: World) -> None:
    shutil.rmtree(world.state)
    world.state.write_text("not a directory\n")


def _state_missing(world: World) -> None:
    shutil.rmtree(world.state)


def _state_read_only(world: World) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs-readonly-state", str(world.state)],
                   check=True)
    world.cleanups.append(lambda: subprocess.run(["umount", "-l", str(world.state)], check=False))
    write_subscribers(world.root / "ro.csv", 2)
    assert main(["send", str(world.issue), "--subscribers", str(world.root / "ro.csv")]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(world.state)], check=True)


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE runs SET kind = kind")
print("locked", flush=True)
time.sleep(120)
"""


def _ledger_locked(world: World) -> None:
    # Another process (a stuck sqlite3 shell, a backup tool) holds the ledger.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(world.state / "ledger.sqlite3")],
                              stdout=subprocess.PIPE, text=True)
    world.cleanups.append(lambda: (holder.kill(), holder.wait()))
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    world.monkeypatch.setattr(mailer.ledger, "BUSY_TIMEOUT", 0.5)  # not a minute, in a test


def _outbox_is_the_state(world: World) -> None:
    # `send --outbox outbox` with the state directory there: its ledger would be the real one
    world.set("MAILER_STATE_DIR", str(world.root / "outbox"))


def _preview_out_is_a_file(world: World) -> None:
    (world.root / "preview").write_text("an existing file\n")


BROKEN = [
    # -- settings: every command reads them, and refuses them before doing anything ---------
    Broken("from-non-ascii-local-part", _setting("MAILER_FROM", "Zoë <zoë@example.org>"),
           "MAILER_FROM", EVERY),
    Broken("reply-to-non-ascii", _setting("MAILER_REPLY_TO", "Ré <ré@example.org>"),
           "MAILER_REPLY_TO", EVERY),
    Broken("from-not-utf8-in-the-environment", _setting("MAILER_FROM", "Zo\udceb <news@example.org>"),
           "MAILER_FROM", EVERY),
    Broken("timeout-infinite", _setting("MAILER_SMTP_TIMEOUT", "inf"), "MAILER_SMTP_TIMEOUT", EVERY),
    Broken("timeout-too-long", _setting("MAILER_SMTP_TIMEOUT", "601"), "MAILER_SMTP_TIMEOUT", EVERY),
    Broken("rate-too-slow", _setting("MAILER_RATE_LIMIT", "1e-10"), "MAILER_RATE_LIMIT", EVERY),
    Broken("rate-nan", _setting("MAILER_RATE_LIMIT", "nan"), "MAILER_RATE_LIMIT", EVERY),
    Broken("connections-too-many", _setting("MAILER_SMTP_CONNECTIONS", "101"),
           "MAILER_SMTP_CONNECTIONS", EVERY),
    Broken("attempts-too-many", _setting("MAILER_MAX_ATTEMPTS", "21"), "MAILER_MAX_ATTEMPTS", EVERY),
    Broken("unsubscribe-url-markup",
           _setting("MAILER_UNSUBSCRIBE_URL", 'https://example.org/u/{token}"><script>x</script>'),
           "MAILER_UNSUBSCRIBE_URL", EVERY),
    Broken("unsubscribe-url-token-in-host", _setting("MAILER_UNSUBSCRIBE_URL", "https://{token}.example.org/"),
           "MAILER_UNSUBSCRIBE_URL", EVERY),
    Broken("unsubscribe-url-userinfo", _setting("MAILER_UNSUBSCRIBE_URL", "https://u:p@example.org/{token}"),
           "MAILER_UNSUBSCRIBE_URL", EVERY),
    Broken("mailto-not-an-address", _setting("MAILER_UNSUBSCRIBE_MAILTO", "unsubscribe@@example"),
           "MAILER_UNSUBSCRIBE_MAILTO", EVERY),
    Broken("donate-url-port", _setting("MAILER_DONATE_URL", "https://example.org:99999/give"),
           "MAILER_DONATE_URL", EVERY),
    Broken("env-file-not-utf8", _env_file(b"MAILER_LIST_ID=Caf\xe9 <news.example.org>\n"), ".env", EVERY),
    Broken("env-password-comment-eaten", _env_file(b"MAILER_SMTP_PASSWORD=abc #1\n"),
           "MAILER_SMTP_PASSWORD", EVERY),
    Broken("env-password-trailing-spaces", _env_file(b"MAILER_SMTP_PASSWORD=abc   \n"),
           "MAILER_SMTP_PASSWORD", EVERY),
    Broken("secret-too-short", _setting("MAILER_SECRET", "x"), "MAILER_SECRET", SENDS_FOR_REAL + ("config",),
           codes={"config": 0}),
    # -- the issue -------------------------------------------------------------------------
    Broken("lone-surrogate", _raw_issue(lambda t: t.replace('"intro": "', '"intro": "\\ud800', 1)),
           "intro", READS_THE_ISSUE),
    Broken("huge-number", _raw_issue(lambda t: t.replace('"rank": 1,', '"rank": ' + "9" * 5000 + ",", 1)),
           "digits", READS_THE_ISSUE),
    Broken("deep-nesting", _raw_issue(lambda t: json.dumps(json.loads(t))[:-1] + ', "x": '
                                      + "[" * 100_000 + "]" * 100_000 + "}"),
           "nested", READS_THE_ISSUE),
    Broken("huge-file", _issue_with(intro="Good morning. " * 200_000), "MB", READS_THE_ISSUE),
    Broken("huge-intro", _issue_with(intro="Good morning. " * 3_000), "intro", READS_THE_ISSUE),
    Broken("subject-invisible-only", _issue_with(subject="\u200b\u200b\u200b"), "subject", READS_THE_ISSUE),
    Broken("subject-bidi-override", _issue_with(subject="Ten stories \u202egnp.exe"), "subject",
           READS_THE_ISSUE),
    Broken("preheader-zero-width", _issue_with(preheader="The ten\u200b stories"), "preheader",
           READS_THE_ISSUE),
    Broken("url-backslash", _story_with(url="https://evil.example\\@good.example/story"), "stories.0.url",
           READS_THE_ISSUE),
    Broken("url-userinfo", _story_with(url="https://u:p@good.example/story"), "stories.0.url",
           READS_THE_ISSUE),
    Broken("url-port", _story_with(url="https://good.example:70000/story"), "stories.0.url", READS_THE_ISSUE),
    Broken("unknown-key-escape", _issue_with(**{"sum\nmary\x1b[2J": "x"}), "sum\\nmary\\u001b[2J",
           READS_THE_ISSUE),
    Broken("issue-missing", lambda world: world.issue.unlink(), "no such issue file", READS_THE_ISSUE),
    Broken("issue-not-utf8", lambda world: world.issue.write_bytes(b'{"subject": "Caf\xe9"}'), "UTF-8",
           READS_THE_ISSUE),
    # -- the subscriber list ---------------------------------------------------------------
    Broken("csv-missing", lambda world: (world.root / "subscribers.csv").unlink(), "subscribers.csv",
           READS_THE_LIST),
    Broken("csv-is-a-directory", lambda world: ((world.root / "subscribers.csv").unlink(),
                                                (world.root / "subscribers.csv").mkdir()),
           "subscribers.csv", READS_THE_LIST),
    Broken("csv-unterminated-quote",
           _subscribers('email,name\nann@example.org,Ann\ncy@example.org,"Cy Smith\ndee@example.org,Dee\n'),
           "row 3", READS_THE_LIST),
    Broken("csv-quote-in-unquoted", _subscribers('email,name\ncy@example.org,Cy "The" Smith\n'),
           "row 2", READS_THE_LIST),
    # -- the state directory and the ledger ------------------------------------------------
    Broken("ledger-random-bytes", _random_ledger, "ledger.sqlite3", USES_THE_LEDGER, needs_ledger=True),
    Broken("state-dir-is-a-file", _state_is_a_file, "state", USES_THE_LEDGER, codes={"suppressed": 0},
           needs_ledger=True),
    Broken("state-dir-missing", _state_missing, "state", ("report", "report-json", "report-csv", "replay",
                                                          "replay-dry-run", "unsuppress"), needs_ledger=True),
    Broken("state-dir-read-only", _state_read_only, "state",
           ("send", "replay", "unsubscribe", "unsuppress", "send-dry-run"), root_only=True,
           needs_ledger=True),
    Broken("ledger-locked", _ledger_locked, "ledger.sqlite3", USES_THE_LEDGER, code=75,
           codes={"unsuppress": 75}, needs_ledger=True),
    # -- where the output goes -------------------------------------------------------------
    Broken("outbox-is-the-state-dir", _outbox_is_the_state, "--outbox", ("send-outbox",)),
    Broken("preview-out-is-a-file", _preview_out_is_a_file, "--out", ("preview",)),
]
CASES = [(b, c) for b in BROKEN for c in b.commands]


@pytest.fixture
def world(env, issue_file, tmp_path, monkeypatch) -> World:
    write_subscribers(tmp_path / "subscribers.csv", 3)
    made = World(tmp_path, issue_file, Path(env["MAILER_STATE_DIR"]), monkeypatch)
    yield made
    for cleanup in reversed(made.cleanups):
        cleanup()


def _argv(world: World, command: str) -> list[str]:
    return [part.replace("{issue}", str(world.issue)) for part in COMMAND_LINES[command]]


def _problem_lines(err: str) -> list[str]:
    """What the command says went wrong: its error lines and ERROR log lines, not the rest of
    a run's log, nor the closing count of `validate`."""
    return [
        line for line in err.splitlines()
        if line.strip() and (not LOG_LINE.match(line) or " ERROR " in line)
        and not line.endswith("problem(s); nothing was sent")
    ]


@pytest.mark.parametrize(("broken", "command"), CASES, ids=[f"{b.name}:{c}" for b, c in CASES])
def test_every_command_against_a_broken_environment(broken, command, world, smtp, capsys):
    if broken.root_only and os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    if broken.needs_ledger:
        world.send_once()
    broken.setup(world)
    delivered = len(smtp.recorder.messages)
    capsys.readouterr()
    code = main(_argv(world, command))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    expected = broken.expected(command)
    assert code == expected, (out, err)
    if expected != 0:
        problems = _problem_lines(err)
        assert len(problems) == 1, err
        assert broken.culprit in problems[0], problems[0]
        assert "\x1b" not in out + err  # an escape sequence from the input is never replayed
        assert len(smtp.recorder.messages) == delivered  # nothing went out


def test_the_installed_command_says_one_line_too(world, smtp):
    """The same, through the console script cron runs: no traceback on stderr either."""
    world.send_once()
    script = Path(sys.executable).with_name("mailer")
    _random_ledger(world)
    (world.root / "subscribers.csv").write_text('email,name\nann@example.org,"Ann\n', encoding="utf-8")
    for argv, code, culprit in [
        (["report", str(world.issue)], 2, "ledger.sqlite3"),
        (["send", str(world.issue), "--dry-run"], 2, "row 2"),
        (["config"], 2, "MAILER_SMTP_TIMEOUT"),
    ]:
        environ = dict(os.environ)
        if argv == ["config"]:
            environ["MAILER_SMTP_TIMEOUT"] = "inf"
        if "--dry-run" in argv:  # the list's fault alone, not the broken ledger's
            environ["MAILER_STATE_DIR"] = str(world.root / "fresh")
        done = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60,
                              cwd=world.root, env=environ)
        assert "Traceback" not in done.stdout + done.stderr
        assert done.returncode == code, done.stderr
        assert len(_problem_lines(done.stderr)) == 1 and culprit in done.stderr


# -- a full disk, for real -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 1 MB file system of its own for the state directory (a tmpfs: needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root; see the injected-error test below")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs-full-disk-test", str(mount_point)],
                   check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """A file taking all the space but `leave` bytes."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def _assert_nothing_recorded_that_did_not_happen(state: Path, received: dict[str, int]) -> None:
    rows = ledger_rows(state, ISSUE) if (state / "ledger.sqlite3").exists() else {}
    for key, row in rows.items():
        if row["status"] == "sent":
            assert received.get(key) == 1, key  # recorded sent: the server has it, once
        if row["status"] == "pending":
            assert key not in received, key  # pending: never reached the server


def test_a_disk_full_while_planning_is_75_and_records_nothing(env, smtp, issue_file, tmp_path, small_disk,
                                                               capsys, monkeypatch):
    monkeypatch.setenv("MAILER_STATE_DIR", str(small_disk))
    write_subscribers(tmp_path / "subscribers.csv", 4000)  # a plan larger than the room left
    assert main(["unsubscribe", "someone@example.org"]) == 0  # a ledger there already
    filler = _fill(small_disk, 64 * 1024)
    code = main(["send", str(issue_file)])
    err = capsys.readouterr().err
    assert code == 75, err
    assert "Traceback" not in err and "disk is full" in err
    assert len(_problem_lines(err)) == 1
    assert smtp.recorder.messages == []
    _assert_nothing_recorded_that_did_not_happen(small_disk, smtp.recorder.received())
    if (small_disk / "ledger.sqlite3").exists():
        assert ledger_rows(small_disk, ISSUE) == {}  # the plan was one transaction, rolled back
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # room for it all
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {f"reader{n}@example.org": 1 for n in range(4000)}


def test_a_disk_full_during_the_run_is_75_and_the_rerun_sends_no_duplicates(
    env, smtp, issue_file, tmp_path, small_disk, capsys, monkeypatch
):
    monkeypatch.setenv("MAILER_STATE_DIR", str(small_disk))
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "1")
    count = 1500
    write_subscribers(tmp_path / "subscribers.csv", count)
    # 1 MB holds the plan; each delivery's commit grows the WAL by a few pages, and the disk
    # fills long before the end of the list.
    code = main(["send", str(issue_file)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    received = smtp.recorder.received()
    assert code == 75, err
    assert "disk is full" in err
    assert len(_problem_lines(err)) == 1, err
    assert 0 < len(received) < count
    assert max(received.values()) == 1
    _assert_nothing_recorded_that_did_not_happen(small_disk, received)
    # ... and everything that happened recorded: the room kept for it took the last delivery.
    rows = ledger_rows(small_disk, ISSUE)
    assert {k for k, r in rows.items() if r["status"] == "sent"} == set(received)
    assert {r["status"] for r in rows.values()} == {"sent", "pending"}
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    assert main(["send", str(issue_file)]) == 0
    final = smtp.recorder.received()
    assert final == {f"reader{n}@example.org": 1 for n in range(count)}  # everyone, once
    assert {r["status"] for r in ledger_rows(small_disk, ISSUE).values()} == {"sent"}


def test_without_root_a_full_disk_is_injected_at_the_file_layer(env, smtp, issue_file, tmp_path, capsys,
                                                                 monkeypatch):
    """Where a tmpfs cannot be mounted: the outbox's file write fails with ENOSPC, as a full
    disk makes it fail, and the same promises hold."""
    import errno

    from mailer import transport

    write_subscribers(tmp_path / "subscribers.csv", 20)
    real_write = Path.write_bytes
    written: list[Path] = []

    def write_bytes(self: Path, data: bytes) -> int:
        if self.suffix == ".tmp" and len(written) >= 7:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return real_write(self, data)

    monkeypatch.setattr(transport.Path, "write_bytes", write_bytes)
    outbox = tmp_path / "outbox"
    code = main(["send", str(issue_file), "--outbox", str(outbox)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 75, err
    files = sorted(p.name for p in outbox.glob("*.eml"))
    rows = ledger_rows(outbox, ISSUE)
    assert {k for k, r in rows.items() if r["status"] == "sent"} == {f[:-4] for f in files}
    monkeypatch.setattr(transport.Path, "write_bytes", real_write)
    assert main(["send", str(issue_file), "--outbox", str(outbox)]) == 0
    assert len(list(outbox.glob("*.eml"))) == 20
    assert all(r["status"] == "sent" for r in ledger_rows(outbox, ISSUE).values())


def test_a_run_stopping_error_is_logged_once(env, issue_file, tmp_path, capsys, monkeypatch):
    from smtpserver import free_port

    write_subscribers(tmp_path / "subscribers.csv", 3)
    monkeypatch.setenv("MAILER_SMTP_PORT", str(free_port()))  # nothing listens: unreachable
    code = main(["send", str(issue_file)])
    err = capsys.readouterr().err
    assert code == 75
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot reach the SMTP server" in errors[0], err


# -- the smaller items -----------------------------------------------------------------------


def test_a_dry_run_of_a_test_send_lists_only_the_test_addresses(world, smtp, capsys):
    world.send_once()
    (world.root / "subscribers.csv").write_text('email,name\nann@example.org,"Ann\n', encoding="utf-8")
    capsys.readouterr()
    code = main(["send", str(world.issue), "--to", "me@example.org", "--to", "you@example.org", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    sends = [line for line in out.splitlines() if line.startswith("send ")]
    assert [line.split()[1] for line in sends] == ["me@example.org", "you@example.org"]
    assert "reader0@example.org" not in out  # the list is neither read nor shown
    assert len(smtp.recorder.messages) == 3  # the world's own send only


def test_verbose_shows_the_settings_masked_and_each_message(world, smtp, capsys, monkeypatch):
    world.send_once()
    monkeypatch.setenv("MAILER_SECRET", "hunter2-hunter2-hunter2")
    write_subscribers(world.root / "subscribers.csv", 5)
    capsys.readouterr()
    assert main(["send", str(world.issue), "-v"]) == 0
    err = capsys.readouterr().err
    debug = [line for line in err.splitlines() if " DEBUG " in line]
    assert any("MAILER_SMTP_HOST=127.0.0.1" in line for line in debug)
    assert any("MAILER_SECRET=********" in line for line in debug)
    assert any("reader4@example.org: sent" in line for line in debug)
    assert "hunter2" not in err
    assert main(["send", str(world.issue)]) == 0  # and without -v, none of it
    assert " DEBUG " not in capsys.readouterr().err


def test_unsuppress_finds_an_idn_address_as_unsubscribe_stored_it(world, capsys):
    assert main(["unsubscribe", "Zoe@Bücher.example"]) == 0
    assert main(["unsuppress", "zoe@bücher.example"]) == 0
    capsys.readouterr()
    assert main(["suppressed"]) == 0
    assert capsys.readouterr().out.strip().endswith("0 suppressed address(es)")


def test_headers_from_hostile_names_and_subjects_stay_within_the_rules(world, smtp, monkeypatch):
    world.send_once()
    from email import message_from_bytes, policy

    long_name = "Żółć Gęślą Jaźń " * 40
    monkeypatch.setenv("MAILER_FROM", '"The <Top> Ten" <news@example.org>')
    (world.root / "subscribers.csv").write_text(
        f'email,name\nlong@example.org,"{long_name}"\nword@example.org,=?utf-8?q?Admin?=\n', encoding="utf-8")
    data = world.issue_data()
    data["subject"] = "Supercalifragilisticexpialidocious" * 3 + " and =?utf-8?q?more?="
    world.write_issue(data)
    assert main(["send", str(world.issue), "--allow-removals"]) == 0  # a new list, on purpose
    for _, rcpts, raw in smtp.recorder.messages[-2:]:
        assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=", head))
        message = message_from_bytes(raw, policy=policy.default)
        assert message["Subject"] == data["subject"]  # no leading space, the look-alike as written
        assert message["List-Id"] == '"The <Top> Ten" <news.example.org>'
        if rcpts == ["word@example.org"]:
            assert message["To"].addresses[0].display_name == "=?utf-8?q?Admin?="
            assert b"=?utf-8?q?Admin?=" not in head  # encoded, so that no one decodes it


def test_config_notes_what_a_real_send_would_refuse(world, capsys, monkeypatch):
    monkeypatch.setenv("MAILER_SECRET", "short")
    capsys.readouterr()
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    [note] = [line for line in out.splitlines() if line.startswith("note:")]
    assert "MAILER_SECRET" in note and "16" in note and "short" not in note  # never the secret itself
