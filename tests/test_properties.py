"""Property tests: whatever an issue file, a subscriber list or a name holds, the mailer ends in
a valid result or its own error (never another exception), and every message it builds is one a
relay takes and a mail program shows as written."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.utils import parseaddr
from pathlib import Path

from conftest import EXAMPLE_ISSUE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mailer.config import Settings
from mailer.errors import InputError, MailerError, SubscribersError
from mailer.issue import Issue, load_issue
from mailer.message import MessageFactory
from mailer.render import RenderedIssue, render_issue
from mailer.subscribers import Recipient, clean_name, read_subscribers

EXAMPLE = json.loads(EXAMPLE_ISSUE.read_text(encoding="utf-8"))
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any text at all, lone surrogates included (JSON can carry them as \ud800 escapes).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=80)
# Text as a person or a spreadsheet writes it: any script, no surrogates.
human_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=120)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
paths = st.sampled_from(
    ["date", "subject", "preheader", "intro", "stories", "sponsor", "sign_off", "stories.0",
     "stories.0.rank", "stories.0.url", "stories.0.headline", "stories.0.image", "stories.0.image.url",
     "sponsor.url", "unknown"]
)


def _with(data: dict, path: str, value: object) -> dict:
    """The example issue with one value replaced (or added) at a dotted path."""
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    target: object = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]  # type: ignore[index]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value  # type: ignore[index]
    return data


def _load(tmp_path: Path, content: bytes) -> Issue | None:
    path = tmp_path / "2026-11-24.json"
    path.write_bytes(content)
    try:
        return load_issue(path)
    except InputError as exc:
        assert str(exc).strip(), "an error says what is wrong"
        return None


# -- issue loading ------------------------------------------------------------------------------


@SETTINGS
@given(content=st.binary(max_size=400))
def test_any_bytes_load_as_an_issue_or_the_mailers_error(tmp_path, content):
    _load(tmp_path, content)


@SETTINGS
@given(path=paths, value=json_values)
def test_any_value_anywhere_in_an_issue_loads_or_is_refused(tmp_path, path, value):
    issue = _load(tmp_path, json.dumps(_with(EXAMPLE, path, value)).encode())
    if issue is not None:  # what validates renders, and builds a message
        settings_ = Settings.model_validate({
            "from": "The Top Ten <news@example.org>", "secret": "a-secret-of-some-length",
            "unsubscribe_url": "https://example.org/u/{token}",
        })
        factory = MessageFactory(render_issue(issue, settings_), settings_)
        _check_message(factory.build(Recipient(2, "ann@example.org", "Ann")))


@SETTINGS
@given(value=any_text)
def test_any_text_in_every_text_field_is_refused_with_its_field_or_kept_exactly(tmp_path, value):
    for field in ("subject", "preheader", "intro", "sign_off"):
        issue = _load(tmp_path, json.dumps(_with(EXAMPLE, field, value)).encode())
        if issue is not None:
            assert getattr(issue, field) == value.replace("\r\n", "\n")
            assert not any("\ud800" <= c <= "\udfff" for c in value)


# -- CSV reading --------------------------------------------------------------------------------


@SETTINGS
@given(content=st.binary(max_size=400))
def test_any_bytes_read_as_a_list_or_the_mailers_error(tmp_path, content):
    path = tmp_path / "list.csv"
    path.write_bytes(b"email,name,status\n" + content)
    try:
        rows = list(read_subscribers(path))
    except SubscribersError as exc:
        assert "\n" not in str(exc) and "list.csv" in str(exc)
        return
    for row in rows:
        assert "\n" not in getattr(row, "name", "") and "\r" not in getattr(row, "name", "")


@SETTINGS
@given(rows=st.lists(st.tuples(st.from_regex(r"[a-z0-9.+_-]{1,20}", fullmatch=True), human_text),
                     min_size=1, max_size=8, unique_by=lambda r: r[0]),
       line_end=st.sampled_from(["\r\n", "\n", "\r"]))
def test_a_list_a_spreadsheet_wrote_reads_back_row_for_row(tmp_path, rows, line_end):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(["email", "name"])
    for local, name in rows:
        writer.writerow([f"{local}@example.org", name])
    text = buffer.getvalue()
    assume(line_end != "\r" or not any("\n" in n for _, n in rows))  # CR-only files use CR alone
    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8", newline="")
    try:
        got = list(read_subscribers(path))
    except SubscribersError:
        # Refused only when a value runs over several lines: never a list with none.
        assert any("\n" in name or "\r" in name for _, name in rows)
        return
    names = {r.email: r.name for r in got if isinstance(r, Recipient)}
    for local, name in rows:
        address = f"{local}@example.org"
        if address in names:  # no one's name holds another row, and each row is its own
            assert names[address] == clean_name(name)
    assert len(got) <= len(rows)
    assert [r.row for r in got] == sorted(r.row for r in got)


# -- message building ---------------------------------------------------------------------------


def _check_message(raw: bytes) -> object:
    """What a relay and a mail program need of every message."""
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    for word in ENCODED_WORD.findall(head):
        assert len(word) <= 75, word
    message = message_from_bytes(raw, policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    return message


def _decoded_address(raw: bytes, name: str) -> tuple[str, str]:
    """A header's display name and address, decoded as RFC 2047 says (white space between
    adjacent encoded words is not part of the text)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(rf"^{name}: (.*?)\r\n(?! )", head, re.M | re.S)
    assert match, name
    display, address = parseaddr(match[1].replace("\r\n", ""))
    return str(make_header(decode_header(display))), address


@functools.cache
def rendered() -> RenderedIssue:
    """The example, rendered once (rendering is not what these tests are about)."""
    issue = Issue.model_validate(EXAMPLE)
    plain = Settings.model_validate({
        "from": "The Top Ten <news@example.org>", "secret": "a-secret-of-some-length",
        "unsubscribe_url": "https://example.org/u/{token}",
    })
    return render_issue(issue, plain)


names = st.one_of(
    human_text,
    st.text(st.sampled_from("Zoë 日本語😀 =?utf-8?q?x?= \"<>,;@\\"), max_size=200),
    st.builds(lambda w: w * 40, st.sampled_from(["Żółć ", "長い名前", "x" * 30, "=?utf-8?b?QQ==?= "])),
)


addresses = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}.example",
    st.text("abcxyz0189+_-", min_size=1, max_size=64),
    st.lists(st.text("abcxyz0189", min_size=1, max_size=63), min_size=1, max_size=3),
).filter(lambda a: len(a) <= 254) | st.just(  # the longest there is: two long tokens in one header
    "x" * 64 + "@" + "y" * 63 + "." + "z" * 63 + "." + "w" * 50 + ".example"
)


@settings(max_examples=150, deadline=None)
@given(to_name=names, from_name=names, subject=human_text, address=addresses)
def test_every_built_message_parses_and_decodes_back_exactly(to_name, from_name, subject, address):
    issue = rendered().issue.model_copy(update={"subject": subject})
    try:
        Issue.model_validate(issue.model_dump(mode="json"))
    except ValidationError:
        assume(False)  # a subject the issue rules refuse never reaches a message
    quoted = from_name.replace("\\", "\\\\").replace('"', '\\"')
    try:
        settings_ = Settings.model_validate({
            "from": f'"{quoted}" <news@example.org>', "secret": "a-secret-of-some-length",
            "unsubscribe_url": "https://example.org/" + "u" * 450 + "/{token}",
            "unsubscribe_mailto": "unsubscribe-" + "x" * 50 + "@lists." + "y" * 60 + ".example.org",
        })
    except (ValidationError, MailerError):
        assume(False)  # control characters: refused as a setting
    factory = MessageFactory(dataclasses.replace(rendered(), issue=issue), settings_)
    name = clean_name(to_name)
    raw = factory.build(Recipient(2, address, name))
    message = _check_message(raw)
    assert _decoded_address(raw, "To") == (name, address)
    # white space around a display name is not part of it
    assert _decoded_address(raw, "From") == (parseaddr(settings_.from_ or "")[0].strip(), "news@example.org")
    assert message["Subject"] == subject  # type: ignore[index]
