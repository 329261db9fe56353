"""The delivery run: the ledger as the work list, N connections, retries, and a clean stop.

What a reply means is decided by the verdict table (verdicts.py); when refusals make an
outage, by the outage rule (outage.py). This module applies both to the ledger.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mailer.config import Settings
from mailer.errors import (
    ConnectFailed,
    DeliveryError,
    InputError,
    Interrupted,
    LockHeld,
    MailerError,
    RelayRefusesSettings,
    RunStopped,
    ServerUnreachable,
    TryLater,
    Withheld,
    storage_error,
)
from mailer.hub import Hub, Signal
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.outage import OUTAGE_DOMAINS, OUTAGE_STREAK, THROTTLED_SECONDS, OutageWatch
from mailer.subscribers import Recipient
from mailer.throttle import Pacer
from mailer.transport import Pipelining, Transport
from mailer.verdicts import Verdict

log = logging.getLogger("mailer")

LOCK_NAME = "send.lock"
MAX_BACKOFF = 300.0
__all__ = ["OUTAGE_DOMAINS", "OUTAGE_STREAK", "Delivery", "Tally", "backoff", "run_lock"]


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
    message: bytes | None = field(compare=False, default=None)  # built ahead, while waiting


@dataclass
class _Refusal:
    """One recipient's latest refusal, as the outage rule keeps it."""

    job: _Job
    error: DeliveryError
    failed: bool = False  # recorded as failed (and counted in the tally) since


class _Line:
    """One connection's view of the ledger: its last success is recorded with its next dot,
    in one commit with the dots of the other connections at theirs (`gather`)."""

    def __init__(
        self, ledger: Ledger, issue: str, gather: Callable[[], None], bounces_allowed: bool = False
    ) -> None:
        self.ledger = ledger
        self.issue = issue
        self.gather = gather
        self.bounces_allowed = bounces_allowed
        self.sent: tuple[str, int, str] | None = None

    def dot(self, key: str, attempts: int) -> None:
        marked = self.ledger.mark_dot(
            self.issue, key, attempts, sent=self.sent, bounces_allowed=self.bounces_allowed,
            gather=self.gather,
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
    """Delivers every pending row of one issue in the ledger (of one plan of the list, when
    given), then returns.

    The feeder and the connections are tasks of one hub (hub.py), in the calling thread: they
    take turns only where they wait, so what they share needs no lock."""

    throttled_seconds = THROTTLED_SECONDS

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
        plan: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.issue = issue
        self.factory = factory
        self.transports = transports
        self.settings = settings
        # The work queue holds up to _full jobs; at half of it the feeder fills it again.
        self._full = 256 * settings.smtp_connections
        self.sender = settings.from_address
        self.stop = stop
        self.tally = tally or Tally()
        self.lift_bounces = lift_bounces
        self.plan = plan
        self.pacer = Pacer(settings.rate_limit)
        self.debug = log.isEnabledFor(logging.DEBUG)  # checked once, not once per message
        self.hub = Hub()
        self._work_ready = Signal(self.hub)  # work to take, or the run's end
        self._room = Signal(self.hub)  # room in the queue, for the feeder
        self._queue: deque[_Job] = deque()
        self._retries: list[_Job] = []
        self._seq = itertools.count()
        self._fed = False
        self._busy = 0
        self._abort: MailerError | None = None
        self.outage: OutageWatch[_Refusal] = OutageWatch(0, OUTAGE_DOMAINS)
        self._live = 0  # connections open now
        self._first_tried = False  # the run's first connection was tried
        self._first = Signal(self.hub)  # for the others, waiting until it was
        self._first_taken = False
        self._warned: set[str] = set()

    # -- the work list --------------------------------------------------------------------

    def _feed(self) -> None:
        """Fill the queue from the ledger; when full, wait until it is half empty, so the
        feeder wakes once per few hundred messages rather than once per message."""
        queue = self._queue
        for recipient, attempts in self.ledger.pending(self.issue, plan=self.plan):
            if len(queue) >= self._full:
                while len(queue) > self._full // 2 and not self._stopping():
                    self._room.wait(0.5)
            if self._stopping():
                break
            queue.append(_Job(0.0, next(self._seq), recipient, attempts))
            self._work_ready.notify()
        self._fed = True
        self._work_ready.notify_all()

    def _feeder(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # the ledger could not be read: stop the connections cleanly
            self._halt(_stopped_by(exc, self.ledger.path))

    def _stopping(self) -> bool:
        return self.stop.is_set() or self._abort is not None

    def _halt(self, error: MailerError) -> None:
        """Stop the run (the first reason wins) and wake everyone waiting."""
        if self._abort is None:
            self._abort = error  # logged once, by whoever reports how the run ended
        self._work_ready.notify_all()
        self._room.notify_all()
        self._first_done()

    def _first_done(self) -> None:
        self._first_tried = True
        self._first.notify_all()

    def _take(self, idle: Callable[[], None]) -> _Job | None:
        """The next job due; `idle` runs before waiting for one."""
        while True:
            if self._stopping():
                return None
            now = time.monotonic()
            if self._retries and self._retries[0].due <= now:
                job = heapq.heappop(self._retries)
            elif self._queue:
                job = self._queue.popleft()
            elif self._fed and not self._retries and self._busy == 0:
                self._work_ready.notify_all()
                return None
            else:
                idle()
                if self._queue or (self._retries and self._retries[0].due <= time.monotonic()):
                    continue
                wait = self._retries[0].due - now if self._retries else 1.0
                self._work_ready.wait(min(wait, 1.0))
                continue
            self._taken()
            return job

    def _finish(self, retry: _Job | None = None) -> None:
        self._busy -= 1
        if retry is not None:
            retry.message = None  # built ahead but not sent: built again, its Date current
            heapq.heappush(self._retries, retry)
        elif self._busy or self._queue:
            return  # nobody waits for this: a waiting connection waits for work or the end
        self._work_ready.notify_all()

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Tally:
        pending = self.ledger.count_pending(self.issue, plan=self.plan)
        self.tally.total = pending
        self.outage = OutageWatch(
            pending, self.ledger.pending_domains(self.issue, OUTAGE_DOMAINS, plan=self.plan),
            throttled_seconds=self.throttled_seconds,
        )
        tasks = [self._feeder] + [self._work] * self.settings.smtp_connections
        # A KeyboardInterrupt outside the command line stops the run; the connections not
        # running when it came finish what they have in flight.
        self.hub.run(tasks, interrupted=self.stop.set)
        if self._abort is not None:
            raise self._abort
        if self.stop.is_set():
            raise Interrupted("interrupted: the messages in flight were recorded, the rest left pending")
        return self.tally

    # -- one connection -------------------------------------------------------------------

    def _work(self) -> None:
        transport = self.transports()
        attach = getattr(transport, "attach", None)
        if attach is not None and self.settings.smtp_connections > 1:
            attach(self.hub)
        line = _Line(self.ledger, self.issue, self.hub.end_of_round, self.lift_bounces)
        connect_failures = 0
        live = False
        held: _Job | None = None  # this connection's next message, announced with the last dot
        try:
            while (job := self._next(held, line.settle)) is not None:
                held = None
                retry: _Job | None = None
                retire = False
                try:
                    if not live:
                        if not self._open(transport):
                            retry = job
                            continue
                        live = True
                        self._live += 1
                    if self.pacer.rate is not None:
                        line.settle()  # a paced wait can be long: record the last success first
                        if (delay := self.pacer.delay()) > 0:
                            self.hub.sleep(delay, until=self.stop.is_set)
                    retry, held = self._attempt(job, transport, line)
                    connect_failures = 0
                except ConnectFailed as exc:
                    line.settle()
                    retry = job  # never tried: not an attempt, and it stays pending
                    job.due = 0.0
                    if live:
                        live = False
                        self._live -= 1
                    connect_failures += 1
                    retire = self._cannot_connect(exc, connect_failures)
                finally:
                    self._finish(retry)
                if retire:
                    break
            line.settle()
        except Exception as exc:
            # A full disk, a locked ledger, an unwritable outbox: a dead connection would
            # leave the run waiting for it for ever. Stop the run instead.
            self._halt(_stopped_by(exc, self.ledger.path))
            with contextlib.suppress(Exception):
                line.settle()  # the last success, if the ledger can still take it
        finally:
            if live:
                self._live -= 1
            transport.close()

    def _next(self, held: _Job | None, idle: Callable[[], None]) -> _Job | None:
        """The job announced with the last final dot, unless the run is stopping (it was
        never tried and stays pending); else the next job due."""
        if held is not None:
            if not self._stopping():
                return held
            self._finish()
        return self._take(idle)

    def _take_now(self) -> _Job | None:
        """The next job in the queue, if there is one now and the run goes on."""
        if not self._queue or self._stopping():
            return None
        job = self._queue.popleft()
        self._taken()
        return job

    def _taken(self) -> None:
        """A job was just taken: it is busy now, and when the queue is down to
        half, the feeder is woken to fill it again."""
        self._busy += 1
        if len(self._queue) == self._full // 2:
            self._room.notify()

    def _open(self, transport: Transport) -> bool:
        """Open this connection; the run's first opens alone, so that a refused login or
        certificate is met once, not once per connection at the same moment. False when the
        run stopped meanwhile."""
        first, self._first_taken = not self._first_taken, True
        if first:
            try:
                transport.open()
            except ConnectFailed as exc:
                if exc.verdict is Verdict.CONFIG:  # before anyone else tries
                    self._halt(RelayRefusesSettings(str(exc)))
                raise
            finally:
                self._first_done()
            return True
        while not self._first_tried:
            if self._stopping():
                return False
            self._first.wait(0.5)
        if self._stopping():
            return False
        transport.open()
        return True

    def _cannot_connect(self, exc: ConnectFailed, failures: int) -> bool:
        """A connection could not be opened: stop the run, wait and try again, or (True)
        retire this connection and go on with the others."""
        if exc.verdict is Verdict.CONFIG:
            self._halt(RelayRefusesSettings(str(exc)))
            return False
        others = self._live
        if others and (exc.verdict is Verdict.THROTTLED or failures >= self.settings.max_attempts):
            self._warn_once(
                f"going on with fewer connections than MAILER_SMTP_CONNECTIONS="
                f"{self.settings.smtp_connections}: {exc}"
            )
            return True
        if failures >= self.settings.max_attempts:
            self._halt(ServerUnreachable(
                f"cannot reach the SMTP server: {exc}; stopped early, the rest left pending"
            ))
            return False
        wait = backoff(failures, self.settings.retry_base_seconds)
        self._warn_once(f"cannot reach the SMTP server ({exc}); trying again", f"again in {wait:.1f}s")
        self.hub.sleep(wait, until=self._stopping)
        return False

    def _warn_once(self, problem: str, detail: str = "") -> None:
        """One warning per distinct problem, not one per connection and try."""
        new = problem not in self._warned
        self._warned.add(problem)
        if new:
            log.warning("%s", problem)
        else:
            log.debug("%s%s", problem, f" ({detail})" if detail else "")

    # -- one message ----------------------------------------------------------------------

    def _attempt(
        self, job: _Job, transport: Transport, line: _Line
    ) -> tuple[_Job | None, _Job | None]:
        """One try at one message; returns the job when it is to be tried again later, and
        the next job when its envelope went out with this message's final dot.

        When the server pipelines and the run is not being paced, the next job in the queue
        is taken once this dot is recorded, so that its MAIL, RCPT and DATA go out in one
        write with the dot: one round trip and two system calls fewer per message. That next
        message is then built while the server answers this one's dot."""
        recipient = job.recipient
        message = job.message if job.message is not None else self.factory.build(recipient)
        attempts = job.attempts + 1

        def before_dot() -> None:
            line.dot(recipient.key, attempts)

        held: list[_Job] = []

        def follow() -> tuple[str, str] | None:
            """Once this dot is recorded: the next job in the queue, if any, to announce."""
            if self.pacer.rate is not None:
                return None  # paced: the next message is not to start at once
            following = self._take_now()
            if following is None:
                return None
            held.append(following)
            email = following.recipient.email
            return self.factory.envelope_sender(email), email

        def meanwhile() -> None:
            held[0].message = self._build_ahead(held[0].recipient)

        following = None
        try:
            sender = self.factory.envelope_sender(recipient.email)
            if getattr(transport, "pipelines", False):
                reply = cast(Pipelining, transport).send(
                    sender, recipient.email, message, before_dot, following=follow, meanwhile=meanwhile
                )
            else:
                reply = transport.send(sender, recipient.email, message, before_dot)
            following = held[0] if held else None
        except DeliveryError as exc:
            line.settle()
            return self._refused(job, attempts, exc), held[0] if held else None
        except Withheld:
            # Unsubscribed while the run was going: the transport closed the connection with
            # the final dot unsent, so the server discards the message. Not a failure.
            log.info("%s: on the suppression list since the run started; not sent", recipient.email)
            self.tally.withheld += 1
            return None, None
        except BaseException:
            if held:
                self._finish(held[0])  # never tried: back to the others
            raise
        line.sent = (recipient.key, attempts, reply)
        if self.debug:
            log.debug("%s: sent on attempt %d (%s)", recipient.email, attempts, reply)
        if self.lift_bounces:
            self.ledger.unsuppress_bounce(recipient.email)
        self.pacer.success()
        self.tally.sent += 1
        self.outage.delivered()
        return None, following

    def _build_ahead(self, recipient: Recipient) -> bytes | None:
        """A message built before its turn; None when building it fails, for that error to be
        met in the message's own attempt rather than in the one before it."""
        try:
            return self.factory.build(recipient)
        except Exception:
            return None

    def _refused(self, job: _Job, attempts: int, exc: DeliveryError) -> _Job | None:
        """Apply a refusal's verdict; the job when it is to be tried again in this run."""
        ledger, key, email = self.ledger, job.recipient.key, job.recipient.email
        if exc.verdict is Verdict.CONFIG:  # the sender refused: our settings, not the recipient
            ledger.release(self.issue, key, None, None, answered=True, count=False)
            if exc.code == 530:  # RFC 4954: authentication required
                problem = "MAILER_SMTP_USER and MAILER_SMTP_PASSWORD: the relay wants a login"
            else:
                problem = f"MAILER_FROM: the relay refused the sender <{self.sender}>"
            self._halt(RelayRefusesSettings(
                f"{problem} ({exc.message}); check the setting, and that the relay lets this "
                "mailer send as that sender; nobody was marked failed"
            ))
            return None
        if exc.transient:  # transient refusals slow the whole run, whatever their text
            self.pacer.throttle(0.5 if exc.throttled else Pacer.GENTLE)
        if self._abort is not None and not exc.in_doubt:  # in flight as the run stopped
            ledger.release(self.issue, key, exc.code, exc.message, answered=True, count=False)
            return None
        if exc.throttled:  # the slower pace is the answer: no attempt spent
            ledger.record(self.issue, key, "pending", job.attempts, exc.code, exc.message)
            undo = self.outage.throttled()
            if undo is None:
                job.due = 0.0
                return job
            self._stop_for_outage(undo, job, exc, throttled=True)
            return None
        job.attempts = attempts
        refusal = _Refusal(job, exc)
        if exc.in_doubt:  # it may have been delivered: in doubt whatever follows
            ledger.record(self.issue, key, "in_doubt", attempts, exc.code, exc.message)
            self.tally.in_doubt += 1
            log.warning(
                "%s: in doubt (%s); most such messages were delivered: not resent, see `mailer report`",
                email, exc,
            )
            if self._abort is not None:
                return None
        undo = self.outage.refused(key, job.recipient.domain, refusal)
        if undo is not None:
            self._stop_for_outage(undo, job, exc)
            return None
        if exc.in_doubt:
            return None
        if exc.verdict is Verdict.TRANSIENT and attempts < self.settings.max_attempts:
            ledger.record(self.issue, key, "pending", attempts, exc.code, exc.message)
            wait = backoff(attempts, self.settings.retry_base_seconds)
            log.info("%s: attempt %d failed (%s); again in %.1fs", email, attempts, exc, wait)
            job.due = time.monotonic() + wait
            self.tally.retried += 1
            return job
        bad_address = exc.verdict is Verdict.BAD_ADDRESS
        permanent = exc.verdict in (Verdict.BAD_ADDRESS, Verdict.REFUSED)
        ledger.record(self.issue, key, "failed", attempts, exc.code, exc.message, permanent=permanent)
        if bad_address:
            ledger.suppress(email, "bounced", self._bounce_detail(exc))
        refusal.failed = True
        self.tally.failed += 1
        log.warning(
            "%s: failed after %d attempt%s (%s)%s",
            email, attempts, "" if attempts == 1 else "s", exc,
            "; suppressed for later issues" if bad_address else "",
        )
        return None

    def _bounce_detail(self, exc: DeliveryError) -> str:
        """What a bounce at RCPT is recorded with, and recognised by when an outage undoes it."""
        return f"{self.issue}: {exc.message}"

    def _stop_for_outage(
        self, undo: list[_Refusal], job: _Job, exc: DeliveryError, *, throttled: bool = False
    ) -> None:
        """Stop the run and put back to pending, attempts not counted, every recipient the
        outage refused: no one is failed or suppressed by it."""
        domains = len({r.job.recipient.domain for r in undo})
        if throttled:
            reason = (
                f"the relay has throttled every message for {self.throttled_seconds:.0f} s with "
                f"nothing delivered (last: {exc.message})"
            )
        else:
            reason = (
                f"{len(undo)} recipient(s) in a row refused at {domains} domain(s), none delivered "
                f"between them (last: {exc.message}); the relay looks down or is refusing everything"
            )
        self._halt(RunStopped(f"{reason}; stopped early, nobody marked failed, the rest left pending"))
        if not any(r.job is job for r in undo) and not exc.in_doubt:
            self.ledger.release(self.issue, job.recipient.key, exc.code, exc.message, answered=True)
        for refusal in undo:
            if refusal.error.in_doubt:
                continue  # it may have been delivered: it stays in doubt
            r = refusal.job.recipient
            released = self.ledger.release(
                self.issue, r.key, refusal.error.code, refusal.error.message,
                answered=refusal.job is job,
            )
            if released and refusal.error.verdict is Verdict.BAD_ADDRESS:
                self.ledger.unsuppress_bounce(r.email, self._bounce_detail(refusal.error))
            if refusal.failed:
                self.tally.failed -= 1
