"""The command line as people and cron meet it: --help for every command, the installed
console script, and the log a run leaves on stderr."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE_ISSUE, write_subscribers

from mailer.cli import COMMANDS, build_parser, main
from mailer.delivery import Tally
from mailer.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) \[(?P<issue>[^\]]+)\] \S")
SUMMARY = re.compile(
    r"(?P<sent>\d+) sent, (?P<failed>\d+) failed, (?P<in_doubt>\d+) in doubt, (?P<pending>\d+) pending"
)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- help ---------------------------------------------------------------------------------------


def test_the_parser_offers_every_command():
    assert set(subcommands()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mailer {command}")
    assert "Example" in out
    summary = (COMMANDS[command].__doc__ or "").strip().splitlines()[0]
    assert summary and " ".join(summary.split()) in " ".join(out.split())
    assert f"mailer {command}" in out.split("Example", 1)[1]  # the example runs this command


def test_top_level_help_names_every_command_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    for code in ("0", "1", "2", "75"):
        assert re.search(rf"\b{code}\b", out)


def test_a_usage_error_is_exit_2(capsys):
    assert main(["send"]) == 2  # no ISSUE
    assert "ISSUE" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


# -- the installed command, in a child process ---------------------------------------------------


def child_env() -> dict[str, str]:
    """The tests' environment without any MAILER_ settings of whoever runs them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["console script", "python -m mailer"])
def mailer(request) -> list[str]:
    if request.param == "console script":
        script = shutil.which("mailer") or str(Path(sys.executable).with_name("mailer"))
        assert Path(script).exists(), "the `mailer` console script is not installed: pip install -e ."
        return [script]
    return [sys.executable, "-m", "mailer"]


def test_installed_validate(mailer, tmp_path):
    done = run([*mailer, "validate", str(EXAMPLE_ISSUE)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "2026-11-24" in done.stdout


def test_installed_send_to_an_outbox_end_to_end(mailer, tmp_path):
    outbox = tmp_path / "outbox"
    done = run(
        [*mailer, "send", str(EXAMPLE_ISSUE), "--env-file", str(ROOT / ".env.example"),
         "--subscribers", str(ROOT / "subscribers.csv.example"), "--outbox", str(outbox)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    messages = sorted(outbox.glob("*.eml"))
    assert messages
    first = messages[0].read_bytes()
    assert b"Subject:" in first and b"List-Unsubscribe:" in first
    # stderr is a pipe, as under cron: log lines only, each with the issue date, no bar
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines
    for line in lines:
        match = LOG_LINE.match(line)
        assert match, line
        assert match["issue"] == "2026-11-24"
    summary = SUMMARY.search(lines[-1])
    assert summary, lines[-1]
    assert int(summary["sent"]) == len(messages)
    assert (summary["failed"], summary["in_doubt"], summary["pending"]) == ("0", "0", "0")
    assert not (tmp_path / "state").exists()  # an outbox run keeps its ledger in the outbox

    again = run(
        [*mailer, "send", str(EXAMPLE_ISSUE), "--env-file", str(ROOT / ".env.example"),
         "--subscribers", str(ROOT / "subscribers.csv.example"), "--outbox", str(outbox)],
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert sorted(outbox.glob("*.eml")) == messages
    assert re.search(r"this run 0 sent", again.stderr)  # a re-run resumes: nothing is sent twice


def test_installed_bad_issue_is_exit_2(mailer, tmp_path):
    bad = tmp_path / "2026-11-25.json"
    bad.write_text("{not json", encoding="utf-8")
    done = run([*mailer, "validate", str(bad)], tmp_path)
    assert done.returncode == 2
    assert str(bad.name) in done.stderr


# -- what a run leaves on stderr -----------------------------------------------------------------


def test_a_run_with_failures_logs_them_and_ends_with_the_summary(env, smtp, issue_file, tmp_path, capsys):
    write_subscribers(tmp_path / "subscribers.csv", 6)
    smtp.recorder.scripts = {
        "reader1@example.org": ["550"],
        "reader2@example.org": ["451", "451", "451"],
        "reader3@example.org": ["drop-dot"],
    }
    assert main(["send", str(issue_file)]) == 1
    lines = capsys.readouterr().err.splitlines()
    for line in lines:
        match = LOG_LINE.match(line)
        assert match, line
        assert match["issue"] == "2026-11-24"
    text = "\n".join(lines)
    for address in ("reader1@example.org", "reader2@example.org", "reader3@example.org"):
        assert address in text  # each failure is a line worth knowing
    assert "mailer report 2026-11-24" in text and "mailer replay 2026-11-24" in text
    summary = SUMMARY.search(lines[-1])
    assert summary, lines[-1]
    assert summary.groupdict() == {"sent": "3", "failed": "2", "in_doubt": "1", "pending": "0"}


def test_a_dry_run_prints_the_plan_and_logs_nothing_alarming(env, smtp, issue_file, tmp_path, capsys):
    write_subscribers(tmp_path / "subscribers.csv", 4)
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("send  reader") == 4
    assert "nothing was sent" in out
    assert smtp.recorder.messages == []


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    """What the `mailer` logger says (it does not propagate, so caplog would not see it)."""
    records = _Records()
    logger = logging.getLogger("mailer")
    monkeypatch.setattr(logger, "handlers", [records])
    monkeypatch.setattr(logger, "level", logging.INFO)
    return records.messages


def test_progress_under_cron_is_a_log_line_without_control_characters(logged):
    tally = Tally()
    stream = io.StringIO()  # not a terminal
    with Progress(tally, stream=stream, interval=0.02):
        time.sleep(0.2)  # several intervals; generous, as a loaded machine may wake the thread late
    assert stream.getvalue() == ""
    progress = [m for m in logged if m.startswith("progress:")]
    assert progress
    assert all("\r" not in p and "\x1b" not in p for p in progress)
    assert "sent" in progress[0] and "to go" in progress[0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar(logged):
    stream = _Terminal()
    with Progress(Tally(), stream=stream, interval=0.02):
        time.sleep(0.2)
    assert "\r\x1b[2K[" in stream.getvalue()
    assert not [m for m in logged if m.startswith("progress:")]


def test_report_csv_into_a_closed_pipe_is_quiet(env, smtp, issue_file, tmp_path):
    """`mailer report --csv | head -1`: no BrokenPipeError traceback, exit 0."""
    import subprocess
    import sys

    from conftest import write_subscribers

    write_subscribers(tmp_path / "subscribers.csv", 3000)
    env["MAILER_SMTP_CONNECTIONS"] = "4"
    assert main(["send", str(issue_file)]) == 0
    pipeline = subprocess.run(
        f"'{sys.executable}' -m mailer report '{issue_file}' --csv | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )
    assert pipeline.stdout.startswith("row,email,")
    assert "Traceback" not in pipeline.stderr and "BrokenPipe" not in pipeline.stderr


def test_env_file_before_or_after_the_command(clean, tmp_path, capsys):
    env_file = tmp_path / "mailer.env"
    env_file.write_text("MAILER_FROM=Either Way <either@example.org>\n", encoding="utf-8")
    for argv in (["config", "--env-file", str(env_file)], ["--env-file", str(env_file), "config"]):
        assert main(argv) == 0
        assert "MAILER_FROM=Either Way <either@example.org>" in capsys.readouterr().out
