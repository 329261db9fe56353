"""The message one recipient gets: its parts, its headers, its unsubscribe token."""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime

import pytest

from mailer.config import load_settings
from mailer.errors import InputError
from mailer.message import MessageFactory
from mailer.send import prepare
from mailer.subscribers import Recipient
from mailer.tokens import make_token, read_token

SECRET = "test-secret"
BASE = {
    "MAILER_FROM": "The Top Ten <news@example.org>",
    "MAILER_SECRET": SECRET,
    "MAILER_UNSUBSCRIBE_URL": "https://example.org/unsubscribe?t={token}",
}
ANN = Recipient(2, "ann@example.org", "Ann Example")


@pytest.fixture
def factory(issue_file, tmp_path, monkeypatch):
    """A factory for the example issue, under the settings given (on top of BASE)."""
    monkeypatch.chdir(tmp_path)  # no stray .env

    def make(test: bool = False, **extra: str) -> MessageFactory:
        settings = load_settings(environ=BASE | extra)
        return MessageFactory(prepare(issue_file, settings).rendered, settings, test=test)

    return make


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects, msg.defects
    return msg


def unsubscribe_links(msg: EmailMessage) -> list[str]:
    return re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))


def test_one_recipient_alone_in_to(factory):
    msg = parse(factory().build(ANN))
    [to] = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ann Example", "ann@example.org")
    for header in ("Cc", "Bcc", "Resent-To"):
        assert msg[header] is None
    assert len(msg.get_all("To")) == 1


def test_no_name_means_a_bare_address(factory):
    msg = parse(factory().build(Recipient(2, "bob@example.org")))
    [to] = msg["To"].addresses
    assert to.display_name == ""
    assert to.addr_spec == "bob@example.org"


def test_multipart_alternative_with_text_and_inlined_html(factory):
    msg = parse(factory().build(ANN))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    text, html = (p.get_content() for p in parts)
    # CSS inlined by premailer: the template's classes became style attributes.
    assert html.count('style="') > 20
    assert re.search(r'<h2[^>]*style="[^"]+"', html)
    # The plain part is text of its own, not HTML.
    assert "<p" not in text and "<a " not in text
    assert "Good morning, Ann Example." in text
    assert "Good morning, Ann Example." in html
    # Absolute URLs only.
    for url in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert url.startswith(("https://", "mailto:")), url


def test_the_name_is_escaped_in_the_html(factory):
    msg = parse(factory().build(Recipient(2, "x@example.org", "<b>Bold</b> & Co")))
    html = msg.get_body(("html",)).get_content()
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; Co" in html
    assert "<b>Bold</b>" not in html


def test_headers(factory, issue_file):
    subject = json.loads(issue_file.read_text(encoding="utf-8"))["subject"]
    f = factory()
    raw = f.build(ANN)
    msg = parse(raw)
    assert msg["From"].addresses[0].addr_spec == "news@example.org"
    assert msg["From"].addresses[0].display_name == "The Top Ten"
    assert msg["Subject"] == subject
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", msg["Message-ID"])
    assert "news.example.org" in msg["List-Id"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Reply-To"] is None
    assert msg["MIME-Version"] == "1.0"
    # Each header once, and the raw head is plain ASCII with CRLF line ends.
    head = raw.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")
    assert b"\n" not in head.replace(b"\r\n", b"")
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe"):
        assert len(msg.get_all(name)) == 1, name


def test_non_ascii_name_is_rfc_2047_encoded(factory):
    raw = factory().build(Recipient(2, "zoe@example.org", "Zoë Ünal"))
    to_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"To:"))
    assert b"=?utf-8?" in to_line.lower()
    to_line.decode("ascii")
    [to] = parse(raw)["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë Ünal", "zoe@example.org")


def test_message_id_is_stable_per_issue_and_recipient(factory):
    f = factory()
    first = parse(f.build(ANN))["Message-ID"]
    assert parse(factory().build(ANN))["Message-ID"] == first  # another run, same issue
    assert parse(f.build(Recipient(9, "ANN@example.org", "Ann")))["Message-ID"] == first
    assert parse(f.build(Recipient(3, "bob@example.org")))["Message-ID"] != first


def test_a_test_send_has_its_own_subject_and_message_id(factory):
    real = parse(factory().build(ANN))
    test = parse(factory(test=True).build(ANN))
    assert test["Subject"] == "[TEST] " + real["Subject"]
    assert test["Message-ID"] != real["Message-ID"]


def test_list_unsubscribe_carries_a_genuine_token(factory):
    msg = parse(factory().build(ANN))
    [link] = unsubscribe_links(msg)
    assert link.startswith("https://example.org/unsubscribe?t=")
    token = link.removeprefix("https://example.org/unsubscribe?t=")
    assert "&" not in token and "/" not in token
    assert read_token(SECRET, token) == "ann@example.org"
    # The same link in the footer of both parts.
    for part in msg.iter_parts():
        assert link in part.get_content()


def test_a_changed_or_forged_token_is_refused():
    token = make_token(SECRET, "ann@example.org")
    address, mac = token.split(".")
    tampered = address + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    with pytest.raises(InputError):
        read_token(SECRET, tampered)
    other = make_token(SECRET, "bob@example.org").split(".")[0]
    with pytest.raises(InputError):
        read_token(SECRET, other + "." + mac)  # bob's address with ann's MAC
    with pytest.raises(InputError):
        read_token("another-secret", token)
    with pytest.raises(InputError):
        read_token(SECRET, "not a token at all")


def test_mailto_unsubscribe_when_set(factory):
    msg = parse(factory(MAILER_UNSUBSCRIBE_MAILTO="unsubscribe@example.org").build(ANN))
    https, mailto = unsubscribe_links(msg)
    assert https.startswith("https://example.org/unsubscribe?t=")
    assert mailto.startswith("mailto:unsubscribe@example.org")
    token = https.rsplit("=", 1)[1]
    assert token in mailto


def test_reply_to_when_set(factory):
    msg = parse(factory(MAILER_REPLY_TO="Editors <editors@example.org>").build(ANN))
    assert msg["Reply-To"].addresses[0].addr_spec == "editors@example.org"


def test_list_id_setting_wins(factory):
    msg = parse(factory(MAILER_LIST_ID="Top Ten <topten.example.org>").build(ANN))
    assert msg["List-Id"] == "Top Ten <topten.example.org>"


def test_long_and_non_ascii_subject_survives_folding(factory, issue_file):
    data = json.loads(issue_file.read_text(encoding="utf-8"))
    data["subject"] = ("Dix histoires pour mardi — " + "é" * 40 + " and a long tail of words " * 3)[:150]
    issue_file.write_text(json.dumps(data), encoding="utf-8")
    raw = factory().build(ANN)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert parse(raw)["Subject"] == data["subject"]


VARIED = [
    ANN,
    Recipient(3, "bob@example.org"),
    Recipient(4, "zoe@example.org", "Zoë Ünal"),
    Recipient(5, "yamada@example.jp", "山田 太郎"),
    Recipient(6, "o'hara+news@example.org", 'Ann "Nan" O\'Hara & <Co>'),
    Recipient(7, "smith@example.org", "Smith, John (the elder)"),
    Recipient(8, "dot@example.org", ".Dot"),
    Recipient(9, "long@example.org", "Żółć " * 20),  # more than one encoded word
    # an address that makes the unsubscribe URL longer than a quoted-printable line
    Recipient(10, "a.rather.long.local.part.for.reader.number.12345@subdomain.newsroom-example.org", "Long"),
    # 32 characters: in the first URL below, the token's "." falls on column 76, the start of
    # the URL's second quoted-printable line
    Recipient(11, "dot-at-column-75-of-the-u@rl.org", "Dot Column"),
]


def decoded_to(head: bytes) -> tuple[str, str]:
    """The To header's display name and address, decoded as RFC 2047 says: the email package's
    address parser puts a space between adjacent encoded words, which are not part of the text."""
    [value] = re.findall(r"^To: (.*?)\r\n(?! )", head.decode("ascii") + "\r\n", re.M | re.S)
    display, address = parseaddr(value.replace("\r\n", ""))
    return str(make_header(decode_header(display))), address


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/unsubscribe/{token}",
        "https://example.org/unsubscribe?t={token}",  # "=" in it: escaped in the bodies
        "https://example.org/u?list=top&t={token}",  # "&" in it: escaped in the HTML
    ],
)
def test_every_part_decodes_to_the_issue_with_the_recipients_values(issue_file, tmp_path, monkeypatch, url):
    """Each recipient's message, read back with the email package: both parts are the issue as
    rendered, with that recipient's greeting, address and unsubscribe URL; no body line passes
    76 characters, no header line 998, and no line starts with "." (SMTP would stuff it)."""
    from mailer.render import greeting

    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ=BASE | {"MAILER_UNSUBSCRIBE_URL": url,
                                             "MAILER_UNSUBSCRIBE_MAILTO": "unsubscribe@example.org"})
    rendered = prepare(issue_file, settings).rendered
    factory = MessageFactory(rendered, settings)
    longest_url = 0
    dot_on_a_line_start = False
    for recipient in VARIED:
        raw = factory.build(recipient)
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = raw.split(b"\r\n")
        assert max(len(line) for line in head.split(b"\r\n")) <= 998
        assert max(len(line) for line in body.split(b"\r\n")) <= 76
        assert not any(line.startswith(b".") for line in lines)
        msg = parse(raw)
        assert decoded_to(head) == (recipient.name.strip(), recipient.email)
        https, mailto = unsubscribe_links(msg)
        token = make_token(SECRET, recipient.email)
        assert https == url.replace("{token}", token)
        assert mailto.endswith(f"?subject=unsubscribe%20{token}")
        assert read_token(SECRET, token) == recipient.email
        values = {"greeting": greeting(recipient.name), "email": recipient.email, "unsubscribe_url": https}
        text, html = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
        assert text == rendered.text.fill(values).replace("\r\n", "\n")
        assert html == rendered.html.fill(values).replace("\r\n", "\n")
        longest_url = max(longest_url, len(https))
        dot_on_a_line_start = dot_on_a_line_start or https[75:76] == "."
    assert longest_url > 76
    assert dot_on_a_line_start or "/unsubscribe/" not in url


def test_envelope_sender_names_each_recipient_however_often_asked(factory):
    """The factory remembers the VERP addresses it made last: each must still be that address's
    own, whatever the order and however many addresses come between."""
    from mailer.verp import envelope_sender, read_token

    f = factory(MAILER_BOUNCE_ADDRESS="bounces@example.org")
    issue = str(f.issue.date)
    emails = [f"reader{n}@example.org" for n in range(200)]
    for email in emails + emails[::-1] + emails[::7]:
        sender = f.envelope_sender(email)
        assert sender == envelope_sender("bounces@example.org", SECRET, issue, email)
        assert read_token(sender.partition("+")[2].partition("@")[0])[0] == issue
    assert len({f.envelope_sender(email) for email in emails}) == len(emails)
    # no VERP for a test send, nor without a bounce address
    test_send = factory(test=True, MAILER_BOUNCE_ADDRESS="bounces@example.org")
    assert test_send.envelope_sender(ANN.email) == "news@example.org"
    assert factory().envelope_sender(ANN.email) == "news@example.org"
