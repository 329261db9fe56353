"""What the fixtures of the tests' real servers (Postfix, Dovecot) share: whether they can run
here, and a private folder their start script sets up and their stop script tears down."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def require(reason: str | None, variable: str) -> None:
    """Skip when the server cannot run here, unless `variable`=1 (CI), where that fails."""
    if reason is None:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1)")
    pytest.skip(reason)


@contextlib.contextmanager
def started(
    script: Path, what: str, prefix: str, *args: str, env: dict[str, str]
) -> Iterator[Path]:
    """`script start DIR ARGS...` in a new folder, yielding the folder; `script stop DIR` and the
    folder removed after."""
    # Not under pytest's own temporary folder: its parents are private to root, and the
    # servers' delivery processes run as nobody and must traverse down to the mail.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    result = subprocess.run([str(script), "start", str(base), *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"the {what} did not start: {result.stderr.strip()}")
    try:
        yield base
    finally:
        subprocess.run([str(script), "stop", str(base)], capture_output=True, env=env)
        shutil.rmtree(base, ignore_errors=True)
