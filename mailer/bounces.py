"""What a returned message is: bytes in, a `Finding` out, nothing read or written elsewhere.

Detection only, as Mailman splits it: RFC 3464 reports with the standard library's `email`
package, RFC 5965 feedback reports, mailed unsubscribes carrying a genuine token, and
flufl.bounce (Mailman's detectors) for the MTAs that write their own formats. Whom a finding
is about in the ledger, and what it changes, is decided in `mailer.inbox`.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses, parseaddr

from mailer.errors import InputError
from mailer.tokens import read_token
from mailer.verp import TOKEN_PATTERN

KINDS = ("hard", "soft", "complaint", "unsubscribe", "other")
# Our own Message-ID, `<date.digest@domain>` (see mailer.message): quoted by most bounces.
_MESSAGE_ID = re.compile(r"<(\d{4}-\d{2}-\d{2})\.([0-9a-f]{32})@[^<>\s]+>")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# An unsubscribe token: base64url address, a dot, a 16-byte MAC (22 characters).
_UNSUBSCRIBE_TOKEN = re.compile(r"[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{22}(?![A-Za-z0-9_-])")
_VERP = re.compile(r"\+(" + TOKEN_PATTERN + r")@", re.IGNORECASE)
# Where the address a message was sent to shows: the VERP token of a bounce is found here.
_ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to")
# Feedback types that are a reader's complaint (RFC 5965 3.5; `not-spam` and RFC 6591's
# `auth-failure` are not).
_COMPLAINTS = {"abuse", "fraud", "other"}
_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mdaemon"}


@dataclass
class Finding:
    """What one message says: its kind, the status, and the evidence of whom it is about."""

    kind: str
    identity: str  # the same message read twice has the same identity
    status: str = ""
    recipients: list[str] = field(default_factory=list)  # reported addresses, best first
    verp: list[str] = field(default_factory=list)  # VERP tokens it was addressed to
    message_ids: list[tuple[str, str]] = field(default_factory=list)  # (date, digest) of ours
    detail: str = ""


def classify(raw: bytes, *, secret: str | None = None, unsubscribe_to: str | None = None) -> Finding:
    """Classify one message; anything that cannot be read is `other`, never an exception."""
    identity = "sha256:" + hashlib.sha256(raw).hexdigest()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        identity = _identity(msg) or identity
        finding = _classify(msg, identity, secret, unsubscribe_to)
    except Exception as exc:  # noqa: BLE001 - a strange message is `other`, never a crash
        return Finding("other", identity, detail=f"unreadable: {type(exc).__name__}")
    if finding.kind != "other":
        finding.verp = _verp_tokens(msg)
        finding.message_ids = _our_message_ids(msg)
    return finding


def _identity(msg: Message) -> str:
    message_id = str(msg.get("message-id", "") or "").strip()
    return f"message-id:{message_id}" if message_id else ""


def _classify(msg: Message, identity: str, secret: str | None, unsubscribe_to: str | None) -> Finding:
    for part in msg.walk():
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            return _dsn(part, identity)
        if content_type == "message/feedback-report":
            return _feedback(msg, part, identity)
    bounce = _other_mta(msg, identity)
    if bounce is not None:
        return bounce
    unsubscribe = _unsubscribe(msg, identity, secret, unsubscribe_to)
    if unsubscribe is not None:
        return unsubscribe
    return Finding("other", identity)


# -- RFC 3464 -------------------------------------------------------------------------------


def _dsn(part: Message, identity: str) -> Finding:
    """The worst recipient block of a delivery status report: `failed` with 5.x.x is hard,
    with 4.x.x soft; `delayed`, `delivered`, `relayed` and `expanded` are not failures."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return Finding("other", identity, detail="delivery report without fields")
    best: Finding | None = None
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        if not isinstance(block, Message):
            continue
        action = _field(block, "action").lower()
        if action != "failed":
            continue
        diagnostic = _field(block, "diagnostic-code")
        status = _status(_field(block, "status")) or _status(diagnostic) or "5.0.0"
        kind = "hard" if status.startswith("5") else "soft"
        recipients = [a for a in (_typed_address(_field(block, "original-recipient")),
                                  _typed_address(_field(block, "final-recipient"))) if a]
        finding = Finding(kind, identity, status, recipients, detail=diagnostic)
        if best is None or (best.kind == "soft" and kind == "hard"):
            best = finding
    if best is None:
        actions = {_field(b, "action").lower() for b in blocks if isinstance(b, Message)} - {""}
        what = ", ".join(sorted(actions)) or "no action"
        return Finding("other", identity, detail=f"delivery report: {what}")
    return best


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _typed_address(value: str) -> str:
    """`rfc822; ann@example.org` -> `ann@example.org`; another address type is no address."""
    kind, _, address = value.partition(";")
    if not address or kind.strip().lower() != "rfc822":
        return ""
    return _clean(address)


def _clean(address: str) -> str:
    address = parseaddr(address.strip())[1].strip()
    return address if "@" in address else ""


def _status(text: str) -> str:
    match = _STATUS.search(text)
    if not match or match.group(1) == "2":
        return ""
    return ".".join(match.groups())


# -- RFC 5965 -------------------------------------------------------------------------------


def _feedback(msg: Message, part: Message, identity: str) -> Finding:
    payload = part.get_payload()
    report = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(report, Message):
        return Finding("other", identity, detail="feedback report without fields")
    feedback_type = _field(report, "feedback-type").lower()
    if feedback_type not in _COMPLAINTS:
        return Finding("other", identity, detail=f"feedback report: {feedback_type or 'no type'}")
    recipients = [a for a in (_clean(v) for v in report.get_all("original-rcpt-to", [])) if a]
    return Finding("complaint", identity, "", recipients, detail=f"feedback report: {feedback_type}")


# -- other MTAs' formats ----------------------------------------------------------------------


def _other_mta(msg: Message, identity: str) -> Finding | None:
    """flufl.bounce's detectors, on a message that comes from a mail system (never a person's
    reply that happens to say "could not be delivered"). Its warnings are `other`."""
    if not _automated(msg):
        return None
    from flufl.bounce import all_failures

    _temporary, permanent = all_failures(msg)
    recipients = sorted(a for a in (_clean(_text(b)) for b in permanent) if a)
    if not recipients:
        return None
    status = _status(_body_text(msg)) or "5.0.0"
    if not status.startswith("5"):
        status = "5.0.0"  # flufl.bounce reports these as permanent whatever the text says
    return Finding("hard", identity, status, recipients, detail="returned by the remote mail system")


def _automated(msg: Message) -> bool:
    return_path = parseaddr(str(msg.get("return-path", "")))[1]
    sender = parseaddr(str(msg.get("from", "")))[1].partition("@")[0].lower()
    auto = str(msg.get("auto-submitted", "no")).strip().lower()
    return (
        (msg.get("return-path") is not None and return_path in ("", "<>"))
        or return_path.lower().partition("@")[0] in _DAEMONS
        or sender in _DAEMONS
        or auto != "no"
        or msg.get("x-failed-recipients") is not None
    )


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _body_text(msg: Message) -> str:
    """The decoded text of every part, the returned message's included."""
    texts = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() not in ("text", "message"):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            texts.append(payload.decode("utf-8", "replace"))
    return "\n".join(texts)


# -- mailed unsubscribes ------------------------------------------------------------------------


def _unsubscribe(msg: Message, identity: str, secret: str | None, to: str | None) -> Finding | None:
    """A mail to the unsubscribe address with a genuine token in its subject or its own text.
    With no unsubscribe address set, the subject only: the newsletter's own text carries a
    token in its footer, and a forwarded or quoted copy must unsubscribe no one. Never an
    auto-reply."""
    if not secret or str(msg.get("auto-submitted", "no")).strip().lower() != "no":
        return None
    if to:
        addressed = {a.lower() for _, a in getaddresses(
            [str(v) for h in _ENVELOPE_HEADERS + ("cc",) for v in msg.get_all(h, [])])}
        if to.lower() not in addressed:
            return None
    texts = [str(msg.get("subject", ""))]
    for part in msg.walk() if to else ():  # the message's own text, not a message it quotes as a part
        if part.get_content_type() == "message/rfc822":
            break
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("utf-8", "replace"))
    for text in texts:
        for candidate in _UNSUBSCRIBE_TOKEN.findall(text):
            try:
                address = read_token(secret, candidate)
            except InputError:
                continue
            return Finding("unsubscribe", identity, "", [address], detail="mailed unsubscribe")
    return None


# -- who it is about ---------------------------------------------------------------------------


def _verp_tokens(msg: Message) -> list[str]:
    """VERP tokens of the address this message was delivered to, or named as our envelope
    sender inside a feedback report or a returned message's Return-Path."""
    values: list[str] = []
    for header in _ENVELOPE_HEADERS:
        values += [str(v) for v in msg.get_all(header, [])]
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                values += [str(v) for v in payload[0].get_all("original-mail-from", [])]
        elif part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                values += [str(v) for v in payload[0].get_all("return-path", [])]
        elif part.get_content_type() == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                headers = email.message_from_bytes(payload, policy=email.policy.compat32)
                values += [str(v) for v in headers.get_all("return-path", [])]
    found: list[str] = []
    for value in values:
        for token in _VERP.findall(value):
            if token.lower() not in found:
                found.append(token.lower())
    return found


def _our_message_ids(msg: Message) -> list[tuple[str, str]]:
    """Our Message-IDs quoted anywhere: a returned message, its headers alone, or its text."""
    text = "\n".join(str(v) for v in msg.get_all("in-reply-to", []) + msg.get_all("references", []))
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                text += "\n" + str(payload[0].get("message-id", ""))
    text += "\n" + _body_text(msg)
    found: list[tuple[str, str]] = []
    for date, digest in _MESSAGE_ID.findall(text):
        if (date, digest) not in found:
            found.append((date, digest))
    return found
