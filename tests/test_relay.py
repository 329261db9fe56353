"""The real Postfix relay itself: the tests that lean on it can trust what it reports."""

from __future__ import annotations

import pytest
from conftest import write_subscribers

from mailer.cli import main

pytestmark = pytest.mark.relay


@pytest.fixture
def relay_env(postfix, env, monkeypatch):
    """The usual test settings, pointed at the real relay instead of the test server."""
    postfix.reset()
    for key, value in postfix.settings("plain").items():
        monkeypatch.setenv(key, value)
    return postfix


def test_every_subscriber_delivered_once_through_postfix(relay_env, issue_file, tmp_path):
    write_subscribers(tmp_path / "subscribers.csv", 6)
    assert main(["send", str(issue_file)]) == 0
    relay_env.wait_idle()
    assert relay_env.delivered_count() == {f"reader{n}@example.org": 1 for n in range(6)}
    assert main(["send", str(issue_file)]) == 0  # a re-run resumes: nothing left to send
    relay_env.wait_idle()
    assert sum(relay_env.delivered_count().values()) == 6


def test_starttls_and_auth_against_postfix(relay_env, issue_file, tmp_path, monkeypatch):
    for key, value in relay_env.settings("auth").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAILER_SECRET", "a-long-enough-test-secret")
    write_subscribers(tmp_path / "subscribers.csv", 3)
    assert main(["send", str(issue_file)]) == 0
    relay_env.wait_idle()
    assert relay_env.delivered_count() == {f"reader{n}@example.org": 1 for n in range(3)}
    assert "sasl_username=mailer" in relay_env.log()


def test_gone_address_is_accepted_then_bounced_to_the_envelope_sender(relay_env):
    import smtplib

    with smtplib.SMTP("127.0.0.1", relay_env.ports["plain"], timeout=10) as smtp:
        smtp.sendmail("bounces@example.org", ["gone1@example.com"], b"Subject: x\r\n\r\nbody\r\n")
    relay_env.wait_for(lambda: len(relay_env.messages("bounces")) == 1, 30, "the bounce")
    bounce = relay_env.messages("bounces")[0].read_bytes()
    assert b"Action: failed" in bounce and b"Status: 5.1.1" in bounce
    assert b"gone1@example.com" in bounce
