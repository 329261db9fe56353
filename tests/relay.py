"""A real Postfix relay on loopback, for the tests where a relay's own behaviour matters.

`tests/postfix/relay.sh` sets up a private instance (its own configuration, queue and Maildirs
in a temporary folder; nothing leaves the machine); this module starts it once per test session
and gives the tests its ports and what it delivered. Its listeners and the recipient
conventions (unknown*, blocked*, gone*, slow*) are described at the top of relay.sh.

It needs root and Debian's `postfix` (and `sasl2-bin` for AUTH). Without them the tests that use
it are skipped, unless MAILER_REQUIRE_RELAY=1 (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from servers import require, started

SCRIPT = Path(__file__).resolve().parent / "postfix" / "relay.sh"
PORTS = ("plain", "auth", "ratelimit", "connlimit", "reject_sender", "reject_all", "reject_sender_late")
RATE = 20  # messages per RATE_UNIT seconds on the ratelimit port
RATE_UNIT = 10
PASSWORD = "relay-test-password"


def free_port_run(count: int) -> int:
    """A port number with `count` free ports from it, on loopback (also used by bench/run.py)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        sockets = []
        try:
            for n in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + n))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports on loopback")


class Relay:
    """A running Postfix instance: where to connect, and what it delivered."""

    host = "localhost"
    user = "mailer"
    password = PASSWORD
    rate = RATE
    rate_unit = RATE_UNIT

    def __init__(self, base_dir: Path, base_port: int) -> None:
        self.base = base_dir
        self.etc = base_dir / "etc"
        self.ports = {name: base_port + n for n, name in enumerate(PORTS)}
        self.ca_file = self.etc / "tls" / "ca.pem"
        self.log_file = base_dir / "maillog"

    def settings(self, port_name: str = "plain", **extra: str) -> dict[str, str]:
        """MAILER_SMTP_* settings for one of the listeners."""
        values = {
            "MAILER_SMTP_HOST": self.host,
            "MAILER_SMTP_PORT": str(self.ports[port_name]),
            "MAILER_SMTP_SECURITY": "none",
        }
        if port_name == "auth":
            values.update({
                "MAILER_SMTP_SECURITY": "starttls",
                "MAILER_SMTP_CA_FILE": str(self.ca_file),
                "MAILER_SMTP_USER": self.user,
                "MAILER_SMTP_PASSWORD": self.password,
            })
        values.update(extra)
        return values

    def maildir(self, box: str = "all") -> Path:
        return self.base / "mail" / box

    def messages(self, box: str = "all") -> list[Path]:
        folder = self.maildir(box)
        found = [p for sub in ("new", "cur") if (folder / sub).is_dir() for p in (folder / sub).iterdir()]
        return sorted(found)

    def delivered_count(self) -> dict[str, int]:
        """Every address delivered to in Maildir "all", with its number of copies."""
        counts: dict[str, int] = {}
        for path in self.messages("all"):
            with path.open("rb") as f:
                headers = BytesHeaderParser().parse(f)
            for value in headers.get_all("Delivered-To", []):
                key = value.strip().lower()
                counts[key] = counts.get(key, 0) + 1
        return counts

    def queued(self) -> int:
        """Messages Postfix has not finished with, deferred ones left aside."""
        spool = self.base / "spool"
        return sum(
            1 for q in ("maildrop", "incoming", "active") if (spool / q).is_dir()
            for p in (spool / q).rglob("*") if p.is_file()
        )

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until every message taken in was delivered or bounced (deferred ones aside)."""
        self.wait_for(lambda: self.queued() == 0, timeout, "Postfix's queue to empty")

    @staticmethod
    def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "the relay") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def postconf(self, **params: str) -> dict[str, str]:
        """Set main.cf parameters and reload; returns the previous values, to restore after."""
        previous = {}
        for key, value in params.items():
            previous[key] = subprocess.run(
                ["postconf", "-c", str(self.etc), "-h", key], check=True, capture_output=True, text=True
            ).stdout.strip()
            subprocess.run(["postconf", "-c", str(self.etc), "-e", f"{key}={value}"], check=True)
        subprocess.run(["postfix", "-c", str(self.etc), "reload"], check=True, capture_output=True)
        time.sleep(0.5)  # the reload restarts the daemons
        return previous

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def reset(self) -> None:
        """Empty the Maildirs, so a test counts only what it delivered."""
        for box in ("all", "bounces"):
            for path in self.messages(box):
                path.unlink()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the real Postfix relay needs root"
    for tool in ("postfix", "postconf", "saslpasswd2", "openssl"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"the real Postfix relay needs {tool} (apt-get install postfix sasl2-bin openssl)"
    return None


@pytest.fixture(scope="session")
def postfix() -> Iterator[Relay]:
    """One private Postfix instance for the whole test session."""
    require(_unavailable(), "MAILER_REQUIRE_RELAY")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    env["RELAY_RATE"], env["RELAY_PASSWORD"] = str(RATE), PASSWORD
    base_port = free_port_run(len(PORTS))
    with started(SCRIPT, "Postfix relay", "mailer-relay-", str(base_port), env=env) as base_dir:
        yield Relay(base_dir, base_port)
