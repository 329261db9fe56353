"""The subscriber list: a CSV file as spreadsheets write it, read one row at a time."""

from __future__ import annotations

import codecs
import csv
import functools
import io
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
        checked = _validate(raw)
        if len(checked.rpartition("@")[0].encode()) > 64:  # email-validator lets it pass
            raise ValueError("the part before the @-sign is longer than 64 octets (RFC 5321)")
        return checked
    normalized, reason = _domain_verdict(domain)
    if reason:
        raise ValueError(reason)
    return f"{local}@{normalized}"


def clean_name(raw: str) -> str:
    """A display name that cannot break a header: control characters become spaces, and each
    run of white space one space."""
    if raw.isprintable() and "  " not in raw and raw.strip(" ") == raw:  # most names: nothing to do
        return raw[:200]
    return " ".join(_UNSAFE_NAME.sub(" ", raw).split())[:200]


def read_subscribers(path: Path) -> Iterator[Recipient | SkippedRow]:
    """Open the list and check its header now; the rows are read lazily, one at a time."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SubscribersError(f"{path}: cannot read the subscriber list: {exc.strerror}") from None
    lines = _Lines(handle)
    # strict: a quoted value followed by more text, or never closed, is an error, not a guess
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is not None:
            lines.check(1, header)
    except (UnicodeDecodeError, csv.Error, OSError, SubscribersError) as exc:
        handle.close()
        raise SubscribersError(f"{path}: row 1: {_reason(exc)}") from None
    if header is None:
        handle.close()
        raise SubscribersError(f"{path}: the file is empty (a header row with 'email' is needed)")
    columns = [name.strip().lower() for name in header]
    if "email" not in columns:
        handle.close()
        raise SubscribersError(f"{path}: no 'email' column in the header row{_separator_hint(header)}")
    return _rows(path, handle, lines, reader, columns)


def _separator_hint(header: list[str]) -> str:
    for separator, name in ((";", "semicolon"), ("\t", "tab")):
        if len(header) == 1 and separator in header[0] and "email" in header[0].lower():
            return f" (the file looks {name}-separated; save it as comma-separated CSV)"
    return ""


class _Lines:
    """The file's lines, decoded one at a time, counted, with the raw text of the current
    record kept so that its quoting can be checked.

    UTF-8 (with or without a BOM) is decoded line by line, so a bad byte is reported on its
    own row rather than somewhere in an 8 KB chunk. Lines may end in CRLF, LF or, as old
    spreadsheets on a Mac wrote them, CR alone.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.number = 0  # lines read so far
        self.record: list[str] = []  # the lines of the record being read
        head = handle.peek(1 << 16)[: 1 << 16] if isinstance(handle, io.BufferedReader) else b""
        cr_only = b"\r" in head and b"\n" not in head
        self._lines = _split_cr(handle) if cr_only else iter(handle)
        self._first = True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        if self._first:
            raw = raw.removeprefix(codecs.BOM_UTF8)
            self._first = False
        self.number += 1
        line = raw.decode("utf-8")
        self.record.append(line)
        return line

    def start(self) -> int:
        """A new record begins; returns the number of its first line."""
        self.record.clear()
        return self.number + 1

    def check(self, row: int, fields: list[str]) -> None:
        """Refuse what csv.reader would take silently and wrongly.

        A quote inside a value that is not quoted (`Cy "Smith"`) means the export is broken.
        A quoted value running over several lines is legitimate (a name with a line break,
        a notes column), but when a later line of it looks like a row of the list (an address
        between commas), an unterminated quote has folded other subscribers' rows into one
        value: they would be dropped, and their addresses shown to the first one.
        """
        record = self.record
        if len(record) == 1 and '"' not in record[0]:
            return
        _check_quotes("".join(record))
        for value in fields:
            if "\n" in value or "\r" in value:
                for line in value.splitlines()[1:]:
                    if _ROW_LIKE.search(line):
                        raise SubscribersError(
                            f"a quoted value opened on row {row} runs over {len(record)} lines and "
                            "swallows what looks like other rows (an unterminated quote?)"
                        )


# A line holding an address as a whole comma-separated field: a row of the list, not a name.
_ROW_LIKE = re.compile(r'(?:^|,)\s*"?[^\s,"<>@]+@[^\s,"<>@]+\.[^\s,"<>@]+"?\s*(?:,|$)')


def _split_cr(handle: BinaryIO) -> Iterator[bytes]:
    """Lines ended by CR alone, read in chunks (the file's single `line` may be huge)."""
    rest = b""
    while chunk := handle.read(1 << 16):
        parts = (rest + chunk).split(b"\r")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


def _check_quotes(text: str) -> None:
    """A quote may only open a value (as its first character), close it, or be doubled
    inside it."""
    quoted = False
    at_start = True
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if quoted:
            if char == '"':
                if text[i + 1 : i + 2] == '"':
                    i += 1
                else:
                    quoted = False
        elif char == '"':
            if not at_start:
                raise SubscribersError("a quote inside a value that is not quoted (quote the value, "
                                       'and double the quotes inside it: "Cy ""Smith""")')
            quoted = True
        at_start = not quoted and char in ",\r\n"
        i += 1


def _rows(
    path: Path, handle: BinaryIO, lines: _Lines, reader: Iterator[list[str]], columns: list[str]
) -> Iterator[Recipient | SkippedRow]:
    at_email = columns.index("email")
    at_name = columns.index("name") if "name" in columns else None
    at_status = columns.index("status") if "status" in columns else None
    row = 1
    with handle:
        while True:
            first_line = lines.start()
            try:
                fields = next(reader, None)
                if fields is not None:
                    lines.check(row + 1, fields)
            except (UnicodeDecodeError, csv.Error, OSError, SubscribersError) as exc:
                where = f"row {row + 1}" + (f" (line {first_line})" if first_line != row + 1 else "")
                raise SubscribersError(
                    f"{path}: {where}: {_reason(exc)}; the whole list is refused, nothing was sent"
                ) from None
            if fields is None:
                return
            row += 1
            if not "".join(fields).strip():  # a blank row
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


_CSV_ERRORS = {
    "unexpected end of data": "a quote is opened and never closed (an unterminated quote)",
    "new-line character seen in unquoted field": "a line break (CR) inside a value that is not quoted",
}


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, SubscribersError):
        return f"not valid CSV: {exc}"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    text = str(exc)
    for start, reason in _CSV_ERRORS.items():
        if text.startswith(start):
            return f"not valid CSV: {reason}"
    if "expected after" in text:
        return "not valid CSV: a quoted value is followed by more text before the next comma"
    return f"not valid CSV: {text}"
