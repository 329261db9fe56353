"""The benchmark script runs end to end on a small list (its figures are not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_runs_on_100_subscribers_with_the_aiosmtpd_sink():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--count", "100", "--dry-run-rows", "500", "--connections", "2",
         "--sink", "aiosmtpd"],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"render per issue \(Jinja2 \+ premailer\): [\d.]+ ms", out)
    assert re.search(r"message build per recipient: [\d.]+ us", out)
    assert "sink: aiosmtpd" in out
    assert re.search(r"mailer send, 2 connection\(s\): [\d,]+ messages/s .*exit 0", out)
    assert re.search(r"dry run of 500 rows: [\d.]+ s, peak \d+ MB, exit 0", out)
