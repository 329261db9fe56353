"""The VERP envelope sender: `bounces+TOKEN@example.org`, TOKEN naming the issue and recipient.

An address does not fit in a local part (64 octets, RFC 5321 4.5.3.1.1), so TOKEN is the issue's
date and a MAC of the issue and address under `$MAILER_SECRET`: `20261124-` and 16 base32
characters (80 bits), 25 in all, lower case because some mail systems fold local parts. The
ledger resolves it by computing the same MAC for the addresses it sent that issue to; a token
no one could have been sent matches nothing.
"""

from __future__ import annotations

from mailer.tokens import hmac_sha256

TOKEN_PATTERN = r"\d{8}-[a-z2-7]{16}"  # noqa: S105 - a pattern, not a secret
TOKEN_LENGTH = 25
LOCAL_PART_MAX = 64


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648's alphabet, lower case
_BASE32_PAIRS = [high + low for high in _BASE32 for low in _BASE32]  # ten bits to two letters


def base32_80(data: bytes) -> str:
    """Ten bytes as 16 lower-case base32 characters: `base64.b32encode(data).lower()`, whose
    loop in Python cost as much as the HMAC; 80 bits need no padding."""
    bits = int.from_bytes(data, "big")
    pair = _BASE32_PAIRS
    return (
        pair[bits >> 70] + pair[bits >> 60 & 1023] + pair[bits >> 50 & 1023] + pair[bits >> 40 & 1023]
        + pair[bits >> 30 & 1023] + pair[bits >> 20 & 1023] + pair[bits >> 10 & 1023] + pair[bits & 1023]
    )  # fmt: skip


def mac(secret: str, issue: str, email: str) -> str:
    """16 lower-case base32 characters of an HMAC of the issue and the address."""
    return base32_80(hmac_sha256(secret, f"verp|{issue}|{email.lower()}".encode())[:10])


def make_token(secret: str, issue: str, email: str) -> str:
    return f"{issue.replace('-', '')}-{mac(secret, issue, email)}"


def read_token(token: str) -> tuple[str, str]:
    """The issue date (YYYY-MM-DD) and the MAC a token carries; genuine only if a ledger row
    gives the same MAC."""
    date, _, code = token.lower().partition("-")
    return f"{date[:4]}-{date[4:6]}-{date[6:]}", code


def envelope_sender(bounce_address: str, secret: str, issue: str, email: str) -> str:
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{make_token(secret, issue, email)}@{domain}"
