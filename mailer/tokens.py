"""Unsubscribe tokens: the address and an HMAC of it, URL-safe, so a token needs nothing else."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mailer.errors import InputError

_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, email: str) -> bytes:
    return hmac.digest(secret.encode(), email.lower().encode(), hashlib.sha256)[:_MAC_BYTES]


def make_token(secret: str, email: str) -> str:
    """`<address>.<mac>`, both base64url without padding: no `&`, `=` or `/` to escape."""
    return f"{_b64(email.encode())}.{_b64(_mac(secret, email))}"


def read_token(secret: str, token: str) -> str:
    """The address a genuine token carries; a forged or altered token is refused."""
    encoded, _, mac = token.strip().partition(".")
    try:
        email = _unb64(encoded).decode("utf-8")
        given = _unb64(mac)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InputError("the unsubscribe token is malformed; nothing was changed") from None
    if not hmac.compare_digest(given, _mac(secret, email)):
        raise InputError("the unsubscribe token is not genuine; nothing was changed")
    return email


def message_id_digest(list_id: str, issue: str, email: str) -> str:
    """The part of a message's Message-ID that names the issue's recipient: the same for the
    same issue and address, so that a resend, or a bounce quoting it, can be recognised."""
    return hashlib.sha256(f"{list_id}|{issue}|{email.lower()}".encode()).hexdigest()[:32]
