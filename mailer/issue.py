"""The issue file: a pydantic model of every rule, and loading with one line per problem."""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailer.errors import InputError, IssueInvalid

DATE_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
GMAIL_CLIP_BYTES = 102 * 1024
MAX_STORIES = 10

# Characters that would break a header or a line: C0/C1 controls, DEL, and the Unicode line and
# paragraph separators, which some mail clients treat as line breaks.
_BREAKING = {"Cc", "Zl", "Zp"}


# Characters that change the direction of the text around them, or take no room at all: in a
# subject or preheader they hide or reorder what the reader sees (a subject of nothing but
# U+200B looks empty). The zero-width joiner stays allowed: emoji sequences need it.
_INVISIBLE = set(
    "\u061c\u200b\u200c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063"
    "\u2064\u2066\u2067\u2068\u2069\ufeff\u180e"
)
# Sizes far beyond any real issue, so that a slip (a pasted file) is refused with its field
# before rendering it takes the machine's memory.
MAX_FILE_BYTES = 2_000_000
MAX_LINE_CHARS = 500
MAX_TEXT_CHARS = 20_000
MAX_URL_CHARS = 2_000


def _control_chars(value: str, allow_newlines: bool) -> list[str]:
    bad = []
    for char in value:
        if allow_newlines and char in "\n\t":
            continue
        if unicodedata.category(char) in _BREAKING:
            bad.append(f"U+{ord(char):04X}")
    return bad


def _surrogates(value: str) -> None:
    """A lone surrogate (`"\\ud800"` in JSON) is not a character: it cannot be encoded."""
    for char in value:
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"must be text: U+{ord(char):04X} is half of a character (a lone surrogate)")


def single_line(value: str) -> str:
    _surrogates(value)
    bad = _control_chars(value, allow_newlines=False)
    if bad:
        raise ValueError(f"must be one line of text without control characters (found {bad[0]})")
    if len(value) > MAX_LINE_CHARS:
        raise ValueError(f"must be at most {MAX_LINE_CHARS} characters")
    return value


def multi_line(value: str) -> str:
    _surrogates(value)
    bad = _control_chars(value.replace("\r\n", "\n"), allow_newlines=True)
    if bad:
        raise ValueError(f"must not contain control characters (found {bad[0]})")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"must be at most {MAX_TEXT_CHARS:,} characters (found {len(value):,})")
    return value.replace("\r\n", "\n")


def no_invisible(value: str) -> str:
    """For what becomes a header or the inbox's preview line."""
    for char in value:
        if char in _INVISIBLE:
            raise ValueError(
                f"must not contain invisible or direction-changing characters (found U+{ord(char):04X})"
            )
    return value


def non_empty(value: str) -> str:
    if not "".join(c for c in value if c not in _INVISIBLE and c != "\u200d").strip():
        raise ValueError("must not be empty")
    return value


def https_url(value: str) -> str:
    _surrogates(value)
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"must be an https URL of at most {MAX_URL_CHARS} characters")
    parts = urlsplit(value)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in value)
    ):
        raise ValueError("must be an https URL")
    # A browser reads `\\` as `/`: https://evil.example\\@good.example/ goes to evil.example.
    if "\\" in value:
        raise ValueError("must be an https URL without a backslash")
    if "@" in parts.netloc:
        raise ValueError("must be an https URL without a user name or password (user@host)")
    try:
        valid_port = parts.port != 0
    except ValueError:  # not a number, or over 65535
        valid_port = False
    if not valid_port:
        raise ValueError("must be an https URL with a port from 1 to 65535")
    return value


Line = Annotated[StrictStr, AfterValidator(single_line)]
RequiredLine = Annotated[StrictStr, AfterValidator(single_line), AfterValidator(non_empty)]
Text = Annotated[StrictStr, AfterValidator(multi_line)]
RequiredText = Annotated[StrictStr, AfterValidator(multi_line), AfterValidator(non_empty)]
HttpsUrl = Annotated[StrictStr, AfterValidator(https_url)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Image(_Model):
    url: HttpsUrl
    alt: RequiredLine
    caption: Line = ""
    credit: Line = ""


class Story(_Model):
    rank: StrictInt
    headline: RequiredLine
    url: HttpsUrl
    summary: RequiredText
    source: Line = ""
    image: Image | None = None

    def paragraphs(self) -> list[str]:
        return paragraphs(self.summary)


class Sponsor(_Model):
    name: RequiredLine
    text: RequiredText
    url: HttpsUrl

    def paragraphs(self) -> list[str]:
        return paragraphs(self.text)


class Issue(_Model):
    date: dt.date
    subject: Annotated[RequiredLine, AfterValidator(no_invisible), Field(max_length=150)]
    preheader: Annotated[Line, AfterValidator(no_invisible), Field(max_length=200)] = ""
    intro: Text = ""
    stories: Annotated[list[Story], Field(min_length=1, max_length=MAX_STORIES)]
    sponsor: Sponsor | None = None
    sign_off: Text = ""

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if not isinstance(value, str) or not DATE_NAME.match(value):
            raise ValueError("must be an ISO date, YYYY-MM-DD")
        return value

    @field_validator("date")
    @classmethod
    def _date_matches_file(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        file_date = (info.context or {}).get("file_date")
        if file_date and value.isoformat() != file_date:
            raise ValueError(f"must equal the file's name ({file_date})")
        return value

    @model_validator(mode="after")
    def _ranks(self) -> Issue:
        problems = rank_problems([story.rank for story in self.stories])
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def ranked(self) -> list[Story]:
        return sorted(self.stories, key=lambda s: s.rank)

    def intro_paragraphs(self) -> list[str]:
        return paragraphs(self.intro)

    def sign_off_paragraphs(self) -> list[str]:
        return paragraphs(self.sign_off)


def rank_problems(ranks: list[Any]) -> list[str]:
    """Ranks must run 1..N, each once; whole numbers only (other types are reported elsewhere)."""
    count = len(ranks)
    seen: set[int] = set()
    problems = []
    for index, rank in enumerate(ranks):
        if not isinstance(rank, int) or isinstance(rank, bool):
            continue
        if not 1 <= rank <= count:
            problems.append(f"stories.{index}.rank: must be between 1 and {count}")
        elif rank in seen:
            problems.append(f"stories.{index}.rank: rank {rank} is used twice")
        seen.add(rank)
    return problems


def paragraphs(text: str) -> list[str]:
    """A blank line starts a new paragraph; single newlines stay inside one."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def resolve_issue_path(arg: str, issues_dir: Path, today: dt.date | None = None) -> Path:
    """`ISSUE` on the command line: a path, a date `YYYY-MM-DD`, or `today`."""
    if arg == "today":
        return issues_dir / f"{(today or dt.date.today()).isoformat()}.json"
    if DATE_NAME.match(arg):
        return issues_dir / f"{arg}.json"
    return Path(arg)


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "required",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "date_from_datetime_parsing": "must be a real date, YYYY-MM-DD",
    "too_short": None,
    "too_long": None,
}


def _safe_key(part: object) -> str:
    """A JSON path part as one printable line: a key with a line break or an escape sequence
    (an unknown field is printed as it was written) is shown JSON-escaped."""
    text = str(part)
    if text.isprintable() and text.isascii() and "." not in text and '"' not in text and text:
        return text
    return json.dumps(text)


def _describe(error: Any) -> list[str]:
    loc = ".".join(_safe_key(part) for part in error["loc"])
    kind = error["type"]
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        # The rank check reports its own paths, one problem per line.
        if message.startswith("stories."):
            return message.splitlines()
    elif kind in ("too_short", "too_long"):
        ctx = error.get("ctx", {})
        if loc == "stories":
            message = f"must hold 1 to {MAX_STORIES} stories (found {ctx.get('actual_length')})"
        elif kind == "too_short":
            message = "must not be empty"
        else:
            message = f"must be at most {ctx.get('max_length')} characters"
    elif kind == "string_too_long":
        message = f"must be at most {error['ctx']['max_length']} characters"
    elif kind == "string_too_short":
        message = "must not be empty"
    else:
        message = _FRIENDLY.get(kind) or error["msg"]
    return [f"{loc}: {message}" if loc else message]


class _DuplicateKey(ValueError):
    pass


class _BadNumber(ValueError):
    pass


def _bounded_int(text: str) -> int:
    """No rank needs more than a few digits; Python refuses to convert over 4,300 anyway."""
    if len(text.lstrip("-")) > 30:
        raise _BadNumber(f"a number of {len(text)} digits; numbers in an issue are small whole numbers")
    return int(text)


def _no_constant(text: str) -> float:
    raise _BadNumber(f"{text} is not a number JSON allows")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON lets a repeated key silently win; an editor's copy-paste slip should not."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(json.dumps(key))
        seen[key] = value
    return seen


def load_issue(path: Path) -> Issue:
    """Read and validate one issue file; every problem is raised at once, one per line."""
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such issue file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    if not data.strip():
        raise InputError(f"{name}: the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise InputError(
            f"{name}: {len(data) / 1e6:.1f} MB, far more than an issue (at most "
            f"{MAX_FILE_BYTES / 1e6:.0f} MB); is it the right file?"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_refuse_duplicate_keys,
                         parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except _DuplicateKey as exc:
        raise InputError(f"{name}: the key {exc} appears twice in one object; keep one") from None
    except RecursionError:
        raise InputError(f"{name}: not an issue: the JSON is nested too deeply") from None
    except _BadNumber as exc:
        raise InputError(f"{name}: {exc}") from None
    if not isinstance(raw, dict):
        raise IssueInvalid([f"{name}: must be a JSON object"])
    file_date = path.stem if DATE_NAME.match(path.stem) else None
    try:
        return Issue.model_validate(raw, context={"file_date": file_date})
    except ValidationError as exc:
        lines = [line for error in exc.errors() for line in _describe(error)]
        # The rank rule runs only once every story is valid; check it here too so that one
        # run of `validate` lists every problem.
        stories = raw.get("stories")
        if isinstance(stories, list) and 0 < len(stories) <= MAX_STORIES:
            ranks = [s.get("rank") if isinstance(s, dict) else None for s in stories]
            lines += [p for p in rank_problems(ranks) if p not in lines]
        problems = [f"{name}: {_name_the_story(line, stories)}" for line in lines]
        raise IssueInvalid(problems) from None


def _name_the_story(line: str, stories: Any) -> str:
    """`stories.3` counts from 0; say which story an editor means: the one ranked 4."""
    match = re.match(r"stories\.(\d+)\.(?!rank:)", line)
    if match is None or not isinstance(stories, list):
        return line
    index = int(match.group(1))
    ranks = [s.get("rank") if isinstance(s, dict) else None for s in stories]
    rank = ranks[index] if index < len(ranks) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or ranks.count(rank) != 1:
        return line
    return f"{line}, in the story ranked {rank} (stories.{index})"


def content_warnings(issue: Issue, html_bytes: int) -> list[str]:
    """What an editor should know before sending; none of these blocks a send."""
    warnings = []
    if html_bytes > GMAIL_CLIP_BYTES:
        warnings.append(
            f"the HTML part is {html_bytes / 1024:.0f} KB, over 102 KB: Gmail will clip it"
        )
    if len(issue.stories) < MAX_STORIES:
        warnings.append(f"only {len(issue.stories)} stories (a full issue has {MAX_STORIES})")
    seen: dict[str, int] = {}
    for story in issue.ranked:
        key = story.url.rstrip("/")
        if key in seen:
            warnings.append(f"story {story.rank} links to the same page as story {seen[key]}: {story.url}")
        else:
            seen[key] = story.rank
        if urlsplit(story.url).path in ("", "/"):
            warnings.append(f"story {story.rank} links to a site's front page, not a story: {story.url}")
    return warnings
