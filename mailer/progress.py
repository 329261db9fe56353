"""Progress of a run on stderr: a bar on a terminal, a plain line every 10 s under cron."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from mailer.delivery import Tally

log = logging.getLogger("mailer")


def describe(tally: Tally) -> str:
    remaining = max(0, tally.total - tally.done)
    rate = tally.rate
    eta = f", about {_duration(remaining / rate)} left" if rate > 0 and remaining else ""
    return (
        f"{tally.sent} sent, {tally.failed} failed, {tally.in_doubt} in doubt, "
        f"{remaining} to go, {rate:.1f}/s{eta}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Shows a tally while a run goes on; stops cleanly when the run ends."""

    def __init__(self, tally: Tally, stream: TextIO | None = None, interval: float | None = None):
        self.tally = tally
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.bar else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.bar:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.bar:
                self.stream.write("\r\x1b[2K" + self._bar())
                self.stream.flush()
            else:
                log.info("progress: %s", describe(self.tally))

    def _bar(self, width: int = 30) -> str:
        t = self.tally
        share = t.done / t.total if t.total else 1.0
        filled = int(share * width)
        return f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} {describe(t)}"


def elapsed(tally: Tally) -> str:
    return _duration(time.monotonic() - tally.started)
