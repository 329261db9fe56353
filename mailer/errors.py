"""Every exception the mailer raises, under one root.

Whether a failure is bad input (exit 2) or a reason to try again later (exit 75) is a property
of the exception class, decided here and read only by the command line.
"""

from __future__ import annotations

from mailer.verdicts import Verdict


class MailerError(Exception):
    """Root of the mailer's exceptions."""

    exit_code = 1


class InputError(MailerError):
    """Bad input or usage: nothing was sent."""

    exit_code = 2


class IssueInvalid(InputError):
    """The issue file breaks one or more rules; each problem is one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ConfigError(InputError):
    """A setting is missing or malformed."""


class SubscribersError(InputError):
    """The subscriber list cannot be read."""


class LedgerError(InputError):
    """The ledger cannot be used as it is (for example a newer schema)."""


class RelayRefusesSettings(InputError):
    """The relay refuses what our settings make us send (the login, the certificate, the
    sender...): retrying would give the same answer, so the run stops at once."""


class TryLater(MailerError):
    """The run stopped before its end; re-running the same command resumes."""

    exit_code = 75


class LockHeld(TryLater):
    """Another send or replay holds the lock on this state directory."""


class ServerUnreachable(TryLater):
    """The SMTP server could not be reached, so the remaining recipients stay pending."""


class RunStopped(TryLater):
    """The run stopped early, on an outage or an error on this machine (a full disk, say);
    the rest are left pending."""


class Interrupted(TryLater):
    """SIGINT or SIGTERM: the messages in flight were finished and recorded."""


class DeliveryError(MailerError):
    """One message was not delivered; `verdict` (from the verdict table) says what follows."""

    def __init__(
        self, message: str, *, verdict: Verdict, code: int | None = None, stage: str = "dot"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.verdict = verdict
        self.stage = stage

    @property
    def transient(self) -> bool:
        return self.verdict in (Verdict.TRANSIENT, Verdict.THROTTLED)

    @property
    def throttled(self) -> bool:
        return self.verdict is Verdict.THROTTLED

    @property
    def in_doubt(self) -> bool:
        return self.verdict is Verdict.IN_DOUBT


class ConnectFailed(MailerError):
    """No session could be opened with the server: no message was tried. `verdict` is
    CONFIG when our settings are refused, THROTTLED when the relay is busy (421), else RELAY."""

    def __init__(self, message: str, *, verdict: Verdict = Verdict.RELAY) -> None:
        super().__init__(message)
        self.verdict = verdict


class Withheld(MailerError):
    """At the point of no return the recipient was no longer to be sent to (unsubscribed
    during the run): the message was abandoned before its final dot."""


class DiskFull(TryLater):
    """The disk (or the quota) is full: nothing that did not happen was recorded."""


# The ledger's own reasons to try later are ledger errors too, for code that catches those.
class LedgerFull(DiskFull, LedgerError):
    """The disk under the ledger is full (exit 75)."""


class LedgerBusy(TryLater, LedgerError):
    """Another process holds the ledger, or it could not be read or written (exit 75)."""


# OS errors that say "fix this and run again" (exit 2); any other one may pass (exit 75).
_SETUP_ERRNOS = {"EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ELOOP",
                 "ENAMETOOLONG"}
_FULL_ERRNOS = {"ENOSPC", "EDQUOT", "EFBIG"}


def storage_error(exc: BaseException, what: object) -> MailerError:
    """An OSError or a SQLite error about `what` (a file or directory), as one of ours:
    a full disk or a busy file is a reason to try later, a file that is not what it should be
    or cannot be written is one to fix first."""
    import errno
    import sqlite3

    if isinstance(exc, MailerError):
        return exc
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        reason = exc.strerror or str(exc)
        if name in _FULL_ERRNOS:
            return DiskFull(f"{what}: the disk is full ({reason}); free some space and run again")
        if name in ("EACCES", "EPERM", "EROFS"):
            return InputError(f"{what}: cannot be written ({reason}); check the permissions and the mount")
        if name in _SETUP_ERRNOS:
            return InputError(f"{what}: {reason}")
        return TryLater(f"{what}: {reason}")
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        code = getattr(exc, "sqlite_errorname", "")
        if code in ("SQLITE_FULL",) or "disk is full" in text:
            return LedgerFull(f"{what}: the disk is full ({text}); free some space and run again")
        if code.startswith("SQLITE_BUSY") or code.startswith("SQLITE_LOCKED") or "locked" in text:
            return LedgerBusy(f"{what}: locked by another process ({text}); try again later")
        if code.startswith("SQLITE_READONLY") or "readonly" in text:
            return LedgerError(f"{what}: cannot be written ({text}); check the permissions and the mount")
        if code.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
            return LedgerError(f"{what}: cannot open the ledger ({text}); check that its directory "
                               "exists and can be written")
        if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in text or "malformed" in text:
            return LedgerError(f"{what}: cannot open the ledger: not a sound SQLite database ({text}); "
                               "move it away or restore it from a backup")
        if code.startswith("SQLITE_IOERR"):
            return LedgerBusy(f"{what}: input/output error ({text}); try again later")
        return LedgerError(f"{what}: {text}")
    return TryLater(f"{what}: {exc}")
