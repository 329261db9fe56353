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


def test_unsubscribe_bench_runs_on_a_small_list():
    bench = BENCH.with_name("unsubscribe.py")
    done = subprocess.run(
        [sys.executable, str(bench), "--count", "300", "--clients", "2", "--connections", "2",
         "--sink", "aiosmtpd"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"mailer send alone: [\d,]+ messages/s \(exit 0\)", out)
    assert re.search(r"mailer send during the POSTs: [\d,]+ messages/s \(exit 0\)", out)
    assert re.search(r"unsubscribe POSTs: [\d,]+ in [\d.]+ s, [\d,]+/s; latency p50 [\d.]+ ms, "
                     r"p99 [\d.]+ ms, max [\d.]+ ms; 0 error\(s\)", out)
    assert "mailer serve exit 0" in out
