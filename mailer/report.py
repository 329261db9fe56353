"""What `mailer report` shows, read from the ledger: counts, runs, failures and who was not
sent to, as text lines, one JSON object or CSV rows. Printing is the command line's job."""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from typing import Any, TextIO

from mailer.ledger import IN_FLIGHT, Ledger

CSV_COLUMNS = ["row", "email", "name", "status", "attempts", "last_code", "last_message",
               "reason", "updated_at", "sent_at"]


@dataclass
class Report:
    issue: str
    counts: dict[str, int]
    runs: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    not_sent: list[dict[str, Any]]
    replay_flags: str

    @property
    def delivered(self) -> int:
        """Delivered by every run, killed ones included."""
        return sum(r["delivered"] for r in self.runs)

    @property
    def rate(self) -> float | None:
        """Messages delivered per second over the runs (a killed run up to its last delivery)."""
        seconds = 0.0
        for run in self.runs:
            end = run["ended_at"] or run["last_sent_at"]
            if end:
                start = dt.datetime.fromisoformat(run["started_at"])
                seconds += (dt.datetime.fromisoformat(end) - start).total_seconds()
        if not seconds:
            return None
        return round(self.delivered / seconds, 1)

    def as_json(self) -> dict[str, Any]:
        first, last = (self.runs[0], self.runs[-1]) if self.runs else ({}, {})
        return {
            "issue": self.issue,
            **self.counts,
            "total": sum(self.counts.values()),
            "started_at": first.get("started_at"),
            "ended_at": last.get("ended_at"),
            "runs": len(self.runs),
            "delivered_by_runs": self.delivered,
            "rate_per_second": self.rate,
            "failures": self.failures,
            "not_sent": self.not_sent,
        }

    def lines(self) -> list[str]:
        out = [f"Issue {self.issue}: {sum(self.counts.values())} recipients"]
        out += [f"  {status:<11}{count:>8}" for status, count in self.counts.items()]
        for run in self.runs:
            out.append(
                f"  {run['kind']} run {run['id']}: {run['started_at']} to "
                f"{run['ended_at'] or '(never ended: killed or still running)'}, "
                f"{run['outcome'] or 'interrupted'}, {run['delivered']} delivered"
            )
        if self.runs:
            rate = f" at {self.rate:.1f} messages/s" if self.rate is not None else ""
            out.append(f"  {self.delivered} delivered in {len(self.runs)} run(s){rate}")
        if self.failures:
            out.append("Failures:")
            for f in self.failures:
                reply = f["last_message"] or ""
                if not reply.startswith(str(f["last_code"])):
                    reply = f"{f['last_code'] or '-'} {reply}"
                out.append(f"  {f['email']}  {f['status']}  after {f['attempts']} attempt(s): {reply}")
            if self.counts["failed"]:
                flags = self.replay_flags.replace(" --in-doubt", "")
                out.append(f"Retry the failures with: mailer replay {self.issue}{flags}")
            if self.counts["in_doubt"]:
                out += in_doubt_advice(self.issue, self.counts["in_doubt"])
        if self.not_sent:
            out.append("Not sent:")
            for n in self.not_sent:
                out.append(f"  {n['email'] or '(empty)'}  {n['status']}  row {n['row']}: {n['reason']}")
        return out


def in_doubt_advice(issue: str, count: int) -> list[str]:
    """The truth about messages in doubt: most of them were delivered."""
    return [
        f"{count} message(s) in doubt: the final '.' reached the relay and its reply never came.",
        "  Most such messages were in fact delivered: `mailer replay "
        f"{issue} --in-doubt` would give most of these readers a second copy.",
        "  Check the relay's log for them first; resend only if it shows they were not accepted.",
    ]


def _runs(ledger: Ledger, issue: str) -> list[dict[str, Any]]:
    """The runs, each with what it delivered as the ledger has it (a killed run recorded no
    count of its own)."""
    runs = [dict(r) for r in ledger.runs(issue)]
    for run, following in zip(runs, [*runs[1:], None], strict=True):
        end = following["started_at"] if following else None
        run["delivered"], run["last_sent_at"] = ledger.delivered_between(issue, run["started_at"], end)
    return runs


def gather(ledger: Ledger, issue: str) -> Report:
    counts = ledger.counts(issue)
    problems = [dict(r) for r in ledger.rows(issue, ["failed", "in_doubt", IN_FLIGHT])]
    why = ledger.suppression_reasons(issue)
    flags = (" --in-doubt" if counts["in_doubt"] else "") + (
        " --permanent" if any(r["status"] == "failed" and r["permanent"] for r in problems) else ""
    )
    return Report(
        issue=issue,
        counts=counts,
        runs=_runs(ledger, issue),
        failures=[_failure(r) for r in problems],
        not_sent=[_not_sent(dict(r), why) for r in ledger.rows(issue, ["skipped", "suppressed"])],
        replay_flags=flags,
    )


def write_csv(ledger: Ledger, issue: str, out: TextIO) -> None:
    """One row per recipient, for a spreadsheet."""
    why = ledger.suppression_reasons(issue)
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in ledger.rows(issue):
        values = dict(row)
        if values["status"] == IN_FLIGHT:
            values["status"] = "in_doubt"
        elif values["status"] == "suppressed":
            values["reason"] = _not_sent(values, why)["reason"]
        writer.writerow([spreadsheet_safe(values[c]) for c in CSV_COLUMNS])


# A spreadsheet takes a cell starting with one of these as a formula (tab and CR too: some strip
# them first). OWASP's advice: a leading quote makes it text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A cell a spreadsheet shows as text: a string that could start a formula gets a `'`."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _not_sent(row: dict[str, Any], why: dict[str, str]) -> dict[str, Any]:
    reason = row["reason"] or ""
    if row["status"] == "suppressed":
        reason = "on the suppression list: " + why.get(row["key"], "(since lifted)")
    return {"email": row["email"], "row": row["row"], "status": row["status"], "reason": reason}


def _failure(row: dict[str, Any]) -> dict[str, Any]:
    status = "in_doubt" if row["status"] in ("in_doubt", IN_FLIGHT) else row["status"]
    if status == "failed":
        status = "failed (permanent)" if row["permanent"] else "failed (after retries)"
    return {
        "email": row["email"],
        "status": status,
        "attempts": row["attempts"],
        "last_code": row["last_code"],
        "last_message": row["last_message"],
    }
