"""TLS and credentials against a real server: certificates and host names verified, no silent
fall-back to plain text, and the password kept out of every output."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from conftest import ledger_rows, write_subscribers
from smtpserver import SMTPServer, start_server

from mailer.cli import main

ISSUE = "2026-11-24"
USER, PASSWORD = "topten-relay", "correct-horse-battery-9f3a"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_env(env, tmp_path, ca_file, monkeypatch) -> Iterator:
    """Point the settings at a TLS server started by the test; three subscribers."""
    write_subscribers(tmp_path / "subscribers.csv", 3)
    monkeypatch.setenv("MAILER_SMTP_SECURITY", "starttls")
    monkeypatch.setenv("MAILER_SMTP_CA_FILE", str(ca_file))
    servers: list[SMTPServer] = []

    def use(server: SMTPServer, security: str = "starttls") -> SMTPServer:
        servers.append(server)
        monkeypatch.setenv("MAILER_SMTP_PORT", str(server.port))
        monkeypatch.setenv("MAILER_SMTP_SECURITY", security)
        return server

    yield use
    for server in servers:
        server.stop()


def everyone_pending(env) -> None:
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), ISSUE)
    assert len(rows) == 3
    assert {r["status"] for r in rows.values()} == {"pending"}


def test_starttls_with_the_ca_file_delivers_over_tls(tls_env, ca, issue_file):
    server = tls_env(start_server(tls_context=server_context(ca, "127.0.0.1"), require_starttls=True))
    assert main(["send", str(issue_file)]) == 0
    assert sum(server.recorder.received().values()) == 3
    assert server.recorder.encrypted and all(server.recorder.encrypted)


def test_a_certificate_from_an_untrusted_ca_is_refused(tls_env, issue_file, env, capsys):
    stranger = trustme.CA()  # not the one in MAILER_SMTP_CA_FILE
    server = tls_env(start_server(tls_context=server_context(stranger, "127.0.0.1")))
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "certificate" in err.lower() and "TLS" in err and "MAILER_SMTP_CA_FILE" in err
    assert server.recorder.opened == 1  # stopped at the first refusal
    assert server.recorder.messages == [] and server.recorder.connections == 0
    everyone_pending(env)


def test_a_host_name_mismatch_is_refused(tls_env, ca, issue_file, env, capsys):
    server = tls_env(start_server(tls_context=server_context(ca, "mail.example.org")))
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "mismatch" in err.lower() or "not valid for" in err.lower()
    assert "MAILER_SMTP_HOST" in err
    assert server.recorder.messages == []
    everyone_pending(env)


def test_a_server_without_starttls_is_refused_not_used_in_plain_text(
    tls_env, issue_file, env, capsys, monkeypatch
):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    server = tls_env(start_server(credentials=(USER, PASSWORD)))  # plain, offers AUTH
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "STARTTLS" in err and "MAILER_SMTP_SECURITY" in err
    assert server.recorder.messages == [] and server.recorder.connections == 0
    # Refused as a setup problem, at once: not retried on connection after connection.
    assert server.recorder.opened == 1
    assert server.recorder.logins == []  # the password never went out in the clear
    everyone_pending(env)


def _all_output_and_state(capsys, env) -> bytes:
    captured = capsys.readouterr()
    blob = (captured.out + captured.err).encode()
    for path in Path(env["MAILER_STATE_DIR"]).iterdir():  # the ledger, its WAL, the lock
        if path.is_file():
            blob += path.read_bytes()
    return blob


def test_auth_over_tls_works_and_the_password_is_never_shown(
    tls_env, ca, issue_file, env, capsys, monkeypatch
):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    server = tls_env(start_server(
        tls_context=server_context(ca, "127.0.0.1"), require_starttls=True, credentials=(USER, PASSWORD),
    ))
    server.recorder.scripts = {"reader1@example.org": ["451", "ok"], "reader2@example.org": ["550"]}
    assert main(["send", str(issue_file), "-v"]) == 1
    assert server.recorder.received() == {"reader0@example.org": 1, "reader1@example.org": 1}
    assert USER in server.recorder.logins
    assert main(["report", ISSUE]) == 0
    assert main(["config"]) == 0
    assert PASSWORD.encode() not in _all_output_and_state(capsys, env)


@pytest.mark.parametrize("password", [PASSWORD, "pässwörd-ÿ€-ß"], ids=["ascii", "non-ascii"])
def test_a_refused_password_is_exit_2_after_one_login_and_not_shown(
    tls_env, ca, issue_file, env, capsys, monkeypatch, password
):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", password)
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "4")
    server = tls_env(start_server(
        tls_context=server_context(ca, "127.0.0.1"), require_starttls=True, credentials=(USER, "other"),
    ))
    assert main(["send", str(issue_file)]) == 2
    blob = _all_output_and_state(capsys, env)
    assert b"MAILER_SMTP_USER and MAILER_SMTP_PASSWORD" in blob and b"535" in blob
    assert password.encode() not in blob
    for char in "äöÿ€ß":  # not one character of a non-ASCII password either
        assert char.encode() not in blob
    assert server.recorder.messages == []
    assert server.recorder.logins == [USER]  # one failed login, not one per connection
    assert server.recorder.opened == 1
    everyone_pending(env)


def test_a_non_ascii_password_logs_in_as_utf_8(tls_env, ca, issue_file, monkeypatch):
    """RFC 4616: AUTH PLAIN carries UTF-8; smtplib would refuse a non-ASCII password."""
    password = "pässwörd-ÿ€-ß"
    monkeypatch.setenv("MAILER_SMTP_USER", "rédaction")
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", password)
    server = tls_env(start_server(
        tls_context=server_context(ca, "127.0.0.1"), require_starttls=True,
        credentials=("rédaction", password),
    ))
    assert main(["send", str(issue_file)]) == 0
    assert sum(server.recorder.received().values()) == 3
    assert "rédaction" in server.recorder.logins


def test_credentials_in_plain_text_to_a_remote_host_are_refused_before_connecting(
    env, smtp, issue_file, tmp_path, capsys, monkeypatch
):
    write_subscribers(tmp_path / "subscribers.csv", 3)
    # 192.0.2.1 is TEST-NET-1, never routed: the refusal must come before any connection,
    # and with a 1 s timeout a connection attempt would also show in the time taken.
    monkeypatch.setenv("MAILER_SMTP_HOST", "192.0.2.1")
    monkeypatch.setenv("MAILER_SMTP_TIMEOUT", "1")
    monkeypatch.setenv("MAILER_SMTP_SECURITY", "none")
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    started = time.monotonic()
    assert main(["send", str(issue_file)]) == 2
    assert time.monotonic() - started < 5  # loose under load; a connect would time out first
    err = capsys.readouterr().err
    assert "MAILER_SMTP_SECURITY" in err and PASSWORD not in err
    assert not (Path(env["MAILER_STATE_DIR"]) / "ledger.sqlite3").exists()


def test_credentials_without_tls_are_allowed_on_loopback(tls_env, issue_file, monkeypatch):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    server = tls_env(start_server(credentials=(USER, PASSWORD)), security="none")
    assert main(["send", str(issue_file)]) == 0
    assert sum(server.recorder.received().values()) == 3
    assert USER in server.recorder.logins


def test_implicit_tls(tls_env, ca, issue_file, monkeypatch):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    context = server_context(ca, "127.0.0.1")
    server = tls_env(
        start_server(tls_context=context, implicit_tls=True, credentials=(USER, PASSWORD)), security="ssl"
    )
    assert main(["send", str(issue_file)]) == 0
    assert sum(server.recorder.received().values()) == 3
    assert all(server.recorder.encrypted)
    assert USER in server.recorder.logins


def test_implicit_tls_with_an_untrusted_certificate_is_refused(tls_env, issue_file, env, capsys):
    tls_env(start_server(tls_context=server_context(trustme.CA(), "127.0.0.1"), implicit_tls=True),
            security="ssl")
    assert main(["send", str(issue_file)]) == 2
    assert "certificate" in capsys.readouterr().err.lower()
    everyone_pending(env)


def test_a_relay_offering_no_auth_while_credentials_are_set_is_exit_2_naming_the_setting(
    tls_env, issue_file, env, capsys, monkeypatch
):
    monkeypatch.setenv("MAILER_SMTP_USER", USER)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    server = tls_env(start_server(), security="none")  # loopback, no AUTH offered
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "MAILER_SMTP_USER" in err and "no AUTH" in err and PASSWORD not in err
    assert server.recorder.opened == 1 and server.recorder.messages == []
    everyone_pending(env)


def test_implicit_tls_against_a_plain_server_is_exit_2_naming_the_setting(tls_env, issue_file, env, capsys):
    server = tls_env(start_server(), security="ssl")  # speaks plain SMTP: no TLS handshake
    assert main(["send", str(issue_file)]) == 2
    assert "MAILER_SMTP_SECURITY" in capsys.readouterr().err
    assert server.recorder.messages == []
    everyone_pending(env)
