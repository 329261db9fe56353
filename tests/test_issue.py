"""Every rule of "The issue file", through load_issue and through `mailer validate` in-process."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailer.cli import main
from mailer.errors import InputError, IssueInvalid
from mailer.issue import load_issue, paragraphs

EXAMPLE = Path(__file__).resolve().parent.parent / "issues" / "2026-11-24.json"
NAME = "2026-11-24.json"
# One problem line: FILE: json.path: message (the path is dotted field names and list indexes).
LINE = re.compile(r"^(?P<file>.+\.json): (?P<path>[a-z_]+(\.[a-z_0-9]+)*): (?P<message>\S.*)$")


# No .env and no MAILER_* settings from the machine running the tests.
pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def data() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def write(tmp_path: Path, data: Any, name: str = NAME) -> Path:
    path = tmp_path / "issues" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def named(line: str) -> str:
    """A problem in a story of the example, whose ranks run 1..10 in order: the story named."""
    match = re.match(r"stories\.(\d)\.(?!rank:)", line)
    if match is None:
        return line
    return f"{line}, in the story ranked {int(match.group(1)) + 1} (stories.{match.group(1)})"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(IssueInvalid) as info:
        load_issue(path)
    return info.value.problems


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


# -- the example issue ------------------------------------------------------------------------


def test_example_issue_is_valid_and_complete(capsys):
    issue = load_issue(EXAMPLE)
    assert issue.date.isoformat() == "2026-11-24"
    assert [s.rank for s in issue.ranked] == list(range(1, 11))
    assert all(s.image is not None and s.image.alt and s.image.credit and s.source for s in issue.stories)
    assert len({s.url for s in issue.stories}) == 10
    assert issue.sponsor is not None and issue.intro and issue.sign_off
    assert all(2 <= len(s.paragraphs()) <= 4 for s in issue.stories)

    code, out, err = validate(capsys, str(EXAMPLE))
    assert code == 0
    assert err == []
    assert out == [f"{EXAMPLE}: valid: 2026-11-24, 10 stories, subject {issue.subject!r}"]


def test_a_date_resolves_in_the_issues_dir(tmp_path, data, capsys, monkeypatch):
    path = write(tmp_path, data)
    monkeypatch.setenv("MAILER_ISSUES_DIR", str(path.parent))
    code, out, _ = validate(capsys, "2026-11-24")
    assert code == 0
    assert out[0].startswith(f"{path}: valid: 2026-11-24, 10 stories")


# -- one broken rule, one line ----------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def story(i: int, **changes: Any) -> Mutation:
    return lambda d: d["stories"][i].update(changes)


def image(i: int, **changes: Any) -> Mutation:
    return lambda d: d["stories"][i]["image"].update(changes)


def drop(*keys: str | int) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


def top(**changes: Any) -> Mutation:
    return lambda d: d.update(changes)


def ranks(*values: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for s, rank in zip(d["stories"], values, strict=True):
            s["rank"] = rank

    return mutate


BROKEN: list[tuple[str, Mutation, str]] = [
    # date: ISO, and the file's own name
    ("date not ISO", top(date="24/11/2026"), "date: must be an ISO date, YYYY-MM-DD"),
    ("date with a time", top(date="2026-11-24T06:00:00"), "date: must be an ISO date, YYYY-MM-DD"),
    ("date as a number", top(date=20261124), "date: must be an ISO date, YYYY-MM-DD"),
    ("date that does not exist", top(date="2026-02-30"), "date: must be a real date, YYYY-MM-DD"),
    ("date not the file's", top(date="2026-11-25"), "date: must equal the file's name (2026-11-24)"),
    ("date missing", drop("date"), "date: required"),
    # subject: 1..150, one line
    ("subject empty", top(subject=""), "subject: must not be empty"),
    ("subject blank", top(subject="   "), "subject: must not be empty"),
    ("subject 151", top(subject="x" * 151), "subject: must be at most 150 characters"),
    ("subject missing", drop("subject"), "subject: required"),
    ("subject LF", top(subject="Ten\nstories"),
     "subject: must be one line of text without control characters (found U+000A)"),
    ("subject CR", top(subject="Ten\rBcc: all@example.org"),
     "subject: must be one line of text without control characters (found U+000D)"),
    ("subject trailing newline", top(subject="Ten stories\n"),
     "subject: must be one line of text without control characters (found U+000A)"),
    ("subject tab", top(subject="Ten\tstories"),
     "subject: must be one line of text without control characters (found U+0009)"),
    ("subject NUL", top(subject="Ten\x00stories"),
     "subject: must be one line of text without control characters (found U+0000)"),
    ("subject C1 NEL", top(subject="Ten\x85stories"),
     "subject: must be one line of text without control characters (found U+0085)"),
    ("subject not text", top(subject=["Ten"]), "subject: must be text"),
    # preheader: at most 200, one line
    ("preheader 201", top(preheader="p" * 201), "preheader: must be at most 200 characters"),
    ("preheader CRLF", top(preheader="one\r\ntwo"),
     "preheader: must be one line of text without control characters (found U+000D)"),
    ("preheader trailing newline", top(preheader="The ten stories\n"),
     "preheader: must be one line of text without control characters (found U+000A)"),
    ("preheader line separator", top(preheader="one\u2028two"),
     "preheader: must be one line of text without control characters (found U+2028)"),
    # stories: 1..10
    ("no stories", top(stories=[]), "stories: must hold 1 to 10 stories (found 0)"),
    ("eleven stories", lambda d: d["stories"].append({**copy.deepcopy(d["stories"][0]), "rank": 11}),
     "stories: must hold 1 to 10 stories (found 11)"),
    ("stories missing", drop("stories"), "stories: required"),
    ("stories not a list", top(stories={"rank": 1}), "stories: must be a list"),
    # rank: 1..N, each once
    ("rank twice", ranks(1, 2, 3, 3, 5, 6, 7, 8, 9, 10), "stories.3.rank: rank 3 is used twice"),
    ("rank zero", ranks(0, 2, 3, 4, 5, 6, 7, 8, 9, 10), "stories.0.rank: must be between 1 and 10"),
    ("rank past N", ranks(1, 2, 3, 4, 5, 6, 7, 8, 9, 11), "stories.9.rank: must be between 1 and 10"),
    ("rank as text", story(4, rank="5"), "stories.4.rank: must be a whole number"),
    ("rank as boolean", story(0, rank=True), "stories.0.rank: must be a whole number"),
    ("rank missing", drop("stories", 6, "rank"), "stories.6.rank: required"),
    # headline and summary non-empty
    ("headline empty", story(2, headline=""), "stories.2.headline: must not be empty"),
    ("headline blank", story(2, headline=" \t "),
     "stories.2.headline: must be one line of text without control characters (found U+0009)"),
    ("headline spaces", story(2, headline="   "), "stories.2.headline: must not be empty"),
    ("headline missing", drop("stories", 2, "headline"), "stories.2.headline: required"),
    ("summary empty", story(5, summary=""), "stories.5.summary: must not be empty"),
    ("summary blank lines only", story(5, summary="\n\n  \n"), "stories.5.summary: must not be empty"),
    ("summary missing", drop("stories", 5, "summary"), "stories.5.summary: required"),
    # every URL absolute https
    ("story http", story(3, url="http://news.example.org/a"), "stories.3.url: must be an https URL"),
    ("story relative", story(3, url="/2026/11/24/a"), "stories.3.url: must be an https URL"),
    ("story protocol-relative", story(3, url="//news.example.org/a"), "stories.3.url: must be an https URL"),
    ("story javascript", story(3, url="javascript:alert(1)"), "stories.3.url: must be an https URL"),
    ("story no host", story(3, url="https:///a"), "stories.3.url: must be an https URL"),
    ("story space", story(3, url="https://news.example.org/a b"), "stories.3.url: must be an https URL"),
    ("story url missing", drop("stories", 3, "url"), "stories.3.url: required"),
    ("image http", image(1, url="http://images.example.org/a.jpg"),
     "stories.1.image.url: must be an https URL"),
    ("image data URI", image(1, url="data:image/png;base64,AAAA"),
     "stories.1.image.url: must be an https URL"),
    ("sponsor http", lambda d: d["sponsor"].update(url="http://fernleaf.example.com/"),
     "sponsor.url: must be an https URL"),
    ("sponsor mailto", lambda d: d["sponsor"].update(url="mailto:ads@example.com"),
     "sponsor.url: must be an https URL"),
    # image alt required
    ("alt empty", image(7, alt=""), "stories.7.image.alt: must not be empty"),
    ("alt blank", image(7, alt="  "), "stories.7.image.alt: must not be empty"),
    ("alt missing", drop("stories", 7, "image", "alt"), "stories.7.image.alt: required"),
    # only the fields of the spec
    ("typo in a story", lambda d: d["stories"][0].update(sumary="x"), "stories.0.sumary: unknown field"),
    ("typo at the top", top(subjet="x"), "subjet: unknown field"),
    ("unknown in image", image(0, captoin="x"), "stories.0.image.captoin: unknown field"),
    ("unknown in sponsor", lambda d: d["sponsor"].update(logo="https://x.example/l.png"),
     "sponsor.logo: unknown field"),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_each_broken_rule_is_one_line(tmp_path, data, capsys, mutate, expected):
    mutate(data)
    path = write(tmp_path, data)
    expected = named(expected)
    assert problems_of(path) == [f"{path}: {expected}"]
    assert LINE.match(f"{path}: {expected}")

    code, out, err = validate(capsys, str(path))
    assert code == 2
    assert out == []
    assert err == [f"{path}: {expected}", "1 problem(s); nothing was sent"]


# -- what the rules allow ---------------------------------------------------------------------


ALLOWED: list[tuple[str, Mutation]] = [
    ("subject of 150", top(subject="s" * 150)),
    ("subject of one character", top(subject="X")),
    ("subject not ASCII", top(subject="Zehn Geschichten für Dienstag — 24. November")),
    ("preheader of 200", top(preheader="p" * 200)),
    ("no preheader", drop("preheader")),
    ("empty preheader", top(preheader="")),
    ("one story", lambda d: d.update(stories=[{**d["stories"][4], "rank": 1}])),
    ("ranks in any order", ranks(10, 9, 8, 7, 6, 5, 4, 3, 2, 1)),
    ("story without image", drop("stories", 0, "image")),
    ("image without caption or credit", lambda d: d["stories"][0].update(
        image={"url": "https://images.example.org/a.jpg", "alt": "A harbour"})),
    ("no sponsor", drop("sponsor")),
    ("no intro or sign-off", lambda d: (d.pop("intro"), d.pop("sign_off"))),
    ("summary with CRLF paragraphs", story(0, summary="One.\r\n\r\nTwo.")),
    ("upper-case scheme", story(0, url="HTTPS://news.example.org/a")),
]


@pytest.mark.parametrize("mutate", [c[1] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_what_the_rules_allow(tmp_path, data, capsys, mutate):
    mutate(data)
    path = write(tmp_path, data)
    load_issue(path)
    assert validate(capsys, str(path))[0] == 0


def test_a_problem_in_a_story_names_the_story_by_its_rank(tmp_path, data, capsys):
    ranks(10, 9, 8, 7, 6, 5, 4, 3, 2, 1)(data)
    data["stories"][3]["url"] = "http://news.example.org/a"
    path = write(tmp_path, data)
    code, _, err = validate(capsys, str(path))
    assert code == 2
    assert err[0] == f"{path}: stories.3.url: must be an https URL, in the story ranked 7 (stories.3)"
    assert LINE.match(err[0])


def test_date_is_only_tied_to_a_date_named_file(tmp_path, data):
    data["date"] = "2026-12-01"
    assert load_issue(write(tmp_path, data, name="tuesday.json")).date.isoformat() == "2026-12-01"
    path = write(tmp_path, data, name="2026-11-30.json")
    assert problems_of(path) == [f"{path}: date: must equal the file's name (2026-11-30)"]


def test_ranks_give_the_order(tmp_path, data):
    ranks(10, 9, 8, 7, 6, 5, 4, 3, 2, 1)(data)
    issue = load_issue(write(tmp_path, data))
    assert [s.rank for s in issue.ranked] == list(range(1, 11))
    assert issue.ranked[0].headline == data["stories"][9]["headline"]


def test_a_blank_line_starts_a_paragraph():
    assert paragraphs("One\nstill one.\n\nTwo.\n \t\nThree.\n\n\n") == ["One\nstill one.", "Two.", "Three."]
    assert paragraphs("") == []


# -- every problem at once --------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path, data, capsys):
    data["date"] = "2026-11-23"
    data["subject"] = "Line one\r\nBcc: everyone@example.org"
    data["preheader"] = "q" * 201
    data["stories"][0]["url"] = "http://news.example.org/a"
    data["stories"][1]["image"]["alt"] = ""
    data["stories"][2]["sumary"] = data["stories"][2].pop("summary")
    data["stories"][3]["rank"] = 3
    data["stories"][8]["headline"] = ""
    data["sponsor"]["url"] = "ftp://fernleaf.example.com/"
    path = write(tmp_path, data)
    expected = [
        f"{path}: date: must equal the file's name (2026-11-24)",
        f"{path}: subject: must be one line of text without control characters (found U+000D)",
        f"{path}: preheader: must be at most 200 characters",
        f"{path}: stories.0.url: must be an https URL, in the story ranked 1 (stories.0)",
        f"{path}: stories.1.image.alt: must not be empty, in the story ranked 2 (stories.1)",
        # ranks 3 twice: which of the two is "the story ranked 3" is not for validate to say
        f"{path}: stories.2.summary: required",
        f"{path}: stories.2.sumary: unknown field",
        f"{path}: stories.8.headline: must not be empty, in the story ranked 9 (stories.8)",
        f"{path}: sponsor.url: must be an https URL",
        # the rank rule is checked even while other fields are wrong
        f"{path}: stories.3.rank: rank 3 is used twice",
    ]
    got = problems_of(path)
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got)) == len(expected)

    code, out, err = validate(capsys, str(path))
    assert code == 2
    assert out == []
    assert sorted(err[:-1]) == sorted(expected)
    assert err[-1] == f"{len(expected)} problem(s); nothing was sent"
    assert all(LINE.match(line) for line in err[:-1])
    assert "Traceback" not in "\n".join(err)


# -- files that are not an issue at all: one line, exit 2 --------------------------------------

UNREADABLE: list[tuple[str, bytes | None, str]] = [
    ("not JSON", b'{"date": "2026-11-24", "subject": }', "not JSON: Expecting value (line 1, column 35)"),
    ("truncated JSON", b'{"date": "2026-11-24",',
     "not JSON: Expecting property name enclosed in double quotes"),
    ("not UTF-8", '{"date": "2026-11-24", "subject": "Caf\u00e9"}'.encode("latin-1"),
     "not UTF-8 text (byte 38)"),
    ("empty", b"", "the file is empty"),
    ("only whitespace", b" \n\t\n", "the file is empty"),
    ("missing", None, "no such issue file"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_a_file_that_is_not_an_issue_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / NAME
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_issue(path)
    assert not isinstance(info.value, IssueInvalid)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)

    code, out, err = validate(capsys, str(path))
    assert code == 2
    assert out == []
    assert len(err) == 1
    assert err[0].startswith(f"mailer validate: {path}: {message}")


def test_json_that_is_not_an_object(tmp_path, capsys):
    path = tmp_path / NAME
    path.write_text('[{"rank": 1}]', encoding="utf-8")
    assert problems_of(path) == [f"{path}: must be a JSON object"]
    code, _, err = validate(capsys, str(path))
    assert (code, err[0]) == (2, f"{path}: must be a JSON object")


def test_a_byte_order_mark_is_accepted(tmp_path, data):
    path = tmp_path / NAME
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert load_issue(path).subject == data["subject"]


def test_a_missing_date_resolves_to_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAILER_ISSUES_DIR", str(tmp_path / "issues"))
    code, out, err = validate(capsys, "2031-01-01")
    assert code == 2
    assert err == [f"mailer validate: {tmp_path / 'issues' / '2031-01-01.json'}: no such issue file"]


def test_a_key_repeated_in_one_object_is_refused(tmp_path, issue_data):
    """JSON would let the second "summary" silently win over the first."""
    text = json.dumps(issue_data, indent=1)
    text = text.replace('"headline":', '"summary": "an older draft",\n "headline":', 1)
    path = tmp_path / "2026-11-24.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r'the key "summary" appears twice'):
        load_issue(path)


def test_sponsor_paragraphs_split_on_blank_lines_with_spaces(tmp_path, issue_data):
    issue_data["sponsor"]["text"] = "First part.\n   \nSecond part."
    path = tmp_path / "2026-11-24.json"
    path.write_text(json.dumps(issue_data), encoding="utf-8")
    assert load_issue(path).sponsor.paragraphs() == ["First part.", "Second part."]
