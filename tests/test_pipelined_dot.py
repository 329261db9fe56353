"""The final dot and the next message's MAIL, RCPT and DATA in one write (RFC 2920): the
reply to the dot is still that message's own, its record is still written before the dot,
and a message announced but not sent after all is never delivered."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ledger_rows, write_subscribers

from mailer.cli import main
from mailer.config import load_settings
from mailer.errors import DeliveryError, Withheld
from mailer.message import MessageFactory
from mailer.transport import SMTPTransport
from mailer.verdicts import DOT

SENDER = "news@example.org"
MESSAGE = b"Subject: the issue\r\n\r\nTen stories.\r\n"


@pytest.fixture
def transport(env):
    transport = SMTPTransport(load_settings())
    transport.open()
    yield transport
    transport.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def announce(recipient: str, calls: list[str] | None = None):
    def following() -> tuple[str, str]:
        if calls is not None:
            calls.append("following")
        return SENDER, recipient

    return following


def test_the_next_envelope_goes_out_with_the_dot_and_the_reply_is_the_messages_own(transport, smtp):
    calls: list[str] = []
    reply = transport.send(
        SENDER, "a@example.org", MESSAGE, lambda: calls.append("recorded"), announce("b@example.org", calls)
    )
    assert reply.startswith("250 2.0.0 OK queued")
    assert calls == ["recorded", "following"]  # the record first, then what goes out with the dot
    # its RCPT reached the server with a's dot, though nothing more was sent for it
    wait_for(lambda: smtp.recorder.attempts["b@example.org"] == 1, "b's RCPT at the server")
    assert smtp.recorder.received() == {"a@example.org": 1}
    transport.send(SENDER, "b@example.org", MESSAGE, lambda: None)
    assert smtp.recorder.received() == {"a@example.org": 1, "b@example.org": 1}
    assert smtp.recorder.attempts["b@example.org"] == 1  # announced once, not again
    assert smtp.recorder.connections == 1


def test_a_refused_dot_is_that_messages_and_the_announced_one_goes_on(transport, smtp):
    smtp.recorder.scripts = {"a@example.org": ["554"]}
    with pytest.raises(DeliveryError) as refused:
        transport.send(SENDER, "a@example.org", MESSAGE, lambda: None, announce("b@example.org"))
    assert (refused.value.stage, refused.value.code) == (DOT, 554)
    transport.send(SENDER, "b@example.org", MESSAGE, lambda: None)
    assert smtp.recorder.received() == {"b@example.org": 1}
    assert smtp.recorder.connections == 1  # no reconnection: the announced MAIL began anew


def test_a_refused_announced_recipient_is_refused_at_its_own_send(transport, smtp):
    smtp.recorder.scripts = {"b@example.org": ["rcpt:550"]}
    transport.send(SENDER, "a@example.org", MESSAGE, lambda: None, announce("b@example.org"))
    with pytest.raises(DeliveryError) as refused:
        transport.send(SENDER, "b@example.org", MESSAGE, lambda: None, announce("c@example.org"))
    assert refused.value.code == 550
    transport.send(SENDER, "c@example.org", MESSAGE, lambda: None)
    assert smtp.recorder.received() == {"a@example.org": 1, "c@example.org": 1}


def test_an_announced_message_not_sent_after_all_is_never_delivered(transport, smtp):
    transport.send(SENDER, "a@example.org", MESSAGE, lambda: None, announce("b@example.org"))
    transport.send(SENDER, "c@example.org", MESSAGE, lambda: None, announce("d@example.org"))
    transport.close()  # the run stopped with d announced
    assert smtp.recorder.received() == {"a@example.org": 1, "c@example.org": 1}


def test_a_withheld_dot_announces_nothing(transport, smtp):
    calls: list[str] = []

    def withheld() -> None:
        raise Withheld("a@example.org: suppressed during the run")

    with pytest.raises(Withheld):
        transport.send(SENDER, "a@example.org", MESSAGE, withheld, announce("b@example.org", calls))
    assert calls == []
    assert smtp.recorder.attempts["b@example.org"] == 0
    transport.send(SENDER, "b@example.org", MESSAGE, lambda: None)
    assert smtp.recorder.received() == {"b@example.org": 1}


def test_a_dropped_connection_after_the_dot_leaves_the_announced_message_untried(transport, smtp):
    smtp.recorder.scripts = {"a@example.org": ["drop-dot"]}
    with pytest.raises(DeliveryError) as lost:
        transport.send(SENDER, "a@example.org", MESSAGE, lambda: None, announce("b@example.org"))
    assert lost.value.in_doubt
    transport.send(SENDER, "b@example.org", MESSAGE, lambda: None)  # on a new connection
    assert smtp.recorder.received() == {"a@example.org": 1, "b@example.org": 1}


def test_the_announced_message_is_prepared_after_the_write_and_before_the_reply(transport, smtp):
    """`meanwhile` runs once the dot and the next envelope are on their way, and the reply to
    the dot is still read and returned afterwards; nothing announced, nothing to prepare."""
    calls: list[str] = []

    def meanwhile() -> None:
        # the dot already went out: the server takes the message while this runs
        wait_for(lambda: smtp.recorder.received() == {"a@example.org": 1}, "a's dot at the server")
        calls.append("meanwhile")

    reply = transport.send(
        SENDER, "a@example.org", MESSAGE, lambda: calls.append("recorded"),
        announce("b@example.org", calls), meanwhile,
    )
    assert reply.startswith("250")
    assert calls == ["recorded", "following", "meanwhile"]
    calls.clear()
    transport.send(SENDER, "b@example.org", MESSAGE, lambda: None, lambda: None, meanwhile)
    assert calls == []  # no next message announced: nothing to prepare for it
    assert smtp.recorder.received() == {"a@example.org": 1, "b@example.org": 1}


def test_a_message_that_cannot_be_built_ahead_fails_in_its_own_attempt(env, issue_file, smtp, monkeypatch):
    """Building the next message while the server answers must not put the message before it
    in doubt when that build fails: the one before is recorded sent, and the failure stops
    the run at its own recipient, left pending for the next run."""
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "1")
    write_subscribers(Path(env["MAILER_SUBSCRIBERS"]), 3)
    build = MessageFactory.build

    def build_but_not_for_reader1(self, recipient):
        if recipient.email == "reader1@example.org":
            raise UnicodeError("cannot build this one")
        return build(self, recipient)

    monkeypatch.setattr(MessageFactory, "build", build_but_not_for_reader1)
    assert main(["send", str(issue_file)]) == 75
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), "2026-11-24")
    assert {key: row["status"] for key, row in rows.items()} == {
        "reader0@example.org": "sent", "reader1@example.org": "pending", "reader2@example.org": "pending",
    }
    assert smtp.recorder.received() == {"reader0@example.org": 1}
