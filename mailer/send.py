"""The runs a command starts: send, replay, dry run and test send, tying the parts together."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailer import render_cache
from mailer.config import Settings
from mailer.delivery import Delivery, Tally, run_lock
from mailer.errors import (
    InputError,
    MailerError,
    RelayRefusesSettings,
    SubscribersError,
    TryLater,
    storage_error,
)
from mailer.issue import Issue, content_warnings, load_issue
from mailer.ledger import FILE_NAME, Ledger, PlanCounts, open_ledger
from mailer.message import MessageFactory
from mailer.render import RenderedIssue, render_issue
from mailer.subscribers import Recipient, SkippedRow, check_address, read_subscribers
from mailer.transport import OutboxTransport, SMTPTransport, Transport, check_smtp_settings

log = logging.getLogger("mailer")


@dataclass(frozen=True)
class Prepared:
    """A valid issue, rendered once, with what the editor should be warned of.

    `render_key` is the hash of the rendering's inputs when it may be kept in the state
    directory (None: not kept); `from_cache` says the rendering was the one kept there."""

    path: Path
    issue: Issue
    rendered: RenderedIssue
    warnings: list[str]
    render_key: str | None = None
    from_cache: bool = False

    @property
    def key(self) -> str:
        return self.issue.date.isoformat()


def prepare(path: Path, settings: Settings, state_dir: Path | None = None) -> Prepared:
    """Load and render the issue; with `state_dir`, the rendering kept there is used when
    nothing it depends on has changed."""
    issue = load_issue(path)
    key = render_cache.inputs_key(issue, settings) if state_dir is not None else None
    rendered = render_cache.load(state_dir, issue, key) if state_dir is not None and key else None
    from_cache = rendered is not None
    if rendered is None:
        rendered = render_issue(issue, settings)
        if key is not None and render_cache.inputs_key(issue, settings) != key:
            key = None  # a template changed while it was read: keep nothing made from it
    html_bytes = rendered.html.static_size + 200  # plus one recipient's slots, roughly
    log.debug("%s: %d stories, subject %r, HTML part about %d bytes%s", path, len(issue.stories),
              issue.subject, html_bytes, " (rendered by an earlier run)" if from_cache else "")
    return Prepared(path, issue, rendered, content_warnings(issue, html_bytes), key, from_cache)


def run_state_dir(settings: Settings, outbox: Path | None) -> Path:
    """Where a run keeps its ledger and rendering: an outbox run keeps its own, in the outbox."""
    return outbox if outbox is not None else settings.state_dir


def keep_rendered(prepared: Prepared, state_dir: Path) -> None:
    """Kept for the next run of this issue, once a run has ended (so that it never takes the
    room on disk the ledger needed)."""
    if prepared.render_key is not None and not prepared.from_cache:
        render_cache.store(state_dir, prepared.rendered, prepared.render_key)


@dataclass
class Outcome:
    """How a run ended, from the ledger's point of view."""

    issue: str
    counts: dict[str, int]
    tally: Tally
    plan: PlanCounts | None = None
    recovered: int = 0
    replayed: int = 0
    error: MailerError | None = None
    state_dir: Path = field(default_factory=Path)
    left_out: int = 0  # pending, but missing from the list this run had: not sent to

    @property
    def complete(self) -> bool:
        c = self.counts
        return c["failed"] == 0 and c["in_doubt"] == 0 and c["pending"] == self.left_out

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        return 0 if self.complete else 1


def check_outbox(settings: Settings, outbox: Path | None) -> None:
    """An outbox keeps a ledger of its own: in the state directory it would be the real one,
    and the real send would then find everyone delivered."""
    if outbox is None:
        return
    state = settings.state_dir.resolve()
    target = outbox.resolve()
    if target == state or state in target.parents:
        raise InputError(
            f"--outbox {outbox}: inside the state directory ({settings.state_dir}), where its "
            "ledger would be taken for the real one; choose another directory"
        )


def transport_factory(settings: Settings, outbox: Path | None) -> Callable[[], Transport]:
    """Outbox when asked for, else SMTP: checked now, before any connection."""
    if outbox is not None:
        check_outbox(settings, outbox)
        try:  # a test send has no ledger in the folder to create it
            outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--outbox {outbox}: cannot create the folder: {exc.strerror}") from None
        return lambda: OutboxTransport(outbox)
    check_smtp_settings(settings)
    return lambda: SMTPTransport(settings)


def _deliver(
    ledger: Ledger,
    prepared: Prepared,
    factory: MessageFactory,
    transports: Callable[[], Transport],
    settings: Settings,
    outcome: Outcome,
    stop: threading.Event,
    *,
    kind: str,
    ready: Callable[[], None],
    lift_bounces: bool = False,
) -> Outcome:
    """What every run does, in order: settle a crash's messages in flight, make the rows ready
    (`ready`: the plan of the list, or the failures reset), then deliver inside a run record."""
    with ledger.guard():  # a full disk while planning or at the end: 75, nothing half-written
        outcome.recovered = ledger.recover(prepared.key)
        if outcome.recovered:
            log.warning("%d message(s) were in flight at a crash: now in doubt", outcome.recovered)
        ready()
        # unsubscribed since the plan, or since the run that left these pending stopped
        ledger.apply_suppressions(prepared.key, except_bounces=lift_bounces)
        plan = outcome.plan.plan_id if outcome.plan is not None else None
        if outcome.plan is not None and outcome.plan.missing:
            log.warning(
                "%d recipient(s) of an earlier plan are not in the list now: not sent to, left as they are",
                outcome.plan.missing,
            )
        run_id = ledger.start_run(prepared.key, kind)
        log.debug("%s run %d of %s: plan %s", kind, run_id, prepared.key, outcome.plan)
    delivery = Delivery(
        ledger, prepared.key, factory, transports, settings,
        stop=stop, tally=outcome.tally, lift_bounces=lift_bounces, plan=plan,
    )
    try:
        delivery.run()
    except (TryLater, RelayRefusesSettings) as exc:
        outcome.error = exc
    with ledger.guard():
        outcome.counts = ledger.counts(prepared.key)
        if plan is not None:
            outcome.left_out = outcome.counts["pending"] - ledger.count_pending(prepared.key, plan=plan)
        ledger.end_run(run_id, _outcome_word(outcome), outcome.tally.sent)
    return outcome


def send(
    prepared: Prepared,
    settings: Settings,
    subscribers: Path,
    *,
    outbox: Path | None = None,
    stop: threading.Event | None = None,
    tally: Tally | None = None,
    allow_removals: bool = False,
) -> Outcome:
    """Deliver the issue to every active subscriber not yet delivered; resumable at any point."""
    factory = MessageFactory(prepared.rendered, settings)
    transports = transport_factory(settings, outbox)
    rows = read_subscribers(subscribers)
    state_dir = run_state_dir(settings, outbox)
    stop = stop or threading.Event()
    outcome = Outcome(prepared.key, {}, tally or Tally(), state_dir=state_dir)
    with run_lock(state_dir):
        ledger = Ledger.in_dir(state_dir)

        def ready() -> None:
            outcome.plan = plan_list(ledger, prepared.key, rows, subscribers, allow_removals)

        try:
            _deliver(ledger, prepared, factory, transports, settings, outcome, stop,
                     kind="outbox" if outbox else "send", ready=ready)
        finally:
            ledger.close()
        keep_rendered(prepared, state_dir)
    return outcome


def plan_list(
    ledger: Ledger, issue: str, rows: Iterable[Recipient | SkippedRow], path: Path,
    allow_removals: bool = False,
) -> PlanCounts:
    """The list into the ledger; a list with no rows at all is a broken export, not a quiet
    morning, and one lacking more than a tenth of the issue's recipients may be a half-written
    one (refused unless `allow_removals`)."""
    plan = ledger.plan(issue, rows, source=str(path), allow_removals=allow_removals)
    if plan.rows == 0:
        raise SubscribersError(f"{path}: no subscribers in the list, only a header row; nothing was sent")
    return plan


def replay(
    prepared: Prepared,
    settings: Settings,
    subscribers: Path,
    *,
    in_doubt: bool = False,
    permanent: bool = False,
    stop: threading.Event | None = None,
    tally: Tally | None = None,
    allow_removals: bool = False,
) -> Outcome:
    """Send again to those whose delivery failed, as the list now stands; never to anyone
    already delivered."""
    factory = MessageFactory(prepared.rendered, settings)
    transports = transport_factory(settings, None)
    rows = read_subscribers(subscribers)
    stop = stop or threading.Event()
    outcome = Outcome(prepared.key, {}, tally or Tally(), state_dir=settings.state_dir)
    with run_lock(settings.state_dir):
        ledger = open_ledger(settings.state_dir, prepared.key)

        def ready() -> None:
            outcome.plan = plan_list(ledger, prepared.key, rows, subscribers, allow_removals)
            outcome.replayed = ledger.reset_for_replay(
                prepared.key, in_doubt=in_doubt, permanent=permanent, plan=outcome.plan.plan_id
            )

        try:
            _deliver(ledger, prepared, factory, transports, settings, outcome, stop,
                     kind="replay", ready=ready, lift_bounces=permanent)
        finally:
            ledger.close()
        keep_rendered(prepared, settings.state_dir)
    return outcome


def replay_candidates(
    settings: Settings, issue: str, subscribers: Path, *, in_doubt: bool, permanent: bool,
    allow_removals: bool = False,
) -> list[tuple[str, str, str]]:
    """Who `replay` would send to, the list as it is now: (address, status, last reply); the
    plan is made on a scratch copy, nothing changed."""
    rows = read_subscribers(subscribers)
    real = open_ledger(settings.state_dir, issue, read_only=True)
    real.close()
    with tempfile.TemporaryDirectory(prefix="mailer-dry-run-") as scratch_dir:
        scratch = Ledger(Path(scratch_dir) / FILE_NAME)
        try:
            scratch.copy_from(real.path, issue)
            plan = plan_list(scratch, issue, rows, subscribers, allow_removals)
            return scratch.replay_candidates(issue, in_doubt=in_doubt, permanent=permanent, plan=plan.plan_id)
        except sqlite3.Error as exc:  # the scratch copy, on a full /tmp say
            raise storage_error(exc, scratch.path) from None
        finally:
            scratch.close()


def _outcome_word(outcome: Outcome) -> str:
    if outcome.error is not None:
        return type(outcome.error).__name__
    return "done" if outcome.complete else "failures"


@dataclass
class DryRun:
    """The plan of a send, made on a scratch copy: who would get it, who is skipped and why."""

    plan: PlanCounts
    recipients: Iterator[Recipient]
    skipped: list[tuple[int, str, str, str]]  # row, address, status, reason


@contextlib.contextmanager
def dry_run(
    prepared: Prepared, settings: Settings, subscribers: Path, *, outbox: Path | None = None,
    allow_removals: bool = False,
) -> Iterator[DryRun]:
    """Connects to nothing and writes no ledger row: the plan is made in a scratch ledger."""
    check_outbox(settings, outbox)
    rows = read_subscribers(subscribers)
    real = run_state_dir(settings, outbox) / FILE_NAME
    if real.parent.exists() and not real.parent.is_dir():  # the real run would stop there
        raise InputError(f"{real.parent}: the state directory is a file, not a directory")
    with tempfile.TemporaryDirectory(prefix="mailer-dry-run-") as scratch_dir:
        scratch = Ledger(Path(scratch_dir) / FILE_NAME)
        try:
            if real.is_file():
                Ledger(real, read_only=True).close()  # refuses a ledger newer than this mailer
                try:
                    scratch.copy_from(real, prepared.key)
                except sqlite3.Error as exc:
                    raise storage_error(exc, real) from None
            with scratch.guard():
                plan = plan_list(scratch, prepared.key, rows, subscribers, allow_removals)
                plan.suppressed += scratch.apply_suppressions(prepared.key)  # as the real run will
                plan.pending = scratch.count_pending(prepared.key, plan=plan.plan_id)
                skipped = [
                    (r["row"], r["email"], r["status"], r["reason"] or "on the suppression list")
                    for r in scratch.rows(prepared.key, ["skipped", "suppressed"])
                ]
            yield DryRun(plan, (r for r, _ in scratch.pending(prepared.key, plan=plan.plan_id)), skipped)
        finally:
            scratch.close()


def test_recipients(addresses: list[str]) -> list[Recipient]:
    """The addresses of `--to`, each checked as a subscriber's would be."""
    recipients = []
    for n, raw in enumerate(addresses, start=1):
        try:
            recipients.append(Recipient(n, check_address(raw)))
        except ValueError as exc:
            raise InputError(f"--to {raw}: {exc}") from None
    return recipients


def test_send(
    prepared: Prepared,
    settings: Settings,
    addresses: list[str],
    *,
    outbox: Path | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """`[TEST] ` to a few addresses through the real path, recorded nowhere as a delivery. The
    rendering is kept in the state directory, when there is one, so that the run that follows
    the editor's test copy starts without rendering."""
    recipients: list[Recipient | SkippedRow] = list(test_recipients(addresses))
    factory = MessageFactory(prepared.rendered, settings, test=True)
    transports = transport_factory(settings, outbox)
    log.info("test send of %s to %s", prepared.key, ", ".join(addresses))  # once the settings pass
    stop = stop or threading.Event()
    with tempfile.TemporaryDirectory(prefix="mailer-test-send-") as scratch_dir:
        ledger = Ledger(Path(scratch_dir) / FILE_NAME)
        try:
            outcome = Outcome(prepared.key, {}, Tally(), state_dir=Path(scratch_dir))

            def ready() -> None:
                outcome.plan = ledger.plan(prepared.key, recipients)

            outcome = _deliver(ledger, prepared, factory, transports, settings, outcome, stop,
                               kind="test", ready=ready)
        finally:
            ledger.close()
    if outbox is None and settings.state_dir.is_dir():
        keep_rendered(prepared, settings.state_dir)
    return outcome
