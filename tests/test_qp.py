"""The bodies' quoted-printable: decodes to the text, keeps RFC 2045's 76-character lines, and
never starts a line with "." (so SMTP transparency has nothing to do)."""

from __future__ import annotations

import binascii
import random

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mailer.message import MAX_LINE, _qp_any, _qp_no_space, qp


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


# -- the short cuts for a recipient's values ----------------------------------------------------
# `qp` skips binascii, or the mending after it, for the values most recipients have (a greeting,
# a name with accents, an address, an unsubscribe URL); whatever it is given, it must make the
# very bytes the general encoding makes.

# Printable ASCII without white space, "=" and "." often: where a cut lands next to an escape or
# a line would start with a dot.
no_space = st.text(st.sampled_from("ab.=/:?&%-_~0"), max_size=400) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=400
)
# URL-shaped: a fixed head, a run of letters, and a tail, so that the 75-column cuts move over
# every position of the dots and escapes in it.
url_shaped = st.builds(
    lambda head, run, tail: head + "x" * run + tail,
    st.sampled_from(["https://example.org/unsubscribe/", "https://example.org/u?t=", ".", "="]),
    st.integers(0, 300),
    st.text(st.sampled_from("A.=-_9"), max_size=160),
)
# Short values with spaces: greetings, names, with accents and anything else.
short_text = st.text(st.sampled_from("ab .=\té€-"), max_size=90) | st.text(max_size=90)


@settings(max_examples=3000, deadline=None)
@given(text=no_space | url_shaped | short_text)
@example("x" * 75 + ".")  # a lone dot on the last line: binascii escapes that one itself
@example("x" * 73 + "=y")  # an escape that would end past the 75th column
@example("x" * 74 + "=")  # an escape that would start on the 75th column
@example("x" * 150)  # lines exactly full
@example("x" * 76)  # binascii's 76-character last line
@example("")
@example("Good morning, Zoë Ünal.")  # a name with accents: one line with its escapes
@example("x" * 70 + "é")  # too long once escaped
@example(".é")  # binascii leaves a leading dot
@example("é ")  # and escapes a trailing space
def test_the_short_cuts_make_the_same_bytes_as_the_general_encoding(text):
    assert qp(text) == _qp_any(text)
    check(text)


@settings(max_examples=3000, deadline=None)
@given(text=no_space | url_shaped)
def test_the_long_value_short_cut_makes_the_general_encoding_or_declines(text):
    """Checked apart from `qp`, which would hide a short cut that wrongly declines."""
    assume(text)  # `qp` gives it one character at least
    wrapped = _qp_no_space(text.encode("ascii"))
    assert wrapped is None or wrapped == _qp_any(text)


def test_an_unsubscribe_url_takes_the_short_cut():
    url = "https://example.org/unsubscribe?t=" + "A" * 60
    expected = b"https://example.org/unsubscribe?t=3D" + b"A" * 39 + b"=\r\n" + b"A" * 21 + b"=\r\n"
    assert _qp_no_space(url.encode("ascii")) == expected == _qp_any(url)
    # a line that would start with a dot is left to the general encoding
    assert _qp_no_space(("x" * 75 + ".y").encode("ascii")) is None
