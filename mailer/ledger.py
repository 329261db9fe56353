"""The ledger: one SQLite row per issue and recipient, the send log that makes a re-run resume.

WAL mode with `synchronous=NORMAL`: each commit lands in the WAL through the OS before the
call returns, so it survives the process being killed at any moment (`kill -9`), which is the
guarantee the final-dot record needs; surviving a power cut per message is not required.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailer.errors import InputError, LedgerError, SubscribersError, storage_error
from mailer.subscribers import Recipient, SkippedRow

FILE_NAME = "ledger.sqlite3"
# How long to wait for another process's write (`mailer serve`, `unsubscribe`) before giving up.
BUSY_TIMEOUT = 60.0
# Room kept on the disk for recording the deliveries already made when it fills up.
RESERVE_BYTES = 256 * 1024
STATUSES = ("sent", "failed", "in_doubt", "suppressed", "skipped", "pending", "bounced", "complained")
# `dot`: the final "." of the message is about to be sent or was sent with no reply yet.
# After a crash such a row becomes `in_doubt`; in reports it already counts as one.
IN_FLIGHT = "dot"

# Numbered migrations: MIGRATIONS[n] takes a ledger from version n to n + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE deliveries (
            issue TEXT NOT NULL,
            key TEXT NOT NULL,
            email TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            row INTEGER,
            status TEXT NOT NULL,
            reason TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            permanent INTEGER NOT NULL DEFAULT 0,
            last_code INTEGER,
            last_message TEXT,
            plan INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT,
            PRIMARY KEY (issue, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX deliveries_status ON deliveries (issue, status)",
        """CREATE TABLE suppressions (
            key TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            issue TEXT NOT NULL,
            kind TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT,
            delivered INTEGER NOT NULL DEFAULT 0
        )""",
    ],
    # 2: the work list is read in list order by (issue, status, row, key); without an index
    # on all four, each batch sorted every pending row again.
    [
        "DROP INDEX deliveries_status",
        "CREATE INDEX deliveries_queue ON deliveries (issue, status, row, key)",
    ],
    # 3: how many times a row was put back to pending by an outage. No one is ever failed
    # by refusals that stopped a run as an outage, however many runs it lasts; those put back
    # are tried after the others, so that they never hold back the rest of the list.
    [
        "ALTER TABLE deliveries ADD COLUMN released INTEGER NOT NULL DEFAULT 0",
    ],
    # 4: what `mailer inbox` read. A delivered row can become `bounced` or `complained` (a
    # status, no schema change); soft bounces are kept per address and issue, so that only
    # bounces from different issues add up; each message read is recorded once by identity,
    # so that reading it again changes nothing.
    [
        """CREATE TABLE soft_bounces (
            key TEXT NOT NULL,
            issue TEXT NOT NULL,
            status TEXT,
            received_at TEXT NOT NULL,
            PRIMARY KEY (key, issue)
        ) WITHOUT ROWID""",
        """CREATE TABLE inbox_messages (
            identity TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            email TEXT,
            issue TEXT,
            status TEXT,
            outcome TEXT,
            read_at TEXT NOT NULL
        )""",
    ],
    # 5: the work list's index leaves the status out. Every message changes its row's status
    # twice (in flight, then sent), and each change moved the row in an index keyed by status:
    # a third of the CPU of the record before each final dot. In list order alone, the
    # pending rows are read by walking the index past those already done, once per run.
    [
        "DROP INDEX deliveries_queue",
        "CREATE INDEX deliveries_order ON deliveries (issue, row)",
    ],
    # 6: a bounce under another reason. An address that bounced and also unsubscribed or
    # complained, in either order, is on the list for the other reason, with the bounce kept
    # beside it: lifting the unsubscribe (the page's resubscribe) then puts the bounce back
    # rather than forgetting that the mailbox is gone.
    [
        "ALTER TABLE suppressions ADD COLUMN bounce TEXT",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


# Ledger files this process has open through SQLite, with how many connections each. Closing
# any file handle on a file drops every POSIX lock the process holds on it (fcntl's rule), so
# SQLite's own locks of an open connection would silently go: another process would then take
# itself for the last connection, checkpoint and delete the WAL under this one, whose writes
# would go nowhere and later overwrite the file with stale pages. So while a ledger is open
# here, its header is never read with a handle of our own.
_open_here: dict[str, int] = {}
_open_here_lock = threading.Lock()


def _header_version(path: Path) -> int:
    """The user_version in a SQLite file's header (offset 60), read without opening it as one;
    0 when this process already has it open (see `_open_here`): SQLite reads it then."""
    with _open_here_lock:
        if _open_here.get(os.path.realpath(path)):
            return 0
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except (FileNotFoundError, NotADirectoryError):  # the latter is reported when opening it
        return 0
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return 0
    return int.from_bytes(header[60:64], "big")


def _keep_room(reserve: Path) -> Path:
    """A file holding RESERVE_BYTES of the disk, given back when the disk is full so that the
    deliveries already made can still be recorded (else they would be left in doubt). Made
    now, so that a disk already too full fails before anything is sent."""
    if not reserve.is_file() or reserve.stat().st_size < RESERVE_BYTES:
        with reserve.open("wb") as handle:
            handle.write(bytes(RESERVE_BYTES))  # written, not sparse: the blocks are taken
    return reserve


_second: tuple[int, str] = (0, "")


def now() -> str:
    """UTC, ISO 8601 to the millisecond; the date and time part formatted once a second."""
    global _second
    stamp = time.time()
    second = int(stamp)
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((stamp - second) * 1000):03d}+00:00"


@dataclass
class PlanCounts:
    rows: int = 0
    pending: int = 0
    skipped: int = 0
    suppressed: int = 0
    duplicates: int = 0
    done_before: int = 0
    missing: int = 0  # recipients of earlier plans not in this list: left as they are
    plan_id: int = 0


# The point of no return: the row goes in flight only if it is still pending and its address
# is not suppressed (unsubscribed meanwhile by `mailer unsubscribe`, `serve` or `inbox`). One
# statement, so no unsubscribe can fall between the check and the record. A bounce does not
# count when `replay --permanent` sends to bounced addresses on purpose (?1).
_MARK_DOT = (
    "UPDATE deliveries SET status=?2, attempts=?3, updated_at=?4 WHERE issue=?5 AND key=?6 "
    "AND status='pending' AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.key = deliveries.key "
    "AND (s.reason != 'bounced' OR NOT ?1))"
)
# When it did not go in flight: a pending row was withheld because of the suppression list.
_WITHHELD = (
    "UPDATE deliveries SET status='suppressed', updated_at=? WHERE issue=? AND key=? AND status='pending'"
)
_RECORD = (
    "UPDATE deliveries SET status=?, attempts=?, last_code=?, last_message=?, permanent=?, "
    "updated_at=?, sent_at=CASE WHEN ?='sent' THEN ? ELSE sent_at END WHERE issue=? AND key=?"
)


def _record_args(
    issue: str, key: str, status: str, attempts: int, code: int | None, message: str | None,
    permanent: bool,
) -> tuple[object, ...]:
    stamp = now()
    return (status, attempts, code, message, int(permanent), stamp, status, stamp, issue, key)


@dataclass(slots=True)
class _DotRequest:
    """One final dot's record, waiting for a commit (`Ledger.mark_dot`)."""

    dot: tuple[object, ...]
    record: tuple[object, ...] | None
    marked: bool = False
    done: bool = False
    error: BaseException | None = None


class _Transaction:
    """One transaction; rolled back on any error (SQLite may have rolled it back itself, on a
    full disk for instance, and a second rollback must not hide the first error). A class, not
    a generator: the record before each final dot enters one."""

    __slots__ = ("begin", "db")

    def __init__(self, db: sqlite3.Connection, begin: str) -> None:
        self.db, self.begin = db, begin

    def __enter__(self) -> None:
        self.db.execute(self.begin)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


class Ledger:
    """One connection to the ledger, shared by the threads of a run.

    A single connection whose writes are serialised by a lock: several connections would
    contend for SQLite's write lock, whose busy handler sleeps for milliseconds at a time.
    """

    def __init__(self, path: Path, *, read_only: bool = False, busy_timeout: float | None = None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._dots: deque[_DotRequest] = deque()  # final dots' records waiting for a commit
        self.busy_timeout = BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        self._reserve: Path | None = None
        self._held: str | None = None  # the key of this ledger in _open_here while open
        try:
            self._open(read_only)
        except (OSError, sqlite3.Error) as exc:
            raise storage_error(exc, path) from None

    def _open(self, read_only: bool) -> None:
        path = self.path
        # Refuse a newer ledger before SQLite opens it: even setting the journal mode, or a
        # reader's -wal and -shm files, would change what a newer mailer left there.
        self._refuse_newer(_header_version(path))
        if not read_only:
            if path.parent.exists() and not path.parent.is_dir():
                raise LedgerError(f"{path.parent}: the state directory is a file, not a directory")
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = _uri(path) + ("?mode=ro" if read_only else "")
        self.db = self._connect(uri)
        self._held = os.path.realpath(path)
        with _open_here_lock:
            _open_here[self._held] = _open_here.get(self._held, 0) + 1
        try:
            try:
                version = self._version()
            except sqlite3.OperationalError:
                if not read_only or os.access(path.parent, os.W_OK):
                    raise
                # A reader on a read-only mount (a backup, say): SQLite cannot make the WAL's
                # index there, so read the file as it is.
                self.db.close()
                self.db = self._connect(uri + "&immutable=1")
                version = self._version()
            self._refuse_newer(version)  # a version still in the WAL, not yet in the header
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                if read_only:
                    # Migrate rather than misread an older ledger (or fail on a fresh file).
                    Ledger(path).close()
                else:
                    self._migrate()
            if not read_only:
                self._reserve = _keep_room(path.with_name(path.name + "-reserve"))
        except BaseException:
            self.db.close()
            self._release()
            raise

    def _connect(self, uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=self.busy_timeout,
                             check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return db

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """SQLite's and the OS's errors on this ledger as the mailer's own: a full disk or a
        lock held elsewhere is a reason to try later, a broken file one to fix."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            raise storage_error(exc, self.path) from None

    @classmethod
    def in_dir(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / FILE_NAME)

    def close(self) -> None:
        self.db.close()
        self._release()

    def _release(self) -> None:
        with _open_here_lock:
            held = getattr(self, "_held", None)
            if held is not None and _open_here.get(held, 0) > 0:
                _open_here[held] -= 1
                if not _open_here[held]:
                    del _open_here[held]
            self._held = None

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema version {version} is newer than this mailer "
                f"understands ({SCHEMA_VERSION}); upgrade the mailer, nothing was changed"
            )

    def _migrate(self) -> None:
        """Every step in one transaction: a failed migration leaves the ledger as it was."""
        self.db.execute("BEGIN IMMEDIATE")
        step = version = self._version()  # again, now that no one else can be migrating
        try:
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            raise LedgerError(
                f"{self.path}: migrating the ledger from version {step} to {step + 1} failed "
                f"({exc}); nothing was changed"
            ) from exc
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- planning -------------------------------------------------------------------------

    def plan(
        self, issue: str, rows: Iterable[Recipient | SkippedRow], batch: int = 5000, *,
        source: str = "the list", allow_removals: bool = True,
    ) -> PlanCounts:
        """Record every row of the list for this issue, in one transaction.

        The list as it is now decides. A row delivered or in flight keeps its state; a
        failed or in-doubt one is skipped if the list now says so; otherwise a pending row
        whose subscriber has since unsubscribed is skipped, a skipped or suppressed one that
        may now be sent is pending again. Within one list, duplicates (case-insensitive)
        collapse into one row, and a duplicate saying skip (unsubscribed, bounced...) wins
        over one saying send, whichever comes first. A row of an earlier plan missing from
        this list keeps its state, and the run (of this plan) does not send to it; when more
        than a tenth of the recipients are missing, the list is refused (a half-written
        export) unless `allow_removals`, and nothing is changed.
        """
        counts = PlanCounts()
        stamp = now()
        plan_id = time.time_ns()
        status = (
            "CASE WHEN deliveries.status IN ('sent', 'dot') THEN deliveries.status "
            "WHEN deliveries.status IN ('failed', 'in_doubt') THEN "
            "CASE WHEN excluded.status = 'skipped' THEN 'skipped' ELSE deliveries.status END "
            "WHEN deliveries.plan = excluded.plan AND deliveries.status != 'pending' THEN deliveries.status "
            "ELSE excluded.status END"
        )
        upsert = f"""
            INSERT INTO deliveries (issue, key, email, name, row, status, reason, plan,
                                    created_at, updated_at)
            VALUES (?1, ?2, ?3, ?4, ?5,
                    CASE WHEN ?6 = 'pending' AND EXISTS (SELECT 1 FROM suppressions s WHERE s.key = ?2)
                         THEN 'suppressed' ELSE ?6 END,
                    ?7, ?8, ?9, ?9)
            ON CONFLICT (issue, key) DO UPDATE SET
                plan = excluded.plan,
                status = {status},
                reason = CASE WHEN {status} = deliveries.status
                              THEN deliveries.reason ELSE excluded.reason END,
                updated_at = excluded.updated_at
        """
        # Those it was to go to: an address unsubscribed since is not missed when it is gone.
        recipients = (
            "issue=? AND status NOT IN ('skipped', 'suppressed') "
            "AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.key = deliveries.key)"
        )
        with self._transaction():
            planned = self.db.execute(
                f"SELECT count(*) FROM deliveries WHERE {recipients}", (issue,)
            ).fetchone()[0]
            chunk: list[tuple[object, ...]] = []
            for item in rows:
                counts.rows += 1
                if isinstance(item, Recipient):
                    chunk.append((issue, item.key, item.email, item.name, item.row, "pending",
                                  None, plan_id, stamp))
                else:
                    chunk.append((issue, item.key, item.email, "", item.row, "skipped", item.reason,
                                  plan_id, stamp))
                if len(chunk) >= batch:
                    self.db.executemany(upsert, chunk)
                    chunk.clear()
            self.db.executemany(upsert, chunk)
            counts.missing = self.db.execute(
                f"SELECT count(*) FROM deliveries WHERE {recipients} AND plan != ?", (issue, plan_id)
            ).fetchone()[0]
            if counts.missing * 10 > planned and not allow_removals:
                raise SubscribersError(
                    f"{source}: lacks {counts.missing} of the {planned} recipients this issue was "
                    "planned with (more than 10%): a half-written export? Nothing was sent; if they "
                    "were removed on purpose, run again with --allow-removals"
                )
        by_status = self.counts(issue)
        in_this_plan = self.db.execute(
            "SELECT count(*) FROM deliveries WHERE issue=? AND plan=?", (issue, plan_id)
        ).fetchone()[0]
        counts.plan_id = plan_id
        counts.duplicates = counts.rows - in_this_plan
        counts.pending = self.count_pending(issue, plan=plan_id)
        counts.skipped = by_status["skipped"]
        counts.suppressed = by_status["suppressed"]
        done = ("sent", "failed", "in_doubt", "bounced", "complained")
        counts.done_before = sum(by_status[s] for s in done)
        return counts

    def _transaction(self, mode: str = "IMMEDIATE") -> _Transaction:
        return _Transaction(self.db, f"BEGIN {mode}")

    def apply_suppressions(self, issue: str, *, except_bounces: bool = False) -> int:
        """Pending rows whose address is now on the suppression list are not sent (a bounce
        excepted for `replay --permanent`, whose point is to try those again). A failed row
        whose reader has since unsubscribed or complained is no longer owed the issue: it
        becomes suppressed too, else every later run of the issue would end in exit 1."""
        with self.lock:
            cursor = self.db.execute(
                "UPDATE deliveries SET status='suppressed', updated_at=? WHERE issue=? AND ("
                "(status='pending' AND EXISTS (SELECT 1 FROM suppressions s WHERE s.key = deliveries.key "
                "AND (s.reason != 'bounced' OR NOT ?))) OR "
                "(status='failed' AND EXISTS (SELECT 1 FROM suppressions s WHERE s.key = deliveries.key "
                "AND s.reason IN ('unsubscribed', 'complained'))))",
                (now(), issue, int(except_bounces)),
            )
        return cursor.rowcount

    def recover(self, issue: str) -> int:
        """After a crash: a message whose final dot may have reached the server is in doubt."""
        cursor = self.db.execute(
            "UPDATE deliveries SET status='in_doubt', updated_at=?, last_message=coalesce("
            "last_message, 'interrupted after the final dot was sent; the server may have "
            "accepted it') WHERE issue=? AND status=?",
            (now(), issue, IN_FLIGHT),
        )
        return cursor.rowcount

    def pending(
        self, issue: str, batch: int = 2000, *, plan: int | None = None
    ) -> Iterator[tuple[Recipient, int]]:
        """Pending recipients (of one plan of the list, when given) in list order, with the
        attempts made so far, read in batches; those an outage put back come last."""
        in_plan = "" if plan is None else f" AND plan={int(plan)}"
        for put_back in (0, 1):
            last: tuple[int, str] = (-1, "")
            while True:
                with self.lock:
                    rows = self.db.execute(
                        "SELECT row, key, email, name, attempts FROM deliveries WHERE issue=? "
                        f"AND status='pending' AND (released > 0) = ?{in_plan} AND (row, key) > (?, ?) "
                        "ORDER BY row, key LIMIT ?",
                        (issue, put_back, *last, batch),
                    ).fetchall()
                if not rows:
                    break
                for row, _key, email, name, attempts in rows:
                    yield Recipient(row, email, name), attempts
                last = (rows[-1][0], rows[-1][1])

    def count_pending(self, issue: str, *, plan: int | None = None) -> int:
        in_plan = "" if plan is None else f" AND plan={int(plan)}"
        return int(self.db.execute(
            f"SELECT count(*) FROM deliveries WHERE issue=? AND status='pending'{in_plan}", (issue,)
        ).fetchone()[0])

    def pending_domains(self, issue: str, enough: int, *, plan: int | None = None) -> int:
        """How many domains the pending recipients are at, counting no further than `enough`."""
        in_plan = "" if plan is None else f" AND plan={int(plan)}"
        return int(self.db.execute(
            "SELECT count(*) FROM (SELECT DISTINCT substr(key, instr(key, '@') + 1) FROM deliveries "
            f"WHERE issue=? AND status='pending'{in_plan} LIMIT ?)",
            (issue, enough),
        ).fetchone()[0])

    def copy_from(self, other: Path, issue: str) -> None:
        """Seed a scratch ledger with another's suppression list and this issue's rows."""
        self.db.execute("ATTACH DATABASE ? AS other", (_uri(other) + "?mode=ro",))
        try:
            self.db.execute("INSERT INTO suppressions SELECT * FROM other.suppressions")
            self.db.execute(
                "INSERT INTO deliveries SELECT * FROM other.deliveries WHERE issue=?", (issue,)
            )
        finally:
            self.db.execute("DETACH DATABASE other")

    # -- delivery events ------------------------------------------------------------------

    def mark_dot(
        self, issue: str, key: str, attempts: int, sent: tuple[str, int, str] | None = None,
        *, bounces_allowed: bool = False, gather: Callable[[], None] | None = None,
    ) -> bool:
        """Durably record, before it is sent, that the final dot is going out; False when it
        must not go out: the row is no longer pending, or the address is now suppressed (the
        row is then `suppressed`).

        `sent` is the same connection's previous message, (key, attempts, reply), when its
        success is not recorded yet: both go in one commit, so a run costs one commit per
        message and a connection never has more than one message in flight in the ledger.

        Group commit: the records of the connections that are waiting at the same moment go
        in one transaction, committed by whichever of them takes the lock first; each call
        returns only once its own record is committed (or raises what the commit raised).
        `gather`, called once this record is waiting: lets the other connections of the same
        thread come to theirs first.
        """
        record = None if sent is None else _record_args(issue, sent[0], "sent", sent[1], 250, sent[2], False)
        request = _DotRequest((int(bounces_allowed), IN_FLIGHT, attempts, now(), issue, key), record)
        self._dots.append(request)  # deque.append is atomic
        if gather is not None:
            gather()
        with self.lock:
            if not request.done:
                self._commit_dots()
        if request.error is not None:
            raise request.error
        return request.marked

    def _commit_dots(self) -> None:
        """Commit every record waiting (holds `lock`)."""
        dots = self._dots
        batch = [dots.popleft() for _ in range(len(dots))]  # only the lock's holder takes from it
        try:
            if len(batch) == 1 and batch[0].record is None:
                batch[0].marked = self.db.execute(_MARK_DOT, batch[0].dot).rowcount == 1
            else:
                try:
                    with self._transaction("DEFERRED"):
                        for request in batch:
                            if request.record is not None:
                                self.db.execute(_RECORD, request.record)
                            request.marked = self.db.execute(_MARK_DOT, request.dot).rowcount == 1
                except sqlite3.OperationalError as exc:
                    # The disk is full: the next messages will not go, but the ones before
                    # them did; record those in the room kept for it, so none is left in doubt.
                    if self._use_reserve(exc):
                        for request in batch:
                            if request.record is not None:
                                self.db.execute(_RECORD, request.record)
                    raise
            for request in batch:
                if not request.marked:  # rare, so out of the common path's statement
                    issue, key = request.dot[4], request.dot[5]
                    self.db.execute(_WITHHELD, (now(), issue, key))
        except BaseException as exc:
            for request in batch:
                request.marked, request.error = False, exc
            raise
        finally:
            for request in batch:
                request.done = True

    def record(
        self,
        issue: str,
        key: str,
        status: str,
        attempts: int,
        code: int | None = None,
        message: str | None = None,
        *,
        permanent: bool = False,
    ) -> None:
        values = _record_args(issue, key, status, attempts, code, message, permanent)
        with self.lock:
            try:
                self.db.execute(_RECORD, values)
            except sqlite3.OperationalError as exc:
                if not self._use_reserve(exc):
                    raise
                self.db.execute(_RECORD, values)  # what happened is recorded; the run stops next

    def _use_reserve(self, exc: sqlite3.OperationalError) -> bool:
        """On a full disk, free the room kept for recording what already happened."""
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_FULL" or self._reserve is None:
            return False
        self._reserve.unlink(missing_ok=True)
        self._reserve = None
        return True

    def release(
        self, issue: str, key: str, code: int | None, message: str | None, *,
        answered: bool = False, count: bool = True,
    ) -> bool:
        """Back to pending, attempts forgotten, after an outage (`count`: one more time put
        back) or a run stopped for another reason. Never a row in flight or done on another
        connection meanwhile, except (`answered`) the caller's own message, whose final dot
        was answered with a refusal. True when the row was released."""
        statuses = ("pending", "failed", IN_FLIGHT) if answered else ("pending", "failed")
        with self.lock:
            cursor = self.db.execute(
                "UPDATE deliveries SET status='pending', attempts=0, permanent=0, released=released+?, "
                "last_code=coalesce(?, last_code), last_message=coalesce(?, last_message), updated_at=? "
                f"WHERE issue=? AND key=? AND status IN {statuses!r}",
                (int(count), code, message, now(), issue, key),
            )
        return cursor.rowcount == 1

    # -- runs -----------------------------------------------------------------------------

    def start_run(self, issue: str, kind: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO runs (issue, kind, started_at) VALUES (?, ?, ?)", (issue, kind, now())
        )
        return int(cursor.lastrowid or 0)

    def end_run(self, run_id: int, outcome: str, delivered: int) -> None:
        self.db.execute(
            "UPDATE runs SET ended_at=?, outcome=?, delivered=? WHERE id=?",
            (now(), outcome, delivered, run_id),
        )

    def delivered_between(self, issue: str, start: str, end: str | None) -> tuple[int, str | None]:
        """Messages recorded as sent from `start` up to (not including) `end`, and when the
        last of them was: what a run delivered, even one killed before it could say."""
        count, last = self.db.execute(
            "SELECT count(*), max(sent_at) FROM deliveries WHERE issue=? AND status='sent' "
            "AND sent_at >= ? AND (? IS NULL OR sent_at < ?)",
            (issue, start, end, end),
        ).fetchone()
        return int(count), last

    def runs(self, issue: str) -> list[sqlite3.Row]:
        self.db.row_factory = sqlite3.Row
        try:
            return self.db.execute(
                "SELECT * FROM runs WHERE issue=? ORDER BY id", (issue,)
            ).fetchall()
        finally:
            self.db.row_factory = None

    # -- reading --------------------------------------------------------------------------

    def counts(self, issue: str) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, count in self.db.execute(
            "SELECT status, count(*) FROM deliveries WHERE issue=? GROUP BY status", (issue,)
        ):
            counts["in_doubt" if status == IN_FLIGHT else status] += count
        return counts

    def has_issue(self, issue: str) -> bool:
        return self.db.execute(
            "SELECT 1 FROM deliveries WHERE issue=? LIMIT 1", (issue,)
        ).fetchone() is not None

    def rows(self, issue: str, statuses: Iterable[str] | None = None) -> Iterator[sqlite3.Row]:
        self.db.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM deliveries WHERE issue=?"
            params: list[object] = [issue]
            if statuses is not None:
                wanted = list(statuses)
                sql += f" AND status IN ({','.join('?' * len(wanted))})"
                params += wanted
            yield from self.db.execute(sql + " ORDER BY row, key", params)
        finally:
            self.db.row_factory = None

    # -- replay ---------------------------------------------------------------------------

    @staticmethod
    def _replayable(in_doubt: bool, permanent: bool, plan: int | None = None) -> str:
        """The rows `replay` takes: failed after retries, pending (left by a stopped run),
        optionally in doubt or refused, and never an address on the suppression list (a
        bounce only with `permanent`) nor one missing from the list (`plan`)."""
        conditions = ["(status='failed' AND permanent=0)", "status='pending'"]
        if in_doubt:
            conditions.append(f"status IN ('in_doubt', '{IN_FLIGHT}')")
        if permanent:
            conditions.append("(status='failed' AND permanent=1)")
        in_plan = "" if plan is None else f"plan={int(plan)} AND "
        return (
            f"issue=? AND {in_plan}({' OR '.join(conditions)}) AND NOT EXISTS (SELECT 1 FROM suppressions s "
            f"WHERE s.key = deliveries.key AND (s.reason != 'bounced' OR NOT {int(permanent)}))"
        )

    def replay_candidates(
        self, issue: str, *, in_doubt: bool, permanent: bool, plan: int | None = None
    ) -> list[tuple[str, str, str]]:
        """Who `replay` would send to: (address, status, last reply), nothing changed."""
        rows = self.db.execute(
            "SELECT email, CASE status WHEN ? THEN 'in_doubt' ELSE status END, "
            "coalesce(last_message, '') FROM deliveries WHERE "
            + self._replayable(in_doubt, permanent, plan) + " ORDER BY row, key",
            (IN_FLIGHT, issue),
        )
        return [(email, status, last) for email, status, last in rows]

    def reset_for_replay(
        self, issue: str, *, in_doubt: bool, permanent: bool, plan: int | None = None
    ) -> int:
        """Make the chosen failures pending again; nothing already sent is ever touched."""
        cursor = self.db.execute(
            "UPDATE deliveries SET status='pending', attempts=0, permanent=0, updated_at=? WHERE "
            + self._replayable(in_doubt, permanent, plan),
            (now(), issue),
        )
        return cursor.rowcount

    # -- suppression list -----------------------------------------------------------------

    def suppress(self, email: str, reason: str, detail: str = "") -> bool:
        """Add an address; False when it was already there.

        An unsubscribe or a complaint replaces a bounce (`replay --permanent` may retry a
        bounced address, never one that asked to leave), and a complaint replaces an
        unsubscribe (a resubscribe lifts an unsubscribe, never a complaint). A bounce replaced,
        or one that comes for an address already there for another reason, is kept beside it
        (the first one kept), so that lifting that reason never forgets it (`resubscribe`).
        """
        key = email.lower()
        with self.lock, self._atomic():
            cursor = self.db.execute(
                "INSERT INTO suppressions (key, email, reason, detail, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "reason=excluded.reason, detail=excluded.detail, created_at=excluded.created_at, "
                "bounce=CASE WHEN suppressions.reason = 'bounced' THEN coalesce(suppressions.detail, '') "
                "ELSE suppressions.bounce END "
                "WHERE (suppressions.reason = 'bounced' AND excluded.reason != 'bounced') "
                "OR (suppressions.reason = 'unsubscribed' AND excluded.reason = 'complained')",
                (key, email, reason, detail, now()),
            )
            if cursor.rowcount == 0 and reason == "bounced":
                self.db.execute(
                    "UPDATE suppressions SET bounce=? WHERE key=? AND reason != 'bounced' AND bounce IS NULL",
                    (detail, key),
                )
        return cursor.rowcount == 1

    def _atomic(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction of its own, or the caller's when one is open (`transaction`)."""
        return contextlib.nullcontext() if self.db.in_transaction else self._transaction()

    def unsuppress(self, email: str) -> bool:
        cursor = self.db.execute("DELETE FROM suppressions WHERE key=?", (email.lower(),))
        return cursor.rowcount == 1

    def unsuppress_bounce(self, email: str, detail: str | None = None) -> None:
        """A bounce taken back: any, for a replayed address that was refused before and is now
        accepted; only the one recorded with `detail`, for a refusal that turned out to be an
        outage's (an older bounce stays), kept under another reason too."""
        key = email.lower()
        with self.lock:
            if detail is None:
                self.db.execute("DELETE FROM suppressions WHERE key=? AND reason='bounced'", (key,))
                return
            with self._atomic():
                self.db.execute(
                    "DELETE FROM suppressions WHERE key=? AND reason='bounced' AND detail=?", (key, detail)
                )
                self.db.execute("UPDATE suppressions SET bounce=NULL WHERE key=? AND bounce=?", (key, detail))

    def suppressed(self) -> list[tuple[str, str, str, str]]:
        return self.db.execute(
            "SELECT email, reason, coalesce(detail, '') || CASE WHEN bounce IS NULL THEN '' "
            "WHEN bounce = '' THEN '; bounced too' ELSE '; bounced too: ' || bounce END, "
            "created_at FROM suppressions ORDER BY created_at"
        ).fetchall()

    def suppression_reasons(self, issue: str) -> dict[str, str]:
        """Why each address counted `suppressed` in this issue is on the list, if still there."""
        return dict(self.db.execute(
            "SELECT d.key, s.reason || coalesce(' (' || nullif(s.detail, '') || ')', '') "
            "FROM deliveries d JOIN suppressions s ON s.key = d.key "
            "WHERE d.issue=? AND d.status='suppressed'",
            (issue,),
        ).fetchall())

    def suppression_reason(self, email: str) -> str | None:
        """Why the address is on the suppression list, or None."""
        with self.lock:
            row = self.db.execute("SELECT reason FROM suppressions WHERE key=?", (email.lower(),)).fetchone()
        return None if row is None else str(row[0])

    def resubscribe(self, email: str) -> bool:
        """Lift an unsubscribe, never a bounce or a complaint; True when the address is off the
        list. A bounce kept under the unsubscribe is put back in its place."""
        key = email.lower()
        with self.lock, self._atomic():
            self.db.execute(
                "UPDATE suppressions SET reason='bounced', detail=bounce, bounce=NULL "
                "WHERE key=? AND reason='unsubscribed' AND bounce IS NOT NULL",
                (key,),
            )
            cursor = self.db.execute("DELETE FROM suppressions WHERE key=? AND reason='unsubscribed'", (key,))
        return cursor.rowcount == 1

    @staticmethod
    def check(path: Path) -> None:
        """Raise unless the file is a ledger this mailer can read (opened afresh, read only)."""
        if not path.is_file():
            raise LedgerError(f"{path}: no ledger here")
        ledger = Ledger(path, read_only=True, busy_timeout=2.0)
        try:
            ledger.db.execute("SELECT count(*) FROM (SELECT 1 FROM suppressions LIMIT 1)").fetchone()
        finally:
            ledger.close()

    def is_suppressed(self, email: str) -> bool:
        return self.db.execute(
            "SELECT 1 FROM suppressions WHERE key=?", (email.lower(),)
        ).fetchone() is not None


    # -- what comes back (mailer inbox) ---------------------------------------------------

    # A row the ledger has sent (or may have sent): a bounce or complaint can be about it.
    _DELIVERED = (
        f"(sent_at IS NOT NULL OR status IN ('sent', 'in_doubt', '{IN_FLIGHT}', 'bounced', 'complained'))"
    )

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One write transaction, for the effects of one message read by `mailer inbox`."""
        return self._transaction()

    def delivered_to(self, issue: str) -> Iterator[str]:
        """The addresses this issue was sent to."""
        for (email,) in self.db.execute(
            f"SELECT email FROM deliveries WHERE issue=? AND {self._DELIVERED}", (issue,)
        ):
            yield email

    def issues_sent_to(self, email: str) -> list[str]:
        """The issues sent to this address, newest first."""
        return [issue for (issue,) in self.db.execute(
            f"SELECT issue FROM deliveries WHERE key=? AND {self._DELIVERED} ORDER BY issue DESC",
            (email.lower(),),
        )]

    def was_read(self, identity: str) -> bool:
        return self.db.execute(
            "SELECT 1 FROM inbox_messages WHERE identity=?", (identity,)
        ).fetchone() is not None

    def record_read(
        self, identity: str, kind: str, email: str | None, issue: str | None, status: str, outcome: str
    ) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO inbox_messages (identity, kind, email, issue, status, outcome, read_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (identity, kind, email, issue, status, outcome, now()),
        )

    def mark_returned(self, issue: str, email: str, status: str) -> bool:
        """A delivered row becomes `bounced` or `complained` (a complaint outranks a bounce)."""
        before = ("sent", "in_doubt", IN_FLIGHT) + (("bounced",) if status == "complained" else ())
        cursor = self.db.execute(
            f"UPDATE deliveries SET status=?, updated_at=? WHERE issue=? AND key=? AND status IN {before!r}",
            (status, now(), issue, email.lower()),
        )
        return cursor.rowcount == 1

    def soft_bounces(self, email: str, since: str, issue: str | None = None) -> int:
        """Issues that soft-bounced for this address since then, counting `issue` as one."""
        issues = {i for (i,) in self.db.execute(
            "SELECT issue FROM soft_bounces WHERE key=? AND received_at >= ?", (email.lower(), since)
        )}
        return len(issues | ({issue} if issue is not None else set()))

    def add_soft_bounce(self, email: str, issue: str, status: str) -> None:
        """One per address and issue: a later one for the same issue only refreshes it."""
        self.db.execute(
            "INSERT INTO soft_bounces (key, issue, status, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key, issue) DO UPDATE SET status=excluded.status, received_at=excluded.received_at",
            (email.lower(), issue, status, now()),
        )


def open_ledger(state_dir: Path, issue: str | None = None, *, read_only: bool = False) -> Ledger:
    """The ledger of a state directory that must already hold this issue."""
    path = state_dir / FILE_NAME
    if not path.is_file():
        raise InputError(f"{path}: no ledger here; nothing has been sent from this state directory")
    ledger = Ledger(path, read_only=read_only)
    with ledger.guard():
        known = issue is None or ledger.has_issue(issue)
    if not known:
        ledger.close()
        raise InputError(f"{path}: issue {issue} has never been sent from here")
    return ledger
