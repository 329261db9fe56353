"""The subscriber list: a CSV file as spreadsheets write it, read one row at a time."""

from __future__ import annotations

import codecs
import csv
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailer.errors import SubscribersError

ACTIVE = {"", "active", "subscribed"}
# RFC 5322 dot-atom in ASCII: what email-validator accepts as a local part without further ado.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True, slots=True)
class Recipient:
    """A row to send to; `row` is the spreadsheet row (the header is row 1)."""

    row: int
    email: str
    name: str = ""

    @property
    def key(self) -> str:
        return self.email.lower()

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row not sent to, and why; `address` is the checked address when it is a valid one."""

    row: int
    email: str
    reason: str
    address: str = ""

    @property
    def key(self) -> str:
        """Keyed like a recipient when the address is valid, so that a duplicate saying skip
        meets its twin saying send; else by its row."""
        return self.address.lower() if self.address else f"#row{self.row}"


def _validate(raw: str) -> str:
    from email_validator import EmailNotValidError, validate_email  # only when checking: slow to import

    try:
        return validate_email(raw, check_deliverability=False, allow_smtputf8=False).ascii_email or ""
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


@functools.lru_cache(maxsize=4096)
def _domain_verdict(domain: str) -> tuple[str, str]:
    """email-validator's verdict on a domain, as (normalized domain, "") or ("", reason)."""
    try:
        return _validate(f"postmaster@{domain}").rpartition("@")[2], ""
    except ValueError as exc:
        return "", str(exc)


def check_address(raw: str) -> str:
    """The address as it goes into `To:` and `RCPT TO` (ASCII: IDN domains in punycode);
    raises ValueError with the reason.

    email-validator decides. Its verdict on the domain, the costly half, is kept per domain
    (a list has few), and a plain dot-atom local part is accepted as it would accept it; any
    other local part goes through it whole.
    """
    local, at, domain = raw.rpartition("@")
    if not (at and _PLAIN_LOCAL.match(local) and len(local) <= 64 and len(raw) <= 254):
        return _validate(raw)
    normalized, reason = _domain_verdict(domain)
    if reason:
        raise ValueError(reason)
    return f"{local}@{normalized}"


def clean_name(raw: str) -> str:
    """A display name that cannot break a header: control characters become spaces."""
    return " ".join(_UNSAFE_NAME.sub(" ", raw).split())[:200]


def read_subscribers(path: Path) -> Iterator[Recipient | SkippedRow]:
    """Open the list and check its header now; the rows are read lazily, one at a time."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SubscribersError(f"{path}: cannot read the subscriber list: {exc.strerror}") from None
    reader = csv.reader(_decoded(handle))
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        handle.close()
        raise SubscribersError(f"{path}: row 1: {_reason(exc)}") from None
    if header is None:
        handle.close()
        raise SubscribersError(f"{path}: the file is empty (a header row with 'email' is needed)")
    columns = [name.strip().lower() for name in header]
    if "email" not in columns:
        handle.close()
        raise SubscribersError(f"{path}: no 'email' column in the header row")
    return _rows(path, handle, reader, columns)


def _decoded(handle: BinaryIO) -> Iterator[str]:
    """UTF-8 (with or without a BOM) decoded line by line, so a bad byte is reported on its
    own row rather than somewhere in an 8 KB chunk."""
    first = True
    for line in handle:
        if first:
            line = line.removeprefix(codecs.BOM_UTF8)
            first = False
        yield line.decode("utf-8")


def _rows(
    path: Path, handle: BinaryIO, reader: Iterator[list[str]], columns: list[str]
) -> Iterator[Recipient | SkippedRow]:
    at_email = columns.index("email")
    at_name = columns.index("name") if "name" in columns else None
    at_status = columns.index("status") if "status" in columns else None
    row = 1
    with handle:
        while True:
            try:
                fields = next(reader, None)
            except (UnicodeDecodeError, csv.Error, OSError) as exc:
                raise SubscribersError(f"{path}: row {row + 1}: {_reason(exc)}") from None
            if fields is None:
                return
            row += 1
            if not any(f.strip() for f in fields):
                continue
            raw_email = fields[at_email].strip() if at_email < len(fields) else ""
            if at_status is not None and at_status < len(fields):
                status = fields[at_status].strip().lower()
                if status not in ACTIVE:
                    yield SkippedRow(row, raw_email, f"status is '{status}'", _valid_or_empty(raw_email))
                    continue
            if not raw_email:
                yield SkippedRow(row, "", "no address")
                continue
            try:
                email = check_address(raw_email)
            except ValueError as exc:
                yield SkippedRow(row, clean_name(raw_email), f"invalid address: {exc}")
                continue
            name = ""
            if at_name is not None and at_name < len(fields):
                name = clean_name(fields[at_name])
            yield Recipient(row, email, name)


def _valid_or_empty(raw: str) -> str:
    try:
        return check_address(raw)
    except ValueError:
        return ""


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"not valid CSV: {exc}"
