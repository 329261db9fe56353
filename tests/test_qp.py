"""The bodies' quoted-printable: decodes to the text, keeps RFC 2045's 76-character lines, and
never starts a line with "." (so SMTP transparency has nothing to do)."""

from __future__ import annotations

import binascii
import random

import pytest

from mailer.message import MAX_LINE, qp


def check(text: str) -> None:
    encoded = qp(text)
    lines = encoded.split(b"\r\n")
    assert all(len(line) <= MAX_LINE for line in lines), max(lines, key=len)
    assert not any(line.startswith(b".") for line in lines)
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    assert binascii.a2b_qp(encoded).decode("utf-8").replace("\r\n", "\n") == text.replace("\r\n", "\n")


@pytest.mark.parametrize(
    "text",
    [
        ".starts with a dot",
        "line one\n.line two\n..\n.",
        "x" * 75 + "." + "y" * 200,  # a soft break lands just before the dot
        "é" * 30 + "." * 300,  # escapes next to the cut
        "." * 500,
        "trailing space \n.next",
    ],
)
def test_no_line_starts_with_a_dot(text):
    check(text)


def test_random_text_round_trips():
    rng = random.Random(7)
    alphabet = "ab .\n=é€\t"
    for _ in range(300):
        check("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))))


def test_a_whole_message_needs_no_dot_stuffing(issue_file, issue_data, tmp_path, env, smtp):
    """A story whose paragraphs start with dots still arrives intact over real SMTP."""
    import json

    from mailer.cli import main
    from mailer.config import load_settings
    from mailer.issue import load_issue
    from mailer.message import MessageFactory
    from mailer.render import render_issue
    from mailer.subscribers import Recipient
    from mailer.transport import dot_stuff

    summary = "...and so it began.\n\n.hidden files are not hidden from this.\n\n." + "x." * 60
    issue_data["stories"][0]["summary"] = summary
    issue_file.write_text(json.dumps(issue_data), encoding="utf-8")
    factory = MessageFactory(render_issue(load_issue(issue_file), load_settings()), load_settings())
    message = factory.build(Recipient(2, "dot@example.org", ".Dot"))
    lines = message.split(b"\r\n")
    assert not any(line.startswith(b".") for line in lines)
    assert max(len(line) for line in lines) <= 998
    assert dot_stuff(message) is message  # nothing to scan or stuff

    (tmp_path / "subscribers.csv").write_text("email,name\ndot@example.org,.Dot\n", encoding="utf-8")
    assert main(["send", str(issue_file)]) == 0
    [received] = smtp.recorder.parsed()
    text = received.get_body(("plain",)).get_content()
    assert "...and so it began." in text
    assert ".hidden files are not hidden from this." in text
    html = received.get_body(("html",)).get_content()
    assert ".hidden files are not hidden from this." in html
