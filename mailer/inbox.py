"""`mailer inbox`: whom each returned message is about, and what it changes in the ledger.

The policy, in one place: a hard bounce or a complaint suppresses the address at once; soft
bounces from `$MAILER_SOFT_BOUNCE_LIMIT` different issues within 30 days do; a mailed
unsubscribe with a genuine token does. Only evidence about an address the ledger sent to
counts, and each message counts once however often it is read.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailer.bounces import KINDS, Finding, classify
from mailer.config import Settings
from mailer.errors import TryLater
from mailer.ledger import Ledger
from mailer.mailboxes import Source
from mailer.tokens import message_id_digest
from mailer.verp import mac
from mailer.verp import read_token as read_verp

SOFT_WINDOW = dt.timedelta(days=30)
REASONS = {"hard": "bounced", "complaint": "complained", "unsubscribe": "unsubscribed"}


@dataclass
class Result:
    kind: str
    address: str | None
    status: str
    issue: str | None
    outcome: str
    source: str
    suppressed: bool = False

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "address": self.address, "status": self.status or None,
                "issue": self.issue, "outcome": self.outcome, "source": self.source}

    def line(self) -> str:
        fields = [self.kind, self.address or "-", self.status or "-", self.issue or "-", self.outcome]
        return "  ".join(fields)


@dataclass
class Summary:
    results: list[Result]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for r in self.results:
            counts[r.kind] += 1
        return counts

    def line(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        suppressed = sum(r.suppressed for r in self.results)
        return f"{len(self.results)} message(s) read: {counts}; {suppressed} address(es) suppressed"

    def as_json(self) -> dict[str, object]:
        return {**self.counts(), "suppressed": sum(r.suppressed for r in self.results),
                "messages": [r.as_json() for r in self.results]}


class Resolver:
    """Whom a finding is about, in order: the VERP token, our Message-ID quoted in it, then a
    reported address the ledger sent to. (address, issue) or (None, None)."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger = ledger
        self.secret = settings.secret
        self.list_id = settings.list_id_header
        self._verp: dict[str, dict[str, str]] = {}  # issue -> {mac: address}
        self._ids: dict[str, dict[str, str]] = {}  # issue -> {digest: address}
        self._sent: dict[str, list[str]] = {}  # issue -> the addresses it went to

    def about(self, finding: Finding) -> tuple[str | None, str | None]:
        for token in finding.verp:
            issue, code = read_verp(token)
            address = self._verp_map(issue).get(code)
            if address:
                return address, issue
        for issue, digest in finding.message_ids:
            address = self._id_map(issue).get(digest)
            if address:
                return address, issue
        for address in finding.recipients:
            issues = self.ledger.issues_sent_to(address)
            if issues:
                return address, issues[0]
        return None, None

    def _verp_map(self, issue: str) -> dict[str, str]:
        """Built once per issue per run: a MAC per address the issue went to."""
        if not self.secret:
            return {}
        if issue not in self._verp:
            self._verp[issue] = {mac(self.secret, issue, a): a for a in self._sent_to(issue)}
        return self._verp[issue]

    def _id_map(self, issue: str) -> dict[str, str]:
        if issue not in self._ids:
            self._ids[issue] = {message_id_digest(self.list_id, issue, a): a for a in self._sent_to(issue)}
        return self._ids[issue]

    def _sent_to(self, issue: str) -> list[str]:
        """The addresses an issue went to, read from the ledger once per issue for both maps."""
        if issue not in self._sent:
            self._sent[issue] = list(self.ledger.delivered_to(issue))
        return self._sent[issue]


class Inbox:
    """Reads sources, classifies each message and applies what it says (or, in a dry run, says
    what it would do)."""

    def __init__(self, ledger: Ledger, settings: Settings, *, dry_run: bool = False) -> None:
        self.ledger = ledger
        self.settings = settings
        self.dry_run = dry_run
        self.resolver = Resolver(ledger, settings)

    def read(self, sources: Iterable[Source]) -> Iterator[Result]:
        for source in sources:
            try:
                for item in source.messages():
                    finding = classify(item.data, secret=self.settings.secret,
                                       unsubscribe_to=self.settings.unsubscribe_mailto)
                    try:
                        result = self.apply(finding, source.name)
                    except sqlite3.Error as exc:  # locked for a minute by another process, a full disk
                        raise TryLater(
                            f"{self.ledger.path}: the ledger cannot be written ({exc}); the message "
                            "stays where it was, run again later"
                        ) from None
                    if finding.kind != "other" and not self.dry_run:
                        source.done(item)  # after the ledger's commit: a crash reads it again
                    yield result
            finally:
                source.close()

    def apply(self, finding: Finding, source: str = "") -> Result:
        result = Result(finding.kind, None, finding.status, None, "left alone", source)
        if finding.kind == "other":
            return result
        if finding.kind == "unsubscribe":
            result.address = finding.recipients[0]
        else:
            result.address, result.issue = self.resolver.about(finding)
            if result.address is None:
                result.address = finding.recipients[0] if finding.recipients else None
                result.outcome = "not an address this list sent to: nothing changed"
        if self.ledger.was_read(finding.identity):
            result.outcome = "already read: nothing changed"
            return result
        if self.dry_run:
            if result.outcome == "left alone":
                result.outcome = self._would(finding, result)
            return result
        with self.ledger.transaction():
            if result.outcome == "left alone":
                self._effect(finding, result)
            self.ledger.record_read(finding.identity, result.kind, result.address, result.issue,
                                    result.status, result.outcome)
        return result

    def _effect(self, finding: Finding, result: Result) -> None:
        address, issue = result.address or "", result.issue
        if finding.kind == "soft":
            self.ledger.add_soft_bounce(address, issue or "", finding.status)
            count = self.ledger.soft_bounces(address, self._since())
            limit = self.settings.soft_bounce_limit
            if count < limit:
                result.outcome = f"counted: {count} of {limit} soft bounces in 30 days"
                return
            detail = f"{count} soft bounces in 30 days, the last {finding.status}, issue {issue}"
            result.suppressed = self.ledger.suppress(address, "bounced", detail)
            result.outcome = f"suppressed: {count} soft bounces in 30 days" if result.suppressed else (
                "already suppressed")
            return
        reason = REASONS[finding.kind]
        what = {"hard": f"{finding.status} returned", "complaint": "a complaint",
                "unsubscribe": "a mailed unsubscribe"}[finding.kind]
        detail = f"{what}, issue {issue}" if issue else what
        result.suppressed = self.ledger.suppress(address, reason, detail)
        result.outcome = "suppressed" if result.suppressed else "already suppressed"
        if issue and finding.kind in ("hard", "complaint"):
            self.ledger.mark_returned(issue, address, reason)

    def _would(self, finding: Finding, result: Result) -> str:
        address = result.address or ""
        if finding.kind == "soft":
            count = self.ledger.soft_bounces(address, self._since(), result.issue or "")
            limit = self.settings.soft_bounce_limit
            if count < limit:
                return f"would count: {count} of {limit} soft bounces in 30 days"
        if self.ledger.is_suppressed(address) and finding.kind != "complaint":
            return "already suppressed"
        return "would suppress"

    @staticmethod
    def _since() -> str:
        return (dt.datetime.now(dt.UTC) - SOFT_WINDOW).strftime("%Y-%m-%dT%H:%M:%S")
