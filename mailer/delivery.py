"""The delivery run: the ledger as the work list, N connections, retries, and a clean stop."""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import logging
import random
import re
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailer.config import Settings
from mailer.errors import (
    ConnectFailed,
    DeliveryError,
    InputError,
    Interrupted,
    LockHeld,
    RunStopped,
    ServerUnreachable,
    TryLater,
    Withheld,
    storage_error,
)
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.subscribers import Recipient
from mailer.throttle import Pacer
from mailer.transport import Transport

log = logging.getLogger("mailer")

LOCK_NAME = "send.lock"
MAX_BACKOFF = 300.0
SWITCH_INTERVAL = 0.0005  # seconds, during delivery; the interpreter's default is 0.005
# Recipients failing in a row with no delivery between them, across several domains, say more
# about the relay than about the addresses: the run stops there (exit 75) and they go back to
# pending, so an outage or a relay refusing everything never burns through the list marking
# it failed. The details of what counts are in Delivery._outage.
OUTAGE_STREAK = 10
OUTAGE_DOMAINS = 3
# An enhanced status code of class x.1.x (RFC 3463: addressing) is about the recipient.
_ADDRESS_STATUS = re.compile(r"[245]\d\d[ -][245]\.1\.\d{1,3}\b")


@contextlib.contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """One send or replay at a time per state directory; the kernel frees it if we die."""
    try:
        if state_dir.exists() and not state_dir.is_dir():
            raise InputError(f"{state_dir}: the state directory is a file, not a directory")
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = (state_dir / LOCK_NAME).open("a")
    except OSError as exc:
        raise storage_error(exc, state_dir) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{state_dir}: another send or replay is running; try again later") from None
        yield
    finally:
        handle.close()


def _stopped_by(exc: Exception, ledger: Path) -> TryLater:
    """An error on this machine in the middle of a run (a full disk, say): the run stops, and
    re-running resumes."""
    error = storage_error(exc, ledger) if isinstance(exc, OSError | sqlite3.Error) else exc
    if isinstance(error, TryLater):
        return type(error)(f"{error}; stopped early, the rest left pending")
    return RunStopped(f"stopped by an error: {error}; the rest left pending")


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter around the nominal wait."""
    nominal = min(MAX_BACKOFF, base * 2 ** max(0, attempt - 1))
    return nominal * random.uniform(0.5, 1.5)


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    recipient: Recipient = field(compare=False)
    attempts: int = field(compare=False, default=0)
    released: int = field(compare=False, default=0)  # times an outage put it back before


class _Line:
    """One connection's view of the ledger: its last success is recorded with its next dot."""

    def __init__(self, ledger: Ledger, issue: str, bounces_allowed: bool = False) -> None:
        self.ledger = ledger
        self.issue = issue
        self.bounces_allowed = bounces_allowed
        self.sent: tuple[str, int, str] | None = None

    def dot(self, key: str, attempts: int) -> None:
        marked = self.ledger.mark_dot(
            self.issue, key, attempts, sent=self.sent, bounces_allowed=self.bounces_allowed
        )
        self.sent = None
        if not marked:
            raise Withheld(f"{key}: suppressed during the run")

    def settle(self) -> None:
        if self.sent is not None:
            key, attempts, reply = self.sent
            self.ledger.record(self.issue, key, "sent", attempts, 250, reply)
            self.sent = None


@dataclass
class Tally:
    """What this run did, as it goes; read by the progress display."""

    total: int = 0
    sent: int = 0
    failed: int = 0
    in_doubt: int = 0
    retried: int = 0
    withheld: int = 0  # suppressed at the point of no return
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.in_doubt + self.withheld

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


class Delivery:
    """Delivers every pending row of one issue in the ledger, then returns."""

    def __init__(
        self,
        ledger: Ledger,
        issue: str,
        factory: MessageFactory,
        transports: Callable[[], Transport],
        settings: Settings,
        *,
        stop: threading.Event,
        tally: Tally | None = None,
        lift_bounces: bool = False,
    ) -> None:
        self.ledger = ledger
        self.issue = issue
        self.factory = factory
        self.transports = transports
        self.settings = settings
        self.sender = settings.from_address
        self.stop = stop
        self.tally = tally or Tally()
        self.lift_bounces = lift_bounces
        self.pacer = Pacer(settings.rate_limit)
        self.debug = log.isEnabledFor(logging.DEBUG)  # checked once, not once per message
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # work to take, or the run's end
        self._room = threading.Condition(lock)  # room in the queue, for the feeder
        self._queue: deque[_Job] = deque()
        self._retries: list[_Job] = []
        self._seq = itertools.count()
        self._fed = False
        self._busy = 0
        self._abort: TryLater | None = None
        self._streak: dict[str, tuple[_Job, DeliveryError]] = {}  # recipients failed since the last delivery
        self._streak_domains: set[str] = set()
        self._list_domains = OUTAGE_DOMAINS  # domains in the list, up to OUTAGE_DOMAINS

    # -- the work list --------------------------------------------------------------------

    def _feed(self) -> None:
        """Fill the queue from the ledger; when full, wait until it is half empty, so the
        feeder wakes once per few hundred messages rather than once per message."""
        limit = 256 * self.settings.smtp_connections
        for recipient, attempts, released in self.ledger.pending(self.issue):
            with self._cond:
                if len(self._queue) >= limit:
                    while len(self._queue) > limit // 2 and not self._stopping():
                        self._room.wait(0.5)
                if self._stopping():
                    break
                self._queue.append(_Job(0.0, next(self._seq), recipient, attempts, released))
                self._cond.notify()
        with self._cond:
            self._fed = True
            self._cond.notify_all()

    def _stopping(self) -> bool:
        return self.stop.is_set() or self._abort is not None

    def _halt(self, error: TryLater) -> None:
        """Stop the run (the first reason wins) and wake everyone waiting."""
        with self._cond:
            if self._abort is None:
                self._abort = error  # logged once, by whoever reports how the run ended
            self._cond.notify_all()
            self._room.notify_all()

    def _take(self, idle: Callable[[], None]) -> _Job | None:
        """The next job due; `idle` runs (outside the lock) before waiting for one."""
        with self._cond:
            while True:
                if self._stopping():
                    return None
                now = time.monotonic()
                if self._retries and self._retries[0].due <= now:
                    job = heapq.heappop(self._retries)
                elif self._queue:
                    job = self._queue.popleft()
                elif self._fed and not self._retries and self._busy == 0:
                    self._cond.notify_all()
                    return None
                else:
                    self._cond.release()
                    try:
                        idle()
                    finally:
                        self._cond.acquire()
                    if self._queue or (self._retries and self._retries[0].due <= time.monotonic()):
                        continue
                    wait = self._retries[0].due - now if self._retries else 1.0
                    self._cond.wait(min(wait, 1.0))
                    continue
                self._busy += 1
                if len(self._queue) == 128 * self.settings.smtp_connections:
                    self._room.notify()  # half empty: time for the feeder to fill it again
                return job

    def _finish(self, retry: _Job | None = None) -> None:
        with self._cond:
            self._busy -= 1
            if retry is not None:
                heapq.heappush(self._retries, retry)
            self._cond.notify_all()

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Tally:
        self.tally.total = self.ledger.counts(self.issue)["pending"]
        self._list_domains = self.ledger.pending_domains(self.issue, OUTAGE_DOMAINS)
        workers = [
            threading.Thread(target=self._work, name=f"smtp-{n}", daemon=True)
            for n in range(self.settings.smtp_connections)
        ]
        # The connections are I/O threads that each hold the interpreter lock briefly between
        # socket calls; a shorter switch interval hands it over sooner (measured: steadier
        # and faster runs with four connections).
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        for worker in workers:
            worker.start()
        try:
            self._feed()
        except Exception as exc:  # the ledger could not be read: stop the workers cleanly
            self._halt(_stopped_by(exc, self.ledger.path))
        except BaseException:  # KeyboardInterrupt outside the command line: finish what is in flight
            self.stop.set()
            raise
        finally:
            for worker in workers:
                worker.join()
            sys.setswitchinterval(switch)
        if self._abort is not None:
            raise self._abort
        if self.stop.is_set():
            raise Interrupted("interrupted: the messages in flight were recorded, the rest left pending")
        return self.tally

    def _work(self) -> None:
        transport = self.transports()
        line = _Line(self.ledger, self.issue, self.lift_bounces)
        connect_failures = 0
        try:
            while (job := self._take(line.settle)) is not None:
                retry = None
                try:
                    if self.pacer.rate is not None:
                        line.settle()  # a paced wait can be long: record the last success first
                    self.pacer.wait(self.stop)
                    retry = self._attempt(job, transport, line)
                    connect_failures = 0
                except ConnectFailed as exc:
                    line.settle()
                    connect_failures += 1
                    retry = job  # never tried: not an attempt, and it stays pending
                    job.due = 0.0
                    if exc.fatal or connect_failures >= self.settings.max_attempts:
                        self._halt(ServerUnreachable(
                            f"cannot reach the SMTP server: {exc}; stopped early, the rest left pending"
                        ))
                    else:
                        wait = backoff(connect_failures, self.settings.retry_base_seconds)
                        log.warning("cannot reach the SMTP server (%s); again in %.1fs", exc, wait)
                        self.stop.wait(wait)
                finally:
                    self._finish(retry)
            line.settle()
        except Exception as exc:
            # A full disk, a locked ledger, an unwritable outbox: a dead thread would leave
            # the run waiting for it for ever, holding the lock. Stop the run instead.
            self._halt(_stopped_by(exc, self.ledger.path))
            with contextlib.suppress(Exception):
                line.settle()  # the last success, if the ledger can still take it
        finally:
            transport.close()

    def _attempt(self, job: _Job, transport: Transport, line: _Line) -> _Job | None:
        """One try at one message; returns the job when it is to be tried again later."""
        recipient = job.recipient
        message = self.factory.build(recipient)
        attempts = job.attempts + 1
        try:
            reply = transport.send(
                self.factory.envelope_sender(recipient.email), recipient.email, message,
                lambda: line.dot(recipient.key, attempts),
            )
        except DeliveryError as exc:
            line.settle()
            job.attempts = attempts
            return self._failed(job, exc, self.ledger)
        except Withheld:
            # Unsubscribed while the run was going: the transport closed the connection with
            # the final dot unsent, so the server discards the message. Not a failure.
            log.info("%s: on the suppression list since the run started; not sent", recipient.email)
            with self._cond:
                self.tally.withheld += 1
            return None
        line.sent = (recipient.key, attempts, reply)
        if self.debug:
            log.debug("%s: sent on attempt %d (%s)", recipient.email, attempts, reply)
        if self.lift_bounces:
            self.ledger.unsuppress_bounce(recipient.email)
        self.pacer.success()
        with self._cond:
            self.tally.sent += 1
            if self._streak:
                self._streak.clear()
                self._streak_domains.clear()
        return None

    def _failed(self, job: _Job, exc: DeliveryError, ledger: Ledger) -> _Job | None:
        email, key, attempts = job.recipient.email, job.recipient.key, job.attempts
        if exc.throttled:
            self.pacer.throttle()
        if exc.in_doubt:
            ledger.record(self.issue, key, "in_doubt", attempts, exc.code, exc.message)
            log.warning("%s: in doubt (%s); not resent, see `mailer replay --in-doubt`", email, exc)
            with self._cond:
                self.tally.in_doubt += 1
            self._outage(job, exc, ledger)  # a relay dropping after every dot is an outage too
            return None
        if self._outage(job, exc, ledger):
            return None
        if exc.transient and attempts < self.settings.max_attempts:
            ledger.record(self.issue, key, "pending", attempts, exc.code, exc.message)
            wait = backoff(attempts, self.settings.retry_base_seconds)
            log.info("%s: attempt %d failed (%s); again in %.1fs", email, attempts, exc, wait)
            job.due = time.monotonic() + wait
            with self._cond:
                self.tally.retried += 1
            return job
        permanent = not exc.transient
        ledger.record(self.issue, key, "failed", attempts, exc.code, exc.message, permanent=permanent)
        if permanent:
            ledger.suppress(email, "bounced", f"{self.issue}: {exc.message}")
        log.warning(
            "%s: failed after %d attempt%s (%s)%s",
            email, attempts, "" if attempts == 1 else "s", exc,
            "; suppressed for later issues" if permanent else "",
        )
        with self._cond:
            self.tally.failed += 1
        return None

    def _outage(self, job: _Job, exc: DeliveryError, ledger: Ledger) -> bool:
        """Count a failure towards an outage; when the streak looks like the relay's fault,
        stop the run and put the streak back to pending (lifting the suppressions it added).

        What counts: recipients (not attempts) failing with no delivery between them, across
        OUTAGE_DOMAINS domains (or all the list has). What does not: a refusal about the
        mailbox itself (enhanced status x.1.x), a throttling reply before the message's last
        attempt (the pacer's business), and a recipient an outage already put back once (its
        failure is its own now, so an address that always fails cannot keep the run in 75).
        """
        own_fault = _ADDRESS_STATUS.match(exc.message) is not None
        paced = exc.throttled and job.attempts < self.settings.max_attempts
        with self._cond:
            if self._abort is not None:
                streak = [(job, exc)]  # in flight as the run stopped: pending, like the streak
            elif own_fault or paced or job.released:
                return False
            else:
                self._streak[job.recipient.key] = (job, exc)
                self._streak_domains.add(job.recipient.domain)
                if len(self._streak) < OUTAGE_STREAK or len(self._streak_domains) < self._list_domains:
                    return False
                streak = list(self._streak.values())
                self._streak, self._streak_domains = {}, set()
        if len(streak) > 1:
            self._halt(RunStopped(
                f"{len(streak)} recipients in a row refused, none delivered between them "
                f"(last: {exc.message}); the relay looks down or is refusing everything; "
                "stopped early, the rest left pending"
            ))
        for earlier, error in streak:
            if error.in_doubt:
                continue  # it may have been delivered: it stays in doubt
            r = earlier.recipient
            answered = earlier is job  # this connection's own message: refused, not in doubt
            released = ledger.release(self.issue, r.key, error.code, error.message, answered=answered)
            if released and not error.transient:
                ledger.unsuppress_bounce(r.email)
        with self._cond:
            self.tally.failed -= sum(  # those already counted as failed, this one not yet
                1 for earlier, error in streak
                if earlier is not job and not error.in_doubt
                and (not error.transient or earlier.attempts >= self.settings.max_attempts)
            )
        return True
