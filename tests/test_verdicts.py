"""The verdict table, row by row, with reply lines as real relays send them (Postfix, Exim,
Exchange Online, Gmail, Amazon SES): the code, then the text as smtplib hands it over (the
code and its separator removed from each line of a multi-line reply)."""

from __future__ import annotations

import pytest

from mailer.verdicts import STAGES, TABLE, Verdict, answered_stage, enhanced_status, rule_for, verdict

V = Verdict

# (relay, stage, code, text, verdict)
REPLIES = [
    # -- user unknown: evidence about the address ------------------------------------------
    ("postfix", "rcpt", 550,
     "5.1.1 <ann@example.org>: Recipient address rejected: User unknown in local recipient table",
     V.BAD_ADDRESS),
    ("postfix", "rcpt", 550,
     "5.1.1 <ann@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
     V.BAD_ADDRESS),
    ("exim", "rcpt", 550, "5.1.1 <ann@example.org>: Recipient address rejected: User unknown",
     V.BAD_ADDRESS),
    ("exchange", "rcpt", 550,
     "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient ann@contoso.com not found by SMTP address lookup",
     V.BAD_ADDRESS),
    ("exchange", "rcpt", 550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found", V.BAD_ADDRESS),
    ("gmail", "rcpt", 550,
     "5.1.1 The email account that you tried to reach does not exist. Please try\n"
     "5.1.1 double-checking the recipient's email address for typos or\n"
     "5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser", V.BAD_ADDRESS),
    ("postfix", "rcpt", 550, "5.1.2 <ann@nowhere.example>: Recipient address rejected: Domain not found",
     V.BAD_ADDRESS),
    ("postfix", "rcpt", 556, "5.1.10 <ann@nullmx.example>: Recipient address rejected: Domain "
     "nullmx.example does not accept mail (nullMX)", V.BAD_ADDRESS),
    ("exchange", "rcpt", 550, "5.1.6 Recipient addresses in this domain have moved", V.BAD_ADDRESS),
    ("postfix", "rcpt", 501, "5.1.3 Bad recipient address syntax", V.BAD_ADDRESS),
    # a user unknown without an enhanced status says nothing sure about whose fault it is
    ("exim", "rcpt", 550, "Unrouteable address", V.REFUSED),
    ("exim", "rcpt", 550, "No Such User Here", V.REFUSED),
    # the same status after the message, or in a 4xx, is no evidence either
    ("exchange", "dot", 550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found", V.REFUSED),
    ("postfix", "rcpt", 450,
     "4.1.1 <ann@example.org>: Recipient address rejected: unverified address: connect to "
     "mx.example.org[192.0.2.10]:25: Connection refused", V.TRANSIENT),
    ("postfix", "rcpt", 450, "4.1.2 <ann@example.org>: Recipient address rejected: Domain not found",
     V.TRANSIENT),
    # -- mailbox full: this message refused, the address kept --------------------------------
    ("gmail", "rcpt", 552,
     "5.2.2 The recipient's inbox is out of storage space. Please direct the\n"
     "5.2.2 recipient to https://support.google.com/mail/?p=OverQuotaPerm", V.REFUSED),
    ("gmail", "rcpt", 452,
     "4.2.2 The recipient's inbox is out of storage space and inbound mail has been suspended.",
     V.TRANSIENT),
    ("exchange", "dot", 554,
     "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException."
     "MapiExceptionShutoffQuotaExceeded",
     V.REFUSED),
    ("exim", "dot", 552, "5.2.2 Mailbox quota exceeded", V.REFUSED),
    ("postfix", "mail", 452, "4.3.1 Insufficient system storage", V.THROTTLED),
    ("postfix", "rcpt", 452, "4.3.1 Insufficient system storage", V.TRANSIENT),
    # -- policy: refused, not suppressed ----------------------------------------------------
    ("postfix", "rcpt", 554, "5.7.1 <ann@example.net>: Relay access denied", V.REFUSED),
    ("postfix", "rcpt", 554, "5.7.1 <blocked@example.org>: Recipient address rejected: Access denied",
     V.REFUSED),
    ("exchange", "rcpt", 550,
     "5.4.1 Recipient address rejected: Access denied. AS(201806281) "
     "[BN8NAM12FT036.eop-nam12.prod.protection.outlook.com]",
     V.REFUSED),
    ("exchange", "rcpt", 550,
     "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", V.REFUSED),
    ("gmail", "dot", 550,
     "5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited mail.",
     V.REFUSED),
    ("gmail", "dot", 550,
     "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users",
     V.REFUSED),
    ("ses", "dot", 554, "Message rejected: Sending suspended for this account.", V.REFUSED),
    ("exim", "data", 554, "5.5.1 Error: no valid recipients", V.REFUSED),
    # -- the sender refused: the configuration's business, exit 2 ---------------------------
    ("postfix", "mail", 553, "5.1.8 <news@example.org>: Sender address rejected: Domain not found",
     V.CONFIG),
    ("postfix", "mail", 553,
     "5.1.0 <notowned@example.org>: Sender address rejected: not owned by user topten", V.CONFIG),
    ("postfix", "rcpt", 553, "5.1.8 <news@example.org>: Sender address rejected: Domain not found",
     V.CONFIG),  # smtpd_delay_reject: the sender's refusal arrives as the reply to RCPT
    ("postfix", "mail", 553,
     "5.7.1 <news@example.org>: Sender address rejected: not owned by user topten", V.CONFIG),
    ("exchange", "mail", 530, "5.7.57 Client not authenticated to send mail. [DM6PR11CA0012]", V.CONFIG),
    ("gmail", "mail", 530, "5.7.0 Must issue a STARTTLS command first.", V.CONFIG),
    ("ses", "mail", 501, "Invalid MAIL FROM address provided", V.CONFIG),
    # -- authentication ---------------------------------------------------------------------
    ("postfix", "auth", 535, "5.7.8 Error: authentication failed: authentication failure", V.CONFIG),
    ("exim", "auth", 535, "Incorrect authentication data", V.CONFIG),
    ("exchange", "auth", 535,
     "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
     V.CONFIG),
    ("gmail", "auth", 535, "5.7.8 Username and Password not accepted.", V.CONFIG),
    ("ses", "auth", 535, "Authentication Credentials Invalid", V.CONFIG),
    ("gmail", "auth", 454, "4.7.0 Too many login attempts, please try again later.", V.RELAY),
    ("postfix", "starttls", 454, "4.7.0 TLS not available due to local problem", V.RELAY),
    ("exim", "starttls", 502, "5.5.1 STARTTLS not supported", V.CONFIG),
    # -- rate limits: throttling, recognised by behaviour ------------------------------------
    ("postfix", "mail", 450, "4.7.1 Error: too much mail from 127.0.0.1", V.THROTTLED),
    ("exim", "mail", 451, "Sender rate overlimit - 120.0 / 1h / per_conn", V.THROTTLED),
    ("exchange", "rcpt", 451,
     "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714) [DM6NAM12FT011]",
     V.THROTTLED),
    ("exchange", "rcpt", 452, "4.5.3 Too many recipients", V.TRANSIENT),
    ("gmail", "rcpt", 450,
     "4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
     "4.2.1 prevents additional messages from being delivered.", V.TRANSIENT),
    ("gmail", "dot", 421,
     "4.7.0 [192.0.2.1] Our system has detected an unusual rate of\n"
     "4.7.0 unsolicited mail originating from your IP address.", V.THROTTLED),
    ("ses", "dot", 454, "Throttling failure: Maximum sending rate exceeded.", V.THROTTLED),
    ("ses", "mail", 454, "Throttling failure: Daily message quota exceeded.", V.THROTTLED),
    # -- greylisting ------------------------------------------------------------------------
    ("postfix", "rcpt", 450,
     "4.2.0 <ann@example.org>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.org.html", V.TRANSIENT),
    ("exim", "rcpt", 451, "4.7.1 Greylisted, please try again in 5 minutes", V.THROTTLED),
    ("exim", "dot", 451, "Temporary local problem - please try later", V.TRANSIENT),
    ("gmail", "dot", 451, "4.3.0 Mail server temporarily rejected message.", V.TRANSIENT),
    # -- too many connections ---------------------------------------------------------------
    ("postfix", "connect", 421, "4.7.0 localhost Error: too many connections from 127.0.0.1",
     V.THROTTLED),
    ("exim", "connect", 421,
     "Too many concurrent SMTP connections from this IP address; please try again later.", V.THROTTLED),
    ("exchange", "connect", 421,
     "4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing "
     "transmission channel", V.THROTTLED),
    ("gmail", "rcpt", 421, "4.7.0 Try again later, closing connection.", V.THROTTLED),
    ("postfix", "dot", 421, "4.4.2 mail.example.org Error: timeout exceeded", V.THROTTLED),
    # -- a session refused: the relay's trouble ---------------------------------------------
    ("postfix", "connect", 554, "5.7.1 <unknown[192.0.2.7]>: Client host rejected: Access denied",
     V.RELAY),
    ("exim", "ehlo", 550, "Administrative prohibition", V.RELAY),
]


@pytest.mark.parametrize(
    ("relay", "stage", "code", "text", "expected"), REPLIES,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{n}" for n, r in enumerate(REPLIES)],
)
def test_real_replies(relay, stage, code, text, expected):
    assert verdict(stage, code, text) is expected, rule_for(stage, code, text).why


MAILBOX = {"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"}


def test_only_a_mailbox_status_at_rcpt_ever_suppresses():
    """Whatever the stage and code, BAD_ADDRESS needs RCPT, a 5xx and one of five statuses."""
    statuses = ["5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.1.0", "5.1.4", "5.1.8", "5.2.2",
                "5.7.1", "4.1.1", ""]
    for stage in STAGES:
        for code in (421, 450, 451, 452, 454, 500, 550, 552, 553, 554):
            for status in statuses:
                got = verdict(stage, code, f"{status} reply text".strip())
                bad = stage == "rcpt" and code >= 500 and status in MAILBOX
                assert (got is V.BAD_ADDRESS) == bad, (stage, code, status, got)


def test_no_reply_before_the_message_is_ever_the_recipients():
    for stage in ("connect", "ehlo", "starttls", "auth", "mail"):
        for code in range(400, 600, 7):
            assert verdict(stage, code, "5.1.1 whatever") not in (V.BAD_ADDRESS, V.REFUSED, V.TRANSIENT)


def test_enhanced_status_must_agree_with_the_code():
    assert enhanced_status(550, "5.1.1 no") == "5.1.1"
    assert enhanced_status(550, "4.1.1 contradicts the code") == ""
    assert enhanced_status(550, "5.1.10 null MX") == "5.1.10"
    assert enhanced_status(550, "5.1.1x is not a status") == ""
    assert enhanced_status(550, "Mailbox 5.1.1 later in the text") == ""
    assert verdict("rcpt", 550, "4.1.1 contradicting status") is V.REFUSED


def test_every_stage_has_an_answer_and_an_unknown_stage_is_refused():
    for stage in STAGES:
        for code in (200, 354, 421, 499, 599):
            assert isinstance(verdict(stage, code, ""), Verdict)
    with pytest.raises(ValueError):
        verdict("helo", 550, "")
    assert all(rule.why for rule in TABLE)


def test_a_refusal_naming_the_sender_at_rcpt_is_about_the_sender():
    """Postfix with smtpd_delay_reject=yes (its default) refuses the sender at RCPT time."""
    late = "5.1.0 <notowned@example.org>: Sender address rejected: not owned by user"
    stage = answered_stage("rcpt", late, "notowned@example.org", "ann@example.org")
    assert stage == "mail" and verdict(stage, 553, late) is V.CONFIG
    own = "5.1.1 <ann@example.org>: Recipient address rejected: User unknown"
    assert answered_stage("rcpt", own, "news@example.org", "ann@example.org") == "rcpt"
    both = "5.7.1 <ann@example.org>: Recipient address rejected: <news@example.org> may not send"
    assert answered_stage("rcpt", both, "news@example.org", "ann@example.org") == "rcpt"
    assert answered_stage("dot", late, "notowned@example.org", "ann@example.org") == "dot"
