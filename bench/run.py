"""Benchmark of the send path: messages per second against an SMTP server on loopback.

    python bench/run.py [--count 20000 ...] [--connections 1 4] [--message-size 25000]
                        [--relay sink|postfix] [--sink auto|aiosmtpd] [--repeat N]
                        [--dry-run-rows 1000000] [--after-test-send] [--profile DIR]

--relay sink (the default) sends into an SMTP sink: Postfix's smtp-sink when installed (Debian
package `postfix`), else aiosmtpd (and no smtp-source comparison). --relay postfix sends into a
real, private Postfix instance on loopback (tests/postfix/relay.sh: its queue on disk, delivery
to Maildirs; needs root), whose Maildirs are emptied between runs.

In both modes Postfix's smtp-source sends the same count, size and connections into the same
server in the same run, and the ratio is printed; the mailer goes first in odd runs (--repeat)
and last in even ones. A rate is messages over the wall time of the
sender's whole command (start-up and the plan of the list included), which ends when its last
message was accepted (the server's 250 to the final dot) and it has quit: what went into the
server, not what the relay has delivered since. Each figure carries the sender's CPU time (user
+ system, all threads) per message and the machine's load average at its start and end.

smtp-source sends every message to one address; the mailer's list has as many addresses as
subscribers, at 97 domains, and a real Postfix works harder for that (a mailbox and a
destination each). So with --relay postfix a plain sender (bench/plain_sender.py: the mailer's
own message, built once, to the same list, pipelined, one process per connection, no ledger)
runs too, and the mailer's rate over its rate is printed beside the ratio to smtp-source.

With --after-test-send, each mailer send follows a test send (`--to`) in the same state
directory, as the morning run follows the editor's: its rendering is then kept, and Jinja2 and
premailer are skipped. Without it, each send is a first run.

The issue is generated from the example issue at the size asked for (its summaries trimmed or
repeated, its pictures dropped from the last stories first), so that the 25 KB and the 43 KB
cases are one flag apart. Installs nothing. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "2026-11-24.json"
RELAY_SCRIPT = ROOT / "tests" / "postfix" / "relay.sh"
PLAIN_SENDER = Path(__file__).resolve().parent / "plain_sender.py"
SENDER = "news@example.org"
DEFAULT_MESSAGE_SIZE = 25_000  # bytes: the performance target's 10-story issue
SIZE_TOLERANCE = 0.01
SUMMARY_FLOOR = 0.3  # summaries are cut to no less than this share before pictures are dropped


def machine() -> str:
    """What the figures ran on: they mean little without it."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {model or platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; load {load():.2f}"
    )


def byte_compile() -> None:
    """Compile the package as installing it does (pip byte-compiles what it installs), so that
    a start-up is not charged for compiling it again when bytecode is not written
    (PYTHONDONTWRITEBYTECODE)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "mailer")], check=True,
        stdout=subprocess.DEVNULL,
    )


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
    raise SystemExit(f"bench: the sink did not start on port {port}")


def postfix_tool(name: str) -> str | None:
    """Postfix's tools live in /usr/sbin, often not on a user's PATH."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


def load() -> float:
    return os.getloadavg()[0]


# --- the issue, at the size asked for ---------------------------------------------------------


def resize_text(text: str, scale: float) -> str:
    """`text` cut or repeated to about `scale` times its length, at a word boundary."""
    want = max(40, round(len(text) * scale))
    longer = text
    while len(longer) < want:
        longer += "\n\n" + text
    cut = longer[:want]
    if len(longer) > want and " " in cut[want // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:\n") + ("" if cut.rstrip().endswith(".") else ".")


def shaped_issue(example: dict[str, Any], pictures: int, scale: float) -> dict[str, Any]:
    issue = copy.deepcopy(example)
    for n, story in enumerate(issue["stories"]):
        if n >= pictures:
            story.pop("image", None)
        story["summary"] = resize_text(story["summary"], scale)
    return issue


class MessageSizer:
    """The size of one subscriber's message for an issue, built in-process by the send path's
    own renderer and message factory."""

    def __init__(self, folder: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from mailer.config import Settings

        self.folder = folder
        self.settings = Settings.model_validate(
            {
                "from": f"The Top Ten <{SENDER}>",
                "secret": "bench-secret",
                "unsubscribe_url": "https://example.org/unsubscribe/{token}",
                "donate_url": "https://example.org/donate",
            }
        )

    def __call__(self, issue: dict[str, Any]) -> int:
        from mailer.issue import load_issue
        from mailer.message import MessageFactory
        from mailer.render import render_issue
        from mailer.subscribers import Recipient

        path = self.folder / "sizing.json"
        path.write_text(json.dumps(issue), encoding="utf-8")
        rendered = render_issue(load_issue(path), self.settings)
        recipient = Recipient(10000, "reader10000@example9.org", "Reader Number 10000")
        return len(MessageFactory(rendered, self.settings).build(recipient))


def make_issue(folder: Path, target: int) -> tuple[Path, int]:
    """Write an issue whose messages are about `target` bytes; its path and the real size.

    Ten stories always. Above the example's size the summaries are repeated; below it they are
    cut (to no less than SUMMARY_FLOOR of their length), then pictures are dropped from the last
    story up, then the summaries are cut further."""
    example = json.loads(ISSUE.read_text(encoding="utf-8"))
    size_of = MessageSizer(folder)

    def size(pictures: int, scale: float) -> int:
        return size_of(shaped_issue(example, pictures, scale))

    pictures, low, high = len(example["stories"]), SUMMARY_FLOOR, 1.0
    if size(pictures, 1.0) < target:
        low = 1.0
        while size(pictures, high) < target:
            low, high = high, high * 2
    else:
        while pictures > 0 and size(pictures, low) > target:
            pictures -= 1
        if pictures == 0 and size(0, low) > target:
            low, high = 0.0, low
    scale = (low + high) / 2
    for _ in range(20):
        got = size(pictures, scale)
        if abs(got - target) <= target * SIZE_TOLERANCE:
            break
        low, high = (scale, high) if got < target else (low, scale)
        scale = (low + high) / 2
    path = folder / f"issue-{target}.json"
    path.write_text(json.dumps(shaped_issue(example, pictures, scale), indent=1), encoding="utf-8")
    return path, size_of(json.loads(path.read_text(encoding="utf-8")))


# --- the servers ------------------------------------------------------------------------------


class Server:
    """Where the senders connect, and what to do between runs."""

    name = "server"

    def __init__(self, port: int) -> None:
        self.port = port

    def settle(self, expected: int) -> str:
        """Called after each sender's run: a note on what the server made of it."""
        return ""


@contextlib.contextmanager
def sink(kind: str) -> Iterator[tuple[int, str]]:
    """An SMTP sink on loopback, as its port and name (see sink_server)."""
    with sink_server(kind) as server:
        yield server.port, server.name


@contextlib.contextmanager
def sink_server(kind: str) -> Iterator[Server]:
    """An SMTP sink on loopback: Postfix's smtp-sink when installed (and `kind` allows), else
    aiosmtpd."""
    server = Server(free_port())
    smtp_sink = postfix_tool("smtp-sink") if kind == "auto" else None
    if smtp_sink:
        command = [smtp_sink]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        command += [f"127.0.0.1:{server.port}", "256"]
        server.name = "smtp-sink"
    else:
        command = [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{server.port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ]
        server.name = "aiosmtpd"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(server.port)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


class PostfixRelay(Server):
    """A private Postfix instance (tests/postfix/relay.sh): the senders use its `plain`
    listener; everything it accepts is delivered to the Maildir `all` under its folder."""

    name = "postfix"

    def __init__(self, base: Path, port: int) -> None:
        super().__init__(port)
        self.base = base

    def maildir_files(self) -> Iterator[Path]:
        for box in ("all", "bounces"):
            for sub in ("new", "cur", "tmp"):
                folder = self.base / "mail" / box / sub
                if folder.is_dir():
                    with os.scandir(folder) as entries:
                        yield from (Path(e.path) for e in entries if e.is_file())

    def delivered(self) -> int:
        folder = self.base / "mail" / "all" / "new"
        with os.scandir(folder) as entries:
            return sum(1 for _ in entries)

    def queued(self, queues: tuple[str, ...] = ("maildrop", "incoming", "active")) -> int:
        spool = self.base / "spool"
        return sum(1 for q in queues if (spool / q).is_dir() for p in (spool / q).rglob("*") if p.is_file())

    def settle(self, expected: int) -> str:
        """Wait until Postfix has delivered what it took in, count it, and empty the Maildirs so
        that the next run starts with an idle relay and the disk does not fill."""
        started = time.perf_counter()
        deadline = time.monotonic() + 120 + expected / 50
        while self.queued() and time.monotonic() < deadline:
            time.sleep(0.2)
        waited = time.perf_counter() - started
        delivered, deferred = self.delivered(), self.queued(("deferred", "hold"))
        for path in self.maildir_files():
            path.unlink()
        # The disk's write-back of this run must not slow the next one down: whichever
        # sender ran after a quiet spell was otherwise the fastest.
        os.sync()
        note = f"; Postfix then delivered {delivered:,} to the Maildir in {waited:.1f} s more"
        if delivered != expected or deferred:
            note += f" (expected {expected:,}; {deferred} deferred, {self.queued()} still queued)"
        return note


@contextlib.contextmanager
def postfix_relay() -> Iterator[PostfixRelay]:
    if os.geteuid() != 0:
        raise SystemExit("bench: --relay postfix needs root (it starts a private Postfix instance)")
    if not postfix_tool("postfix"):
        raise SystemExit("bench: --relay postfix needs Debian's postfix (apt-get install postfix sasl2-bin)")
    # Not under a private temporary folder: Postfix's delivery agent runs as nobody and must
    # traverse down to the Maildirs.
    base = Path(tempfile.mkdtemp(prefix="mailer-bench-relay-"))
    base.chmod(0o755)
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    sys.path.insert(0, str(ROOT / "tests"))
    from relay import PORTS, free_port_run  # the test relay's own port picker

    port = free_port_run(len(PORTS))
    started = subprocess.run(
        [str(RELAY_SCRIPT), "start", str(base), str(port)], capture_output=True, text=True, env=env
    )
    try:
        if started.returncode != 0:
            raise SystemExit(f"bench: the Postfix relay did not start: {started.stderr.strip()}")
        os.sync()  # see PostfixRelay.settle
        yield PostfixRelay(base, port)
    finally:
        subprocess.run([str(RELAY_SCRIPT), "stop", str(base)], capture_output=True, env=env)
        shutil.rmtree(base, ignore_errors=True)


# --- the senders ------------------------------------------------------------------------------


@dataclass
class Figure:
    rate: float
    elapsed: float
    cpu_per_message: float
    system_per_message: float
    peak_mb: float
    code: int
    load_start: float
    load_end: float

    def describe(self, count: int, extra: str = "", peak: bool = True) -> str:
        # A child's peak RSS counts the bench's own memory at the fork: only the mailer's
        # (larger) figure means something.
        memory = f"peak {self.peak_mb:.0f} MB, " if peak else ""
        return (
            f"{self.rate:,.0f} messages/s ({count:,} in {self.elapsed:.1f} s, "
            f"{self.cpu_per_message * 1e6:.0f} us CPU per message "
            f"({self.system_per_message * 1e6:.0f} of it system), {memory}"
            f"exit {self.code}, load {self.load_start:.2f} to {self.load_end:.2f}{extra})"
        )


def run_measured(
    command: list[str], env: dict[str, str] | None = None, stdout: int | None = None
) -> tuple[float, float, int, float, float]:
    """Wall seconds, peak RSS in MB, exit code, CPU seconds (user + system) and system seconds
    of one child process and the children it waited for."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE)
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    cpu = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss / 1024, process.returncode, cpu, usage.ru_stime


def measure(command: list[str], count: int, env: dict[str, str] | None = None) -> Figure:
    load_start = load()
    elapsed, peak, code, cpu, system = run_measured(command, env, stdout=subprocess.DEVNULL)
    return Figure(count / elapsed, elapsed, cpu / count, system / count, peak, code, load_start, load())


def write_subscribers(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,status\n")
        for n in range(count):
            out.write(f"reader{n}@example{n % 97}.org,Reader Number {n},active\n")


def base_env(state: Path, port: int, connections: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    # The child runs this checkout's mailer, the code the in-process figures time, wherever
    # the benchmark is started from and whatever else is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
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


def in_process_figures(issue_path: Path, count: int) -> tuple[float, float, bytes]:
    """Render time per issue (Jinja + premailer), message build time per recipient, and the
    last message built."""
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
            "donate_url": "https://example.org/donate",
        }
    )
    issue = load_issue(issue_path)
    runs = 5
    started = time.perf_counter()
    for _ in range(runs):
        rendered = render_issue(issue, settings)
    per_issue = (time.perf_counter() - started) / runs
    factory = MessageFactory(rendered, settings)
    recipients = [Recipient(n, f"reader{n}@example{n % 97}.org", f"Reader Number {n}") for n in range(count)]
    started = time.perf_counter()
    message = b""
    for r in recipients:
        message = factory.build(r)
    per_recipient = (time.perf_counter() - started) / count
    return per_issue, per_recipient, bytes(message)


def smtp_source_command(port: int, count: int, connections: int, size: int) -> list[str] | None:
    tool = postfix_tool("smtp-source")
    if not tool:
        return None
    # -d: one connection carries many messages, as the mailer's do.
    return [
        tool, "-d", "-s", str(connections), "-m", str(count), "-l", str(size),
        "-f", SENDER, "-t", "reader@example.org", f"127.0.0.1:{port}",
    ]  # fmt: skip


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """The functions that held the interpreter lock most, from py-spy's raw (collapsed) output:
    self samples (the function was running) and total (it was on the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        n = int(number)
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"  {samples:,} samples with the interpreter lock held; top by self, then by total:"]
    lines += [f"  self {n / samples:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += [f"  total {n / samples:5.1%}  {f}" for f, n in total.most_common(top)]
    return lines


# --- the run ----------------------------------------------------------------------------------


def compare(
    server: Server,
    tmp: Path,
    issue_path: Path,
    size: int,
    count: int,
    connections: int,
    run: int,
    profile: Path | None,
    message_path: Path | None = None,
    after_test_send: bool = False,
) -> float | None:
    """One mailer send and one smtp-source run of the same shape into `server`; the ratio. With
    `message_path`, also the plain sender's run: that message to the same list.

    The mailer goes first in odd runs and last in even ones: into a real Postfix, whichever
    sender follows a quiet spell was often the fastest, and a range over several runs then
    holds both orders."""
    csv_path = tmp / f"subscribers-{count}.csv"
    if not csv_path.exists():
        write_subscribers(csv_path, count)
    state = tmp / f"state-{count}-{connections}-{run}"
    env = base_env(state, server.port, connections)
    command = [sys.executable, "-m", "mailer", "send", str(issue_path), "--subscribers", str(csv_path)]
    profile_file = None
    if profile is not None:
        tool = py_spy()
        if not tool:
            raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
        profile.mkdir(parents=True, exist_ok=True)
        profile_file = profile / f"{server.name}-{count}-{connections}conn-{run}.txt"
        # 250 samples a second: at 1,000 py-spy's pauses of the process swell the start-up
        # (imports) to a third of the samples.
        command = [tool, "record", "--gil", "--format", "raw", "--rate", "250", "-o", str(profile_file),
                   "--", *command]  # fmt: skip
    label = f"{connections} connection(s)"
    if after_test_send:
        # What an editor does before the morning run: a [TEST] copy to themselves, in the same
        # state directory, which keeps the rendering (Jinja2 and premailer are then skipped).
        # The state directory is there already, as on a machine that has sent before.
        state.mkdir(parents=True, exist_ok=True)
        test_send = [sys.executable, "-m", "mailer", "send", str(issue_path), "--to", "editor@example.org"]
        code = run_measured(test_send, env, stdout=subprocess.DEVNULL)[2]
        if code != 0:
            raise SystemExit(f"bench: the test send before the run failed (exit {code})")
        if not any((state / "rendered").glob("*.json")):
            raise SystemExit("bench: the test send kept no rendering in the state directory")
        server.settle(1)
    source_command = smtp_source_command(server.port, count, connections, size)
    plain_command = None if message_path is None else [
        sys.executable, str(PLAIN_SENDER), str(server.port), str(connections), str(message_path),
        str(csv_path),
    ]  # fmt: skip
    named = (("smtp-source", source_command), ("plain sender", plain_command))
    others = [(name, other) for name, other in named if other is not None]

    def others_run() -> list[Figure]:
        figures = []
        for name, other in others:
            figure = measure(other, count)
            note = server.settle(count)
            print(f"{name}, {label}: {figure.describe(count, note, peak=False)}", flush=True)
            figures.append(figure)
        return figures

    figures = others_run() if run % 2 == 0 else []
    mailer = measure(command, count, env)
    note = server.settle(count)
    kept = ", after a test send" if after_test_send else ""
    print(f"mailer send, {label}{kept}: {mailer.describe(count, note)}", flush=True)
    if profile_file is not None and profile_file.exists():
        print(f"  profile in {profile_file} (the figures above include py-spy's cost)")
        print("\n".join(summarise_profile(profile_file)), flush=True)
    if mailer.code != 0 or source_command is None:
        return None
    if run % 2 == 1:
        figures = others_run()
    source = figures[0]
    ratio = mailer.rate / source.rate
    print(f"ratio, {label}{kept}, {count:,} messages: {ratio:.2f}", flush=True)
    if plain_command is not None:
        plain = figures[1]
        print(
            f"ratio to the plain sender (the same message to the same list), {label}{kept}, "
            f"{count:,} messages: {mailer.rate / plain.rate:.2f}; smtp-source to it: "
            f"{source.rate / plain.rate:.2f}",
            flush=True,
        )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, nargs="+", default=[20000], help="subscribers per send run")
    parser.add_argument(
        "--dry-run-rows", type=int, default=1_000_000, help="rows for the dry-run figure (0: skip)"
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--message-size",
        type=int,
        default=DEFAULT_MESSAGE_SIZE,
        metavar="BYTES",
        help="size of each message; the example issue is reshaped to it (default %(default)s; "
        "the example issue itself makes about 43,000)",
    )
    parser.add_argument(
        "--relay",
        choices=["sink", "postfix"],
        default="sink",
        help="sink: an SMTP sink; postfix: a real Postfix on loopback, queue and Maildirs on disk",
    )
    parser.add_argument(
        "--sink", choices=["auto", "aiosmtpd"], default="auto", help="auto: smtp-sink when installed"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each figure")
    parser.add_argument(
        "--after-test-send",
        action="store_true",
        help="before each mailer send, a test send (--to) in its state directory, as an editor "
        "makes before the morning run: the send then finds its rendering kept",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="record each mailer send with py-spy --gil into DIR"
    )
    args = parser.parse_args()
    if args.message_size < 1000 or min(args.count) < 1 or args.repeat < 1 or min(args.connections) < 1:
        parser.error("--message-size is at least 1000; --count, --repeat and --connections at least 1")

    print(machine(), flush=True)
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        issue_path, size = make_issue(tmp, args.message_size)
        if abs(size - args.message_size) > args.message_size * SIZE_TOLERANCE:
            print(f"note: {size:,} bytes is as near to {args.message_size:,} as a ten-story issue gets")
        per_issue, per_recipient, message = in_process_figures(issue_path, min(min(args.count), 5000))
        size = len(message)
        message_path = tmp / "message.eml"  # for the plain sender, into Postfix
        message_path.write_bytes(message)
        print(f"render per issue (Jinja2 + premailer): {per_issue * 1000:.1f} ms")
        print(f"message build per recipient: {per_recipient * 1e6:.1f} us ({size} bytes per message)")

        ratios: dict[tuple[int, int], list[float]] = {}
        server_context = postfix_relay() if args.relay == "postfix" else sink_server(args.sink)
        with server_context as server:
            print(
                f"{args.relay}: {server.name} on 127.0.0.1:{server.port}; {size:,} bytes per message; "
                f"{os.cpu_count()} cores"
            )
            for count in args.count:
                for connections in args.connections:
                    for n in range(1, args.repeat + 1):
                        ratio = compare(
                            server, tmp, issue_path, size, count, connections, n, args.profile,
                            message_path if args.relay == "postfix" else None, args.after_test_send,
                        )
                        if ratio is not None:
                            ratios.setdefault((count, connections), []).append(ratio)
        if args.repeat > 1:
            for (count, connections), found in ratios.items():
                print(
                    f"ratios over {len(found)} runs, {connections} connection(s), {count:,} messages: "
                    f"{min(found):.2f} to {max(found):.2f}"
                )
        if args.dry_run_rows:
            big = tmp / "big.csv"
            write_subscribers(big, args.dry_run_rows)
            env = base_env(tmp / "state-dry", 1, 1)
            command = [
                sys.executable,
                "-m",
                "mailer",
                "send",
                str(issue_path),
                "--subscribers",
                str(big),
                "--dry-run",
            ]
            elapsed, peak, code, _, _ = run_measured(command, env, stdout=subprocess.DEVNULL)
            print(f"dry run of {args.dry_run_rows:,} rows: {elapsed:.1f} s, peak {peak:.0f} MB, exit {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
