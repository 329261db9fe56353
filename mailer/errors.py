"""Every exception the mailer raises, under one root.

Whether a failure is bad input (exit 2) or a reason to try again later (exit 75) is a property
of the exception class, decided here and read only by the command line.
"""

from __future__ import annotations


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
    """One message was not delivered; `transient` says whether a retry may help."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        transient: bool,
        throttled: bool = False,
        in_doubt: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.throttled = throttled
        self.in_doubt = in_doubt


class ConnectFailed(MailerError):
    """No session could be opened with the server (refused, TLS, AUTH): no message was tried."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class Withheld(MailerError):
    """At the point of no return the recipient was no longer to be sent to (unsubscribed
    during the run): the message was abandoned before its final dot."""
