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
