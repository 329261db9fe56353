"""`mailer --help`, `config`, `report` and `suppressed` answer at once: they do not import what
only rendering, checking addresses and sending need. Checked on the modules loaded, not on a
time, so that it holds on a busy machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_ISSUE

ROOT = Path(__file__).resolve().parent.parent
# premailer brings cssutils and requests (with urllib3 and charset detection); jinja2 and
# email-validator are for rendering and checking addresses, smtplib for sending.
RENDER_AND_SEND = ("premailer", "cssutils", "requests", "email_validator", "jinja2", "smtplib")
SETTINGS = ("pydantic",)  # the settings are a pydantic model: every command but --help needs it

PROBE = """
import json, sys
from mailer.cli import main
code = main(sys.argv[1:]) if len(sys.argv) > 1 else None
loaded = sorted({name.split(".")[0] for name in sys.modules})
sys.stderr.write(json.dumps({"code": code, "loaded": loaded}) + "\\n")
"""


def loaded_by(args: list[str], cwd: Path, **extra: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["code"] in (None, 0), done.stderr
    return set(result["loaded"])


def test_importing_the_command_line_loads_none_of_it(tmp_path):
    loaded = loaded_by([], tmp_path)
    assert "mailer" in loaded
    assert not loaded & {*RENDER_AND_SEND, *SETTINGS}


def test_help_loads_none_of_it(tmp_path):
    loaded = loaded_by(["--help"], tmp_path)
    assert "argparse" in loaded
    assert not loaded & {*RENDER_AND_SEND, *SETTINGS}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with an issue in it: an outbox run of the example."""
    outbox = tmp_path_factory.mktemp("outbox")
    done = subprocess.run(
        [sys.executable, "-m", "mailer", "send", str(EXAMPLE_ISSUE), "--env-file", str(ROOT / ".env.example"),
         "--subscribers", str(ROOT / "subscribers.csv.example"), "--outbox", str(outbox)],
        capture_output=True, text=True, timeout=120, cwd=outbox,
    )
    assert done.returncode == 0, done.stderr
    return outbox


@pytest.mark.parametrize("args", [
    ["config"],
    ["report", "2026-11-24"],
    ["report", "2026-11-24", "--json"],
    ["report", "2026-11-24", "--csv"],
    ["suppressed"],
], ids=" ".join)
def test_admin_commands_do_not_load_rendering_or_sending(state, tmp_path, args):
    loaded = loaded_by(args, tmp_path, MAILER_STATE_DIR=str(state))
    assert "mailer" in loaded
    assert not loaded & set(RENDER_AND_SEND)


def test_the_commands_that_render_still_do(tmp_path):
    """The other side: the imports moved into the commands are made when they are needed."""
    loaded = loaded_by(["validate", str(EXAMPLE_ISSUE)], tmp_path)
    assert {"premailer", "jinja2", "pydantic"} <= loaded


def test_a_rerun_with_the_rendering_kept_loads_neither_jinja_nor_premailer(tmp_path):
    """The second run of an unchanged issue takes its rendering from the state directory: the
    template engine and the CSS inliner, most of the start-up, are not even imported."""
    outbox = tmp_path / "outbox"
    args = ["send", str(EXAMPLE_ISSUE), "--env-file", str(ROOT / ".env.example"),
            "--subscribers", str(ROOT / "subscribers.csv.example"), "--outbox", str(outbox)]
    first = loaded_by(args, tmp_path)
    assert {"premailer", "jinja2"} <= first
    assert (outbox / "rendered").is_dir()
    again = loaded_by(args, tmp_path)
    assert "mailer" in again
    assert "smtplib" in again  # a real send path: only the rendering was skipped
    assert not again & {"premailer", "cssutils", "requests", "jinja2", "lxml"}


GC_PROBE = """
import gc, json, sys
from mailer import cli

seen = {}
command = cli.COMMANDS[sys.argv[1]]

def watched(args, settings):
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    return command(args, settings)

cli.COMMANDS[sys.argv[1]] = watched
code = cli.main(sys.argv[1:])
seen.update(code=code, enabled_after=gc.isenabled(), frozen_after=gc.get_freeze_count())
sys.stderr.write(json.dumps(seen) + "\\n")
"""


def test_the_collector_skips_start_up_and_is_left_as_it_was(tmp_path):
    """Start-up runs without the cyclic garbage collector; the command runs with it, its
    start-up objects set aside (frozen); and a caller of main() in-process gets the collector
    back as it was, nothing of its own left frozen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    done = subprocess.run(
        [sys.executable, "-c", GC_PROBE, "config"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )
    seen = json.loads(done.stderr.strip().splitlines()[-1])
    assert seen["code"] == 0, done.stderr
    assert seen["enabled"] and seen["frozen"] > 1000  # the modules, pydantic's among them
    assert seen["enabled_after"] and seen["frozen_after"] == 0


def test_a_caller_with_the_collector_off_gets_it_back_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    probe = "import gc\ngc.disable()\n" + GC_PROBE
    done = subprocess.run(
        [sys.executable, "-c", probe, "config"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )
    seen = json.loads(done.stderr.strip().splitlines()[-1])
    assert seen["code"] == 0, done.stderr
    assert seen["enabled"]  # the command itself runs with it
    assert not seen["enabled_after"] and seen["frozen_after"] == 0


def test_the_command_exits_with_its_code_and_its_output_whole(tmp_path):
    """`python -m mailer` (as the installed `mailer`) ends through entry(), which freezes
    what is left before the interpreter exits: the exit code and the output still come whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    valid = subprocess.run(
        [sys.executable, "-m", "mailer", "validate", str(EXAMPLE_ISSUE)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert valid.returncode == 0, valid.stderr
    assert f"{EXAMPLE_ISSUE}: valid: 2026-11-24, 10 stories" in valid.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "mailer", "validate", str(tmp_path / "no-such.json")], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr == f"mailer validate: {tmp_path / 'no-such.json'}: no such issue file\n"
