"""Benchmark of the send path: messages per second against an SMTP sink on loopback.

    python bench/run.py [--count 20000] [--dry-run-rows 1000000] [--connections 1 4]

Uses Postfix's smtp-sink and smtp-source when installed (Debian package `postfix`), else an
aiosmtpd sink and no smtp-source comparison. Installs nothing. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "2026-11-24.json"
SENDER = "news@example.org"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"the sink did not start on port {port}")


def postfix_tool(name: str) -> str | None:
    """Postfix's test tools live in /usr/sbin, often not on a user's PATH."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


@contextlib.contextmanager
def sink(kind: str) -> Iterator[tuple[int, str]]:
    """An SMTP sink on loopback: Postfix's smtp-sink when installed (and `kind` allows), else
    aiosmtpd."""
    port = free_port()
    smtp_sink = postfix_tool("smtp-sink") if kind == "auto" else None
    if smtp_sink:
        command = [smtp_sink]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        command += [f"127.0.0.1:{port}", "256"]
        name = "smtp-sink"
    else:
        command = [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ]
        name = "aiosmtpd"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port, name
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def run_measured(
    command: list[str], env: dict[str, str], stdout: int | None = None
) -> tuple[float, float, int, float]:
    """Wall seconds, peak RSS in MB, exit code and CPU seconds of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE)
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode not in (0,):
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return elapsed, usage.ru_maxrss / 1024, process.returncode, usage.ru_utime + usage.ru_stime


def write_subscribers(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,status\n")
        for n in range(count):
            out.write(f"reader{n}@example{n % 97}.org,Reader Number {n},active\n")


def base_env(state: Path, port: int, connections: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(
        {
            "MAILER_SMTP_HOST": "127.0.0.1",
            "MAILER_SMTP_PORT": str(port),
            "MAILER_SMTP_SECURITY": "none",
            "MAILER_SMTP_CONNECTIONS": str(connections),
            "MAILER_FROM": f"The Top Ten <{SENDER}>",
            "MAILER_SECRET": "bench-secret-0123456789",
            "MAILER_UNSUBSCRIBE_URL": "https://example.org/unsubscribe/{token}",
            "MAILER_DONATE_URL": "https://example.org/donate",
            "MAILER_STATE_DIR": str(state),
        }
    )
    return env


def in_process_figures(count: int) -> tuple[float, float, int]:
    """Render time per issue (Jinja + premailer) and message build time per recipient."""
    sys.path.insert(0, str(ROOT))
    from mailer.config import Settings
    from mailer.issue import load_issue
    from mailer.message import MessageFactory
    from mailer.render import render_issue
    from mailer.subscribers import Recipient

    settings = Settings.model_validate(
        {
            "from": f"The Top Ten <{SENDER}>",
            "secret": "s",
            "unsubscribe_url": "https://example.org/unsubscribe/{token}",
        }
    )
    issue = load_issue(ISSUE)
    runs = 5
    started = time.perf_counter()
    for _ in range(runs):
        rendered = render_issue(issue, settings)
    per_issue = (time.perf_counter() - started) / runs
    factory = MessageFactory(rendered, settings)
    recipients = [Recipient(n, f"reader{n}@example.org", f"Reader {n}") for n in range(count)]
    started = time.perf_counter()
    size = 0
    for r in recipients:
        size = len(factory.build(r))
    per_recipient = (time.perf_counter() - started) / count
    return per_issue, per_recipient, size


def smtp_source(port: int, count: int, connections: int, size: int) -> float | None:
    tool = postfix_tool("smtp-source")
    if not tool:
        return None
    command = [
        tool,
        "-d",
        "-s",
        str(connections),
        "-m",
        str(count),
        "-l",
        str(size),
        "-f",
        SENDER,
        "-t",
        "reader@example.org",
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000, help="subscribers per send run")
    parser.add_argument(
        "--dry-run-rows", type=int, default=1_000_000, help="rows for the dry-run figure (0: skip)"
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--sink", choices=["auto", "aiosmtpd"], default="auto", help="auto: smtp-sink when installed"
    )
    args = parser.parse_args()

    per_issue, per_recipient, size = in_process_figures(min(args.count, 5000))
    print(f"render per issue (Jinja2 + premailer): {per_issue * 1000:.1f} ms")
    print(f"message build per recipient: {per_recipient * 1e6:.1f} us ({size} bytes per message)")

    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        csv_path = tmp / "subscribers.csv"
        write_subscribers(csv_path, args.count)
        with sink(args.sink) as (port, sink_name):
            print(f"sink: {sink_name} on 127.0.0.1:{port}; {args.count} subscribers")
            for connections in args.connections:
                state = tmp / f"state-{connections}"
                env = base_env(state, port, connections)
                command = [sys.executable, "-m", "mailer", "send", str(ISSUE), "--subscribers", str(csv_path)]
                elapsed, peak, code, cpu = run_measured(command, env)
                mailer_rate = args.count / elapsed
                line = (
                    f"mailer send, {connections} connection(s): {mailer_rate:,.0f} messages/s "
                    f"({elapsed:.1f} s, {cpu / args.count * 1e6:.0f} us CPU per message, "
                    f"peak {peak:.0f} MB, exit {code})"
                )
                source_rate = smtp_source(port, args.count, connections, size)
                if source_rate:
                    line += (
                        f"; smtp-source: {source_rate:,.0f} messages/s; ratio {mailer_rate / source_rate:.2f}"
                    )
                print(line, flush=True)
        if args.dry_run_rows:
            big = tmp / "big.csv"
            write_subscribers(big, args.dry_run_rows)
            env = base_env(tmp / "state-dry", 1, 1)
            command = [
                sys.executable,
                "-m",
                "mailer",
                "send",
                str(ISSUE),
                "--subscribers",
                str(big),
                "--dry-run",
            ]
            elapsed, peak, code, _ = run_measured(command, env, stdout=subprocess.DEVNULL)
            print(f"dry run of {args.dry_run_rows:,} rows: {elapsed:.1f} s, peak {peak:.0f} MB, exit {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
