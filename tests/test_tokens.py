"""The MACs and encodings behind unsubscribe tokens, VERP addresses and Message-IDs: computed
without the standard library's per-call set-up, they must give exactly what it gives (tokens
already sent must still be read back, and a resend must carry the same Message-ID)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.tokens import _b64, hmac_sha256, make_token, message_id_digest, read_token
from mailer.verp import base32_80, envelope_sender, mac

# around SHA-256's 64-byte block, where a longer key is hashed first
secrets = st.text(st.characters(exclude_categories=("Cs",)), max_size=100) | st.sampled_from(
    ["", "x" * 64, "x" * 65, "é" * 40]
)

@settings(max_examples=500, deadline=None)
@given(secret=secrets, message=st.binary(max_size=300))
def test_hmac_is_the_standard_one(secret, message):
    assert hmac_sha256(secret, message) == hmac.digest(secret.encode(), message, "sha256")


@given(data=st.binary(max_size=200))
def test_base64url_is_the_standard_one_without_padding(data):
    assert _b64(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@settings(max_examples=500)
@given(data=st.binary(min_size=10, max_size=10))
def test_base32_is_the_standard_one_in_lower_case(data):
    assert base32_80(data) == base64.b32encode(data).decode("ascii").lower()


@given(address=st.emails(), secret=secrets)
def test_tokens_are_what_they_were(address, secret):
    """The formulas written out with the standard library, as tokens already sent were made."""
    key = secret.encode()
    unsubscribe_mac = hmac.digest(key, address.lower().encode(), hashlib.sha256)[:16]
    assert make_token(secret, address) == (
        base64.urlsafe_b64encode(address.encode()).rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(unsubscribe_mac).rstrip(b"=").decode()
    )
    assert read_token(secret, make_token(secret, address)) == address
    verp_mac = hmac.digest(key, f"verp|2026-11-24|{address.lower()}".encode(), hashlib.sha256)[:10]
    assert mac(secret, "2026-11-24", address) == base64.b32encode(verp_mac).decode().lower()
    assert envelope_sender("bounces@example.org", secret, "2026-11-24", address) == (
        f"bounces+20261124-{base64.b32encode(verp_mac).decode().lower()}@example.org"
    )
    list_id = "Top Ten <news.example.org>"
    expected_id = hashlib.sha256(f"{list_id}|2026-11-24|{address.lower()}".encode()).hexdigest()[:32]
    assert message_id_digest(list_id, "2026-11-24", address) == expected_id


def test_several_secrets_and_issues_in_one_process():
    """The per-secret and per-issue states are cached: one must never answer for another."""
    assert hmac_sha256("one", b"m") != hmac_sha256("two", b"m")
    assert hmac_sha256("one", b"m") == hmac.digest(b"one", b"m", "sha256")
    assert message_id_digest("L", "2026-11-24", "a@x.org") != message_id_digest("L", "2026-11-25", "a@x.org")
    assert message_id_digest("L", "2026-11-24", "a@x.org") != message_id_digest("M", "2026-11-24", "a@x.org")
