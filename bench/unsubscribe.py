"""Benchmark of the unsubscribe endpoint during a send: one-click POSTs per second, and their
latency, while `mailer send` delivers to 20,000 subscribers on the same ledger.

    python bench/unsubscribe.py [--count 20000] [--clients 4] [--sink auto|aiosmtpd] [--who list|others]

Starts an SMTP sink on loopback (as bench/run.py does), the real `mailer serve` and the real
`mailer send` as child processes sharing one state directory, and POSTs Gmail's one-click
request from `--clients` keep-alive connections, each for another subscriber still to come,
for as long as the delivery runs. Prints the POST rate, their latency (p50, p99, max), the
send's rate with and without them, and how many recipients were withheld at the final dot.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ISSUE, ROOT, base_env, sink, write_subscribers  # noqa: E402

sys.path.insert(0, str(ROOT))
from mailer.tokens import make_token  # noqa: E402

SECRET = "bench-secret-0123456789"  # base_env's MAILER_SECRET


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", "serve", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"listening on http://([\d.]+):(\d+)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"mailer serve did not start: {line!r}")
    return process, match.group(1), int(match.group(2))


def delivering(ledger: Path, send: subprocess.Popen[bytes]) -> bool:
    """Wait until the send has delivered its first messages (the plan is done)."""
    while send.poll() is None:
        try:
            db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)
            try:
                if db.execute("SELECT 1 FROM deliveries WHERE status IN ('sent', 'dot') LIMIT 1").fetchone():
                    return True
            finally:
                db.close()
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    return False


def client(host: str, port: int, addresses: list[str], send: subprocess.Popen[bytes],
           latencies: list[float], errors: list[str], ended: list[float]) -> None:
    """One reader after another pressing Gmail's Unsubscribe, over one keep-alive connection."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    for address in addresses:
        if send.poll() is not None:
            break
        target = f"/unsubscribe/{make_token(SECRET, address)}"
        started = time.perf_counter()
        try:
            connection.request("POST", target, body=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
            continue
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            errors.append(f"HTTP {response.status}")
    connection.close()
    ended.append(time.perf_counter())


def send_command(csv_path: Path) -> list[str]:
    return [sys.executable, "-m", "mailer", "send", str(ISSUE), "--subscribers", str(csv_path)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000, help="subscribers in the send")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--connections", type=int, default=4, help="the send's SMTP connections")
    parser.add_argument("--sink", choices=["auto", "aiosmtpd"], default="auto")
    parser.add_argument(
        "--who", choices=["list", "others"], default="list",
        help="list: subscribers still to come, withheld at their final dot (each one costs the "
        "send a reconnection); others: addresses not on the list, the ledger's contention alone",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailer-bench-unsub-") as tmp_dir:
        tmp = Path(tmp_dir)
        csv_path = tmp / "subscribers.csv"
        write_subscribers(csv_path, args.count)
        with sink(args.sink) as (port, sink_name):
            print(f"sink: {sink_name} on 127.0.0.1:{port}; {args.count} subscribers, "
                  f"{args.connections} SMTP connection(s), {args.clients} HTTP client(s)")
            alone_env = base_env(tmp / "state-alone", port, args.connections)
            started = time.perf_counter()
            code = subprocess.run(send_command(csv_path), env=alone_env, stderr=subprocess.DEVNULL).returncode
            alone = args.count / (time.perf_counter() - started)
            print(f"mailer send alone: {alone:,.0f} messages/s (exit {code})")

            env = base_env(tmp / "state", port, args.connections)
            serve, host, http_port = start_serve(env)
            try:
                started = time.perf_counter()
                send = subprocess.Popen(send_command(csv_path), env=env, stderr=subprocess.DEVNULL)
                if not delivering(tmp / "state" / "ledger.sqlite3", send):
                    raise SystemExit("the send ended before it delivered anything")
                # Each client takes every n-th subscriber from the end of the list: readers
                # still to come, so the send meets their unsubscribes at its final dot.
                everyone = [f"reader{n}@example{n % 97}.org" for n in range(args.count - 1, -1, -1)]
                if args.who == "others":
                    everyone = [f"other{n}@example.net" for n in range(args.count)]
                latencies: list[float] = []
                errors: list[str] = []
                ended: list[float] = []
                threads = [
                    threading.Thread(target=client, args=(host, http_port, everyone[k::args.clients], send,
                                                          latencies, errors, ended))
                    for k in range(args.clients)
                ]
                first = time.perf_counter()
                for thread in threads:
                    thread.start()
                code = send.wait()
                sent_seconds = time.perf_counter() - started
                for thread in threads:
                    thread.join()
                posting = max(ended) - first  # until the send ended or the list ran out
            finally:
                serve.send_signal(signal.SIGTERM)
                serve_code = serve.wait(30)
        db = sqlite3.connect(tmp / "state" / "ledger.sqlite3")
        counts = dict(db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())
        db.close()

    if not latencies:
        raise SystemExit("no POST was answered")
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    # The POSTs start once delivery has: every row suppressed in this state directory was
    # withheld by the send at its point of no return, not at the plan.
    print(f"mailer send during the POSTs: {args.count / sent_seconds:,.0f} messages/s (exit {code}); "
          f"{counts.get('sent', 0):,} sent, {counts.get('suppressed', 0):,} unsubscribed while waiting "
          "their turn and withheld at the final dot")
    print(f"unsubscribe POSTs: {len(latencies):,} in {posting:.1f} s, {len(latencies) / posting:,.0f}/s; "
          f"latency p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {ordered[-1] * 1000:.1f} ms; {len(errors)} error(s)")
    print(f"mailer serve exit {serve_code}")
    for error in errors[:5]:
        print(f"  error: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
