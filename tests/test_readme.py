"""The README as a newcomer follows it: its set-up commands, its console examples with their
output, and every `mailer` command it shows, run or parsed as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^(?P<indent> *)```(?P<kind>\w+)\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)


def blocks(kind: str) -> list[list[str]]:
    """The README's fenced blocks of one kind, each as its lines, list indentation removed."""
    found = []
    for match in FENCE.finditer(README):
        if match["kind"] == kind:
            indent = len(match["indent"])
            found.append([line[indent:] for line in match["body"].splitlines()])
    return found


def console_examples() -> list[tuple[str, list[str]]]:
    """Each `$ command` of the console blocks with the output shown under it, in README order."""
    examples: list[tuple[str, list[str]]] = []
    for block in blocks("console"):
        for line in block:
            if line.startswith("$ "):
                examples.append((line[2:], []))
            else:
                examples[-1][1].append(line)
    return examples


def matches(expected: list[str], got: list[str]) -> bool:
    """Line by line; a line `...` in the README stands for any number of lines."""
    if not expected:
        return not got
    if expected[0] == "...":
        return any(matches(expected[1:], got[n:]) for n in range(len(got) + 1))
    return bool(got) and got[0] == expected[0] and matches(expected[1:], got[1:])


def setup_commands() -> list[str]:
    return [line for block in blocks("sh") for line in block if line.startswith("python3 -m venv ")]


def clean_env(venv_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["BROWSER"] = "/nonexistent/browser"  # no browser is opened by a test
    return env


def test_the_readme_has_console_examples_of_validate_preview_and_a_dry_run():
    commands = [command for command, _ in console_examples()]
    assert "cp .env.example .env" in commands
    starts = ("mailer validate examples/", "mailer validate 2026-", "mailer preview ", "mailer send 2026-")
    for start in starts:
        assert any(c.startswith(start) for c in commands), start


def test_every_console_example_runs_as_written_with_the_output_shown(tmp_path):
    """In a copy of the project's example files, in the README's order, as a newcomer would."""
    for name in ("issues", "examples"):
        shutil.copytree(ROOT / name, tmp_path / name)
    for name in (".env.example", "subscribers.csv.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv_bin = Path(sys.executable).parent
    (tmp_path / ".venv").symlink_to(venv_bin.parent)
    env = clean_env(venv_bin)
    for command, expected in console_examples():
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=120,
        )
        got = done.stdout.splitlines()
        assert matches(expected, got), f"$ {command}\nREADME shows:\n" + "\n".join(expected) + \
            "\nbut it printed:\n" + done.stdout
        assert "Traceback" not in done.stdout


def test_every_mailer_command_the_readme_shows_is_one_the_mailer_takes():
    """The commands shown without their output: the right command names and flags, and the
    example files they name exist."""
    lines = [line for block in blocks("sh") for line in block]
    lines += [line for command, _ in console_examples() for line in [command]]
    shown = [line.split("  #")[0].strip() for line in lines if line.startswith("mailer ")]
    assert len(shown) > 15
    parser = build_parser()
    for line in shown:
        if "..." in line or "ISSUE" in line or "ADDRESS" in line or "DIR" in line:
            continue  # a usage pattern, not an example
        args = shlex.split(line)[1:]
        try:
            parser.parse_args(args)
        except SystemExit as exc:  # pragma: no cover - the failure is the message
            pytest.fail(f"README: `{line}` is not a command the mailer takes (exit {exc.code})")
        for arg in args:
            if arg.endswith(".json"):
                assert (ROOT / arg).is_file(), f"README: `{line}` names {arg}, which the project lacks"


def test_the_test_command_is_the_one_ci_runs():
    main_job, tests = setup_commands()
    assert "--outbox" in main_job
    assert tests.endswith("-m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_main_job_set_up_command_works_as_written(tmp_path):
    """In a fresh copy of the project, with a virtual environment of its own (the system's pip
    refuses installs on Debian and Ubuntu); the dependencies come from the configured index."""
    copy = tmp_path / "topten"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    main_job = setup_commands()[0]
    python3 = shutil.which("python3")
    assert python3 is not None
    env = clean_env(Path(python3).parent)
    done = subprocess.run(
        ["bash", "-c", main_job], cwd=copy, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((copy / "outbox").glob("*.eml"))) == 5
    assert "send of 2026-11-24 ended" in done.stderr
