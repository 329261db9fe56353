"""check_address keeps email-validator's verdict while caching its work per domain."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from mailer.subscribers import check_address

CORPUS = [
    "ann@example.org", "Ann.Lee@Example.ORG", "a+tag@example.org", "o'brien@example.ie",
    "x@localhost", "x@foo.test", "x@foo.invalid", "x@foo.local", "x@example", "x@-bad.org",
    "x@bad-.org", "x@exa_mple.org", "x@1.2.3.4", "x@[127.0.0.1]", "a..b@example.org",
    ".a@example.org", "a.@example.org", '"quoted"@example.org', "a b@example.org",
    "user@bücher.de", "üser@example.org", "a@b@example.org", "@example.org", "ann@",
    "x" * 64 + "@example.org", "x" * 65 + "@example.org", "a@" + "b" * 64 + ".org",
    "a@" + ".".join(["abcdefghij"] * 25) + ".org", "{}|~@example.org", "a@example.org.",
    "a@EXAMPLE.org", "a@xn--bcher-kva.de", "a@sub.domain.example.co.uk", "a\n@example.org",
]


def reference(raw: str) -> str | None:
    """email-validator's verdict, and RFC 5321's limit of 64 octets before the @, which
    email-validator lets pass but relays refuse."""
    try:
        address = validate_email(raw, check_deliverability=False, allow_smtputf8=False).ascii_email
    except EmailNotValidError:
        return None
    return address if address and len(address.rpartition("@")[0]) <= 64 else None


@pytest.mark.parametrize("raw", CORPUS)
def test_same_verdict_as_email_validator(raw: str) -> None:
    expected = reference(raw)
    if expected is None:
        with pytest.raises(ValueError):
            check_address(raw)
    else:
        assert check_address(raw) == expected
        assert check_address(raw).isascii()


def test_the_domain_verdict_is_reused_but_the_local_part_still_checked() -> None:
    assert check_address("good@example.net") == "good@example.net"
    with pytest.raises(ValueError):
        check_address("bad..local@example.net")  # same domain, cached, local part refused
