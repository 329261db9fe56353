"""Building one MIME message per recipient, fast.

The bodies are encoded (quoted-printable) once per issue, cut at their per-recipient slots;
a recipient's message is the join of those bytes with their own few encoded values. Each
segment ends in a soft line break, so joining never makes a line longer than RFC 2045 allows.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache, partial

from markupsafe import escape

from mailer.config import Settings
from mailer.render import Personalisable, RenderedIssue, greeting
from mailer.subscribers import Recipient
from mailer.tokens import make_token, message_id_digest
from mailer.transport import Transparent
from mailer.verp import envelope_sender

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"


MAX_LINE = 76  # RFC 2045 6.7: encoded lines are at most 76 characters


# A value quoted-printable leaves as it is: printable ASCII without "=", no white space at
# either end, not starting with ".", one line of at most 75 characters (76 with the soft break).
_QP_AS_IS = re.compile(r"[!-\-/-<>-~](?:[ !-<>-~]{0,73}[!-<>-~])?")
# A value quoted-printable only escapes "=" in and cuts into lines: printable ASCII without
# white space, such as an unsubscribe URL or an address.
_QP_NO_SPACE = re.compile(r"[!-~]+")
_QP_WIDTH = MAX_LINE - 1  # characters on a line before its soft break


def qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends, ending in a line break (soft if need be), and no
    line starting with "." (written "=2E"), so that SMTP has nothing to dot-stuff."""
    # Short cuts to what `_qp_any` makes of the values most recipients have (it runs for each
    # of them). The length first: on a longer text the pattern backtracks at length.
    if text.isascii():
        if len(text) <= _QP_WIDTH and _QP_AS_IS.fullmatch(text):
            return text.encode("ascii") + SOFT_BREAK
        if _QP_NO_SPACE.fullmatch(text):
            wrapped = _qp_no_space(text.encode("ascii"))
            if wrapped is not None:
                return wrapped
    if 0 < len(text) <= _QP_WIDTH and "\n" not in text:
        # A short line (a name with accents): binascii's encoding is final when it stays one
        # line of at most 75 characters (binascii cuts only longer ones) not starting with ".".
        encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
        if len(encoded) <= _QP_WIDTH and not encoded.startswith(b"."):
            return encoded + SOFT_BREAK
    return _qp_any(text)


def _qp_no_space(data: bytes) -> bytes | None:
    """Printable ASCII without white space as `_qp_any` encodes it: "=" escaped, cut into lines
    of at most 75 characters (never inside an escape), each ending in a soft break. None when a
    line would start with ".": that is left to `_qp_any`."""
    data = data.replace(b"=", b"=3D")
    if data[0] == _DOT:
        return None
    encoded = b""
    start = 0
    while len(data) - start > _QP_WIDTH:
        cut = start + _QP_WIDTH
        if data[cut - 1] == _EQUALS:  # an escape would start on the last column
            cut -= 1
        elif data[cut - 2] == _EQUALS:  # or on the one before it
            cut -= 2
        if data[cut] == _DOT:
            return None
        encoded += data[start:cut] + SOFT_BREAK
        start = cut
    return encoded + data[start:] + SOFT_BREAK


_EQUALS = ord("=")
_DOT = ord(".")


def _qp_any(text: str) -> bytes:
    """`qp` for any text: binascii's encoding, mended."""
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    encoded = encoded.replace(b"\n", CRLF)
    if encoded and not encoded.endswith(CRLF):
        encoded += SOFT_BREAK
    # binascii leaves the odd line at 77 characters (an escaped trailing space, or the soft
    # break added above), and knows nothing of SMTP's dots: both are mended here, once per
    # issue for the static parts.
    return CRLF.join(_mend(line) for line in encoded.split(CRLF))


def _mend(line: bytes) -> bytes:
    """One encoded line with a leading "." escaped, re-wrapped if it is too long."""
    if line.startswith(b"."):
        line = b"=2E" + line[1:]
    if len(line) <= MAX_LINE:
        return line
    soft = line.endswith(b"=")
    rest = line[:-1] if soft else line
    pieces = []
    while len(rest) > MAX_LINE - 1:
        cut = MAX_LINE - 1
        if rest[cut - 1 : cut] == b"=":  # never split an =XX escape
            cut -= 1
        elif rest[cut - 2 : cut - 1] == b"=":
            cut -= 2
        pieces.append(rest[:cut] + b"=")
        rest = rest[cut:]
        if rest.startswith(b"."):
            rest = b"=2E" + rest[1:]
    pieces.append(rest + (b"=" if soft else b""))
    return CRLF.join(pieces)


# RFC 2047: an encoded word is at most 75 characters. "=?utf-8?b?" and "?=" take 12; 45 bytes
# of text are 60 of base64, so a word is 72 and a folded line " " + word stays under 78.
_WORD_BYTES = 45
MAX_HEADER_LINE = 998  # RFC 5322 2.1.1, in octets, without the CRLF


def encoded_words(text: str) -> list[str]:
    """`text` as RFC 2047 encoded words of at most 75 characters, never splitting a
    character's bytes between two words. Decoders join adjacent words without the white
    space between them, so the text comes back exactly."""
    data = text.encode("utf-8")
    if len(data) <= _WORD_BYTES:  # most names: one word, without the walk below
        return [_b_word(data)]
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(_b_word(bytes(chunk)))
            chunk.clear()
        chunk += data
    if chunk or not words:
        words.append(_b_word(bytes(chunk)))
    return words


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def _plain(value: str, room: int) -> bool:
    """Text that can go into a header as it is: ASCII, not mistakable for an encoded word,
    short enough for one line."""
    return value.isascii() and "=?" not in value and len(value) <= room


def encode_header(name: str, value: str) -> bytes:
    """One unstructured header; RFC 2047-encoded (and folded between the encoded words) when
    it is not ASCII, when it looks like an encoded word itself, or when it is too long."""
    if _plain(value, MAX_HEADER_LINE - len(name) - 2) and value == value.strip():
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {CRLF_SPACE.join(encoded_words(value))}\r\n".encode("ascii")


CRLF_SPACE = "\r\n "
# A display name `formataddr` would write as it is: no character that needs quoting, and
# nothing `_plain` refuses ("=?").
_ATOMS = re.compile(r"[A-Za-z0-9 '_+-]+")


def address_header(name: str, display: str, email: str) -> bytes:
    """`Name: display <email>`, the display name as a quoted string when it is plain ASCII,
    else as encoded words, one to a line."""
    display = display.strip()  # white space around a name is no part of it, to any reader
    if not display:
        return f"{name}: {email}\r\n".encode("ascii")
    if len(display) <= MAX_HEADER_LINE - len(name) - len(email) - 8 and _ATOMS.fullmatch(display):
        return f"{name}: {display} <{email}>\r\n".encode("ascii")  # as formataddr, sooner
    if _plain(display, MAX_HEADER_LINE - len(name) - len(email) - 8):
        return f"{name}: {formataddr((display, email))}\r\n".encode("ascii")
    return f"{name}: {CRLF_SPACE.join(encoded_words(display))}{CRLF_SPACE}<{email}>\r\n".encode("ascii")


_HTML_SPECIAL = re.compile(r"[&<>\"']")  # what markupsafe's escape changes


@dataclass(frozen=True)
class _Template:
    """A message as a list of byte parts: the issue's, encoded once, and empty places for a
    recipient's. Building a message copies the list, fills those places, and joins it once."""

    parts: list[bytes]
    slots: tuple[tuple[int, str, bool], ...]  # (index, slot name, HTML-escaped) in the bodies

    @classmethod
    def of(cls, head: bytes, bodies: list[tuple[bytes, Personalisable]], tail: bytes) -> _Template:
        """A place for the recipient's own headers, then `head`; each body after its opening
        bytes, its slots as places of their own; then `tail`."""
        parts = [b""]
        slots: list[tuple[int, str, bool]] = []
        static = head
        for opening, body in bodies:
            static += opening
            for i, part in enumerate(body.parts):
                if i % 2 == 0:
                    static += qp(part)
                    continue
                parts.append(static)
                static = b""
                slots.append((len(parts), part, body.escape_values))
                parts.append(b"")
        parts.append(static + tail)
        return cls(parts, tuple(slots))

    def fill(self, headers: bytes, values: Mapping[str, tuple[bytes, bytes]]) -> bytes:
        """The message for one recipient: their own headers (To, Date, Message-ID,
        List-Unsubscribe), and their encoded values (as they are, and HTML-escaped) in the
        bodies."""
        out = self.parts.copy()
        out[0] = headers
        for index, name, escaped in self.slots:
            out[index] = values[name][escaped]
        return b"".join(out)


def _encode_value(value: str) -> tuple[bytes, bytes]:
    """A recipient's value quoted-printable as it is, and HTML-escaped: the same bytes when
    escaping would change nothing."""
    encoded = qp(value)
    if not _HTML_SPECIAL.search(value):
        return encoded, encoded
    return encoded, qp(str(escape(value)))


class MessageFactory:
    """Makes each recipient's message from one rendered issue."""

    def __init__(self, rendered: RenderedIssue, settings: Settings, *, test: bool = False) -> None:
        settings.require("from_", "secret", "unsubscribe_url")
        self.settings = settings
        self.issue = rendered.issue
        self.test = test
        self.secret = settings.secret or ""
        self.domain = settings.from_address.rpartition("@")[2] or "localhost"
        self._boundary = "=_topten_" + secrets.token_hex(12)
        subject = ("[TEST] " if test else "") + self.issue.subject
        display, address = parseaddr(settings.from_ or "")
        static = [
            address_header("From", display, address),
            encode_header("Subject", subject),
        ]
        if settings.reply_to:
            static.append(address_header("Reply-To", *parseaddr(settings.reply_to)))
        static.append(encode_header("List-Id", settings.list_id_header))
        static.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        static.append(b"MIME-Version: 1.0\r\n")
        static.append(
            f'Content-Type: multipart/alternative; boundary="{self._boundary}"\r\n\r\n'.encode()
        )
        b = self._boundary.encode()
        self._template = _Template.of(
            b"".join(static),
            [
                (b"--" + b + CRLF + _part_headers("text/plain"), rendered.text),
                (CRLF + b"--" + b + CRLF + _part_headers("text/html"), rendered.html),
            ],
            CRLF + b"--" + b + b"--" + CRLF,
        )
        self._unsubscribe_url = settings.unsubscribe_url or ""
        self._unsubscribe_mailto = settings.unsubscribe_mailto
        self._list_id = settings.list_id_header
        self._date = (0, b"")
        self._issue_date = str(self.issue.date)
        # `from_address` parses MAILER_FROM at each call: once per run is enough
        self._from_address = settings.from_address
        self._verp: Callable[[str], str] | None = None
        if settings.bounce_address and not test:
            # A pipelining connection asks for the next message's sender while this one's is
            # in flight, then again when the next one's turn comes: the MAC is made once.
            self._verp = lru_cache(maxsize=64)(
                partial(envelope_sender, settings.bounce_address, self.secret, self._issue_date)
            )

    def message_id(self, email: str) -> str:
        """The same for the same issue and recipient, so that a resend can be recognised."""
        digest = message_id_digest(self._list_id, self._issue_date, email)
        if self.test:
            digest = f"test.{secrets.token_hex(8)}"
        return f"<{self._issue_date}.{digest}@{self.domain}>"

    def envelope_sender(self, email: str) -> str:
        """`MAIL FROM`: the VERP address naming this issue and recipient when
        `$MAILER_BOUNCE_ADDRESS` is set (never for a test send), else `$MAILER_FROM`'s address."""
        if self._verp is None:
            return self._from_address
        return self._verp(email)

    def build(self, recipient: Recipient) -> bytes:
        email = recipient.email
        token = make_token(self.secret, email)
        unsubscribe = self._unsubscribe_url.replace("{token}", token)
        targets = f"<{unsubscribe}>"
        if self._unsubscribe_mailto:
            # folded after the comma: with a long address, the two tokens on one line could
            # pass 998 octets
            targets += f",\r\n <mailto:{self._unsubscribe_mailto}?subject=unsubscribe%20{token}>"
        headers = (
            address_header("To", recipient.name, email)
            + self._date_header()
            + f"Message-ID: {self.message_id(email)}\r\nList-Unsubscribe: {targets}\r\n".encode()
        )
        values = {
            "greeting": _encode_value(greeting(recipient.name)),
            "email": _encode_value(email),
            "unsubscribe_url": _encode_value(unsubscribe),
        }
        # Every part is encoded by qp() and no header line starts with "." (folded ones start
        # with white space): SMTP has nothing to dot-stuff.
        return Transparent(self._template.fill(headers, values))

    def _date_header(self) -> bytes:
        """`Date:`, formatted at most once a second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, f"Date: {formatdate(second, localtime=True)}\r\n".encode())
        return self._date[1]


def _part_headers(content_type: str) -> bytes:
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode()
