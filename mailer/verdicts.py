"""What an SMTP reply means: one table of (stage, code, enhanced status) -> verdict.

Only evidence about an address removes it from later issues: a 5xx to RCPT TO with an
enhanced status saying the mailbox or domain does not exist. Replies to the connection,
EHLO, STARTTLS, AUTH and MAIL FROM are the relay's or the configuration's business, never a
recipient's. Throttling is recognised by behaviour (421, any 4xx to MAIL FROM, a 4.7.x
status), never by the wording, which differs from relay to relay.

The first row that matches decides; read it from the top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    BAD_ADDRESS = "bad address"  # failed, and suppressed for later issues
    REFUSED = "refused"  # failed (permanent), not suppressed; `replay --permanent` tries again
    TRANSIENT = "transient"  # retried with backoff, each try an attempt; slows the run too
    THROTTLED = "throttled"  # slows the whole run; costs the recipient no attempt
    RELAY = "relay"  # no session: the relay's trouble; the recipient is untouched
    CONFIG = "config"  # the relay refuses our settings: stop at once, exit 2
    IN_DOUBT = "in doubt"  # the final dot went out and no reply came


CONNECT, EHLO, STARTTLS, AUTH = "connect", "ehlo", "starttls", "auth"
MAIL, RCPT, DATA, DOT = "mail", "rcpt", "data", "dot"
STAGES = (CONNECT, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, DOT)
SESSION = frozenset({CONNECT, EHLO, STARTTLS, AUTH})
MESSAGE = frozenset({MAIL, RCPT, DATA, DOT})
ANY = SESSION | MESSAGE


@dataclass(frozen=True)
class Rule:
    stages: frozenset[str]
    code: str  # a whole code ("421") or a class ("4", "5")
    status: str  # "" any; "4.7." a prefix; "5.1.1" exactly that status
    verdict: Verdict
    why: str

    def matches(self, stage: str, code: int, status: str) -> bool:
        if stage not in self.stages or not str(code).startswith(self.code):
            return False
        if self.status.endswith("."):
            return status.startswith(self.status)
        return not self.status or status == self.status


def _at(*stages: str) -> frozenset[str]:
    return frozenset(stages)


# RFC 3463: X.1.1 no such mailbox, X.1.2 no such system (domain), X.1.3 bad mailbox syntax,
# X.1.6 mailbox moved; RFC 7505: X.1.10 null MX (the domain accepts no mail).
_NO_SUCH_ADDRESS = ("5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10")

TABLE: tuple[Rule, ...] = (
    Rule(ANY, "421", "", Verdict.THROTTLED, "the relay is closing the session: slow down"),
    Rule(_at(AUTH), "5", "", Verdict.CONFIG, "the relay refused the login"),
    Rule(_at(STARTTLS), "5", "", Verdict.CONFIG, "the relay refused STARTTLS"),
    Rule(SESSION, "", "", Verdict.RELAY, "no session could be set up"),
    Rule(_at(MAIL), "5", "", Verdict.CONFIG, "the relay refused the sender"),
    # Postfix checks the sender at RCPT time by default (smtpd_delay_reject): X.1.7 and X.1.8
    # are about the sender's address whichever command they answer.
    Rule(_at(RCPT), "5", "5.1.7", Verdict.CONFIG, "the relay refused the sender"),
    Rule(_at(RCPT), "5", "5.1.8", Verdict.CONFIG, "the relay refused the sender"),
    Rule(_at(MAIL), "4", "", Verdict.THROTTLED, "the relay put off the sender: slow down"),
    *(Rule(_at(RCPT), "5", s, Verdict.BAD_ADDRESS, "no such address") for s in _NO_SUCH_ADDRESS),
    # Amazon SES answers its sending-rate limit with a bare 454 ("Throttling failure").
    Rule(MESSAGE, "454", "", Verdict.THROTTLED, "the relay's sending rate limit"),
    Rule(MESSAGE, "4", "4.7.", Verdict.THROTTLED, "a policy deferral: slow down"),
    Rule(MESSAGE, "4", "", Verdict.TRANSIENT, "a temporary refusal"),
    Rule(MESSAGE, "5", "", Verdict.REFUSED, "this message refused"),
    Rule(MESSAGE, "", "", Verdict.TRANSIENT, "a reply that makes no sense here"),
)

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")


def enhanced_status(code: int, text: str) -> str:
    """The RFC 3463 status at the start of a reply's text ("5.1.1"), or "" when there is none
    or it contradicts the reply code's class."""
    found = _STATUS.match(text.lstrip())
    if found is None or found.group(1) != str(code)[:1]:
        return ""
    return found.group(0)


def answered_stage(stage: str, text: str, sender: str, recipient: str) -> str:
    """The stage a reply is really about. Postfix checks the sender at RCPT time by default
    (smtpd_delay_reject), so a refusal of the sender can come as the reply to RCPT TO: one
    naming the envelope sender and not the recipient is a reply to MAIL FROM."""
    lowered = text.lower()
    if stage == RCPT and sender.lower() != recipient.lower() and f"<{sender.lower()}>" in lowered \
            and f"<{recipient.lower()}>" not in lowered:
        return MAIL
    return stage


def rule_for(stage: str, code: int, text: str) -> Rule:
    """The row of the table deciding a reply to `stage` (one of STAGES)."""
    if stage not in STAGES:
        raise ValueError(f"unknown SMTP stage {stage!r}")
    status = enhanced_status(code, text)
    for rule in TABLE:
        if rule.matches(stage, code, status):
            return rule
    raise AssertionError("the table ends with a row for every stage")  # pragma: no cover


def verdict(stage: str, code: int, text: str) -> Verdict:
    """What a reply (its code and its text, the code stripped) to `stage` means."""
    return rule_for(stage, code, text).verdict
