"""Settings: every one is read from the environment and from an env file, the environment wins,
and a bad value stops the run with one line naming it before any connection is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_subscribers
from smtpserver import SMTPServer

from mailer.cli import main

# The SPEC's table of settings, every one of them.
SETTINGS = [
    "MAILER_SMTP_HOST",
    "MAILER_SMTP_PORT",
    "MAILER_SMTP_SECURITY",
    "MAILER_SMTP_USER",
    "MAILER_SMTP_PASSWORD",
    "MAILER_SMTP_CA_FILE",
    "MAILER_SMTP_TIMEOUT",
    "MAILER_SMTP_CONNECTIONS",
    "MAILER_RATE_LIMIT",
    "MAILER_MAX_ATTEMPTS",
    "MAILER_RETRY_BASE_SECONDS",
    "MAILER_FROM",
    "MAILER_REPLY_TO",
    "MAILER_LIST_ID",
    "MAILER_SECRET",
    "MAILER_UNSUBSCRIBE_URL",
    "MAILER_UNSUBSCRIBE_MAILTO",
    "MAILER_DONATE_URL",
    "MAILER_SUBSCRIBERS",
    "MAILER_ISSUES_DIR",
    "MAILER_STATE_DIR",
    "MAILER_TEMPLATES_DIR",
    "MAILER_BOUNCE_ADDRESS",
    "MAILER_SERVE_HOST",
    "MAILER_SERVE_PORT",
    "MAILER_INBOX_IMAP_HOST",
    "MAILER_INBOX_IMAP_PORT",
    "MAILER_INBOX_IMAP_USER",
    "MAILER_INBOX_IMAP_PASSWORD",
    "MAILER_INBOX_IMAP_FOLDER",
    "MAILER_INBOX_DONE_FOLDER",
    "MAILER_SOFT_BOUNCE_LIMIT",
]
SECRETS = {"MAILER_SMTP_PASSWORD", "MAILER_SECRET", "MAILER_INBOX_IMAP_PASSWORD"}
PASSWORD = "pw-Zq7-never-shown"
SECRET = "hmac-key-Xk93-never-shown"
ROOT = Path(__file__).resolve().parent.parent


def every_setting(ca_file: Path) -> dict[str, str]:
    """A value for every setting, none of them a default, each one recognisable in the output."""
    return {
        "MAILER_SMTP_HOST": "relay.example.net",
        "MAILER_SMTP_PORT": "2525",
        "MAILER_SMTP_SECURITY": "ssl",
        "MAILER_SMTP_USER": "topten-user",
        "MAILER_SMTP_PASSWORD": PASSWORD,
        "MAILER_SMTP_CA_FILE": str(ca_file),
        "MAILER_SMTP_TIMEOUT": "12.5",
        "MAILER_SMTP_CONNECTIONS": "7",
        "MAILER_RATE_LIMIT": "3.5",
        "MAILER_MAX_ATTEMPTS": "6",
        "MAILER_RETRY_BASE_SECONDS": "0.25",
        "MAILER_FROM": "Morning Desk <desk@example.com>",
        "MAILER_REPLY_TO": "letters@example.com",
        "MAILER_LIST_ID": "Morning <morning.example.com>",
        "MAILER_SECRET": SECRET,
        "MAILER_UNSUBSCRIBE_URL": "https://example.com/u?t={token}",
        "MAILER_UNSUBSCRIBE_MAILTO": "leave@example.com",
        "MAILER_DONATE_URL": "https://example.com/give",
        "MAILER_SUBSCRIBERS": "lists/readers.csv",
        "MAILER_ISSUES_DIR": "daily",
        "MAILER_STATE_DIR": "var/mailer",
        "MAILER_TEMPLATES_DIR": "our-look",
        "MAILER_BOUNCE_ADDRESS": "returns@example.com",
        "MAILER_SERVE_HOST": "0.0.0.0",
        "MAILER_SERVE_PORT": "8181",
        "MAILER_INBOX_IMAP_HOST": "imap.example.com",
        "MAILER_INBOX_IMAP_PORT": "10993",
        "MAILER_INBOX_IMAP_USER": "returns",
        "MAILER_INBOX_IMAP_PASSWORD": PASSWORD + "-imap",
        "MAILER_INBOX_IMAP_FOLDER": "INBOX/Returns",
        "MAILER_INBOX_DONE_FOLDER": "Returns-done",
        "MAILER_SOFT_BOUNCE_LIMIT": "5",
    }


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    import trustme

    path = tmp_path / "extra-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))  # a real CA: the file is checked at start
    return path


def config_output(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, str], str]:
    capsys.readouterr()
    assert main(["config", *args]) == 0
    out = capsys.readouterr().out
    shown = dict(line.split("=", 1) for line in out.splitlines())
    return shown, out


def expected(values: dict[str, str]) -> dict[str, str]:
    """What `mailer config` shows for `values`: numbers as numbers, secrets masked."""
    shown = dict(values)
    for key in ("MAILER_SMTP_TIMEOUT", "MAILER_RATE_LIMIT", "MAILER_RETRY_BASE_SECONDS"):
        shown[key] = str(float(values[key]))
    for key in SECRETS:
        shown[key] = "********"
    return shown


# -- every setting is read -------------------------------------------------------------------


def test_config_lists_exactly_the_settings_of_the_spec(clean, capsys):
    shown, _ = config_output(capsys)
    assert list(shown) == SETTINGS


def test_every_setting_is_read_from_the_environment(clean, ca_file, capsys, monkeypatch):
    values = every_setting(ca_file)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    shown, out = config_output(capsys)
    assert shown == expected(values)
    assert PASSWORD not in out and SECRET not in out


def test_every_setting_is_read_from_an_env_file(clean, ca_file, capsys):
    values = every_setting(ca_file)
    env_file = clean / "mailer.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    shown, out = config_output(capsys, "--env-file", str(env_file))
    assert shown == expected(values)
    assert PASSWORD not in out and SECRET not in out


def test_defaults_when_nothing_is_set(clean, capsys):
    shown, _ = config_output(capsys)
    assert shown["MAILER_SMTP_HOST"] == "(not set)"
    assert shown["MAILER_SMTP_PORT"] == "587"
    assert shown["MAILER_SMTP_SECURITY"] == "starttls"
    assert shown["MAILER_SMTP_CONNECTIONS"] == "4"
    assert shown["MAILER_MAX_ATTEMPTS"] == "4"
    assert shown["MAILER_RATE_LIMIT"] == "0.0"
    assert shown["MAILER_SUBSCRIBERS"] == "subscribers.csv"
    assert shown["MAILER_ISSUES_DIR"] == "issues"
    assert shown["MAILER_STATE_DIR"] == "state"


def test_ssl_defaults_to_port_465(clean, capsys, monkeypatch):
    monkeypatch.setenv("MAILER_SMTP_SECURITY", "ssl")
    shown, _ = config_output(capsys)
    assert shown["MAILER_SMTP_PORT"] == "465"


def test_the_environment_wins_over_the_env_file(clean, capsys, monkeypatch):
    env_file = clean / "mailer.env"
    env_file.write_text(
        "MAILER_SMTP_HOST=from-file.example.net\nMAILER_SMTP_CONNECTIONS=3\n", encoding="utf-8"
    )
    monkeypatch.setenv("MAILER_SMTP_HOST", "from-env.example.net")
    shown, _ = config_output(capsys, "--env-file", str(env_file))
    assert shown["MAILER_SMTP_HOST"] == "from-env.example.net"
    assert shown["MAILER_SMTP_CONNECTIONS"] == "3"  # not in the environment: the file's value


def test_env_file_defaults_to_dot_env_in_the_working_directory(clean, capsys):
    shown, _ = config_output(capsys)
    assert shown["MAILER_SMTP_HOST"] == "(not set)"
    (clean / ".env").write_text("MAILER_SMTP_HOST=dotenv.example.net\n", encoding="utf-8")
    shown, _ = config_output(capsys)
    assert shown["MAILER_SMTP_HOST"] == "dotenv.example.net"


def test_the_example_env_file_is_valid_and_safe(clean, capsys):
    shown, _ = config_output(capsys, "--env-file", str(ROOT / ".env.example"))
    assert shown["MAILER_SMTP_HOST"] == "(not set)"  # nothing leaves the machine by accident
    assert shown["MAILER_SECRET"] == "********"


def test_the_example_env_file_lists_every_setting_with_a_comment():
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert sorted(names) == sorted(SETTINGS)
    for name in SETTINGS:
        at = next(i for i, line in enumerate(lines) if line.startswith(name + "="))
        above = lines[:at]
        while above and above[-1].startswith("MAILER_"):  # a comment may cover a pair (USER, PASSWORD)
            above.pop()
        assert above and above[-1].startswith("# "), f"{name} has no comment"


def test_a_missing_env_file_given_explicitly_is_one_line_and_exit_2(clean, capsys):
    assert main(["config", "--env-file", "no-such.env"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "no-such.env" in lines[0] and "not found" in lines[0]


# -- a bad value: one line naming it, exit 2, no connection ------------------------------------


@pytest.fixture
def connections(smtp: SMTPServer) -> list[int]:
    """Every connection the test server accepts from now on (one entry per connection)."""
    made: list[int] = []
    factory = smtp.controller.factory

    def counting():  # the controller calls this for each connection it accepts
        made.append(1)
        return factory()

    smtp.controller.factory = counting  # type: ignore[method-assign]
    return made


@pytest.fixture
def ready(env, issue_file, tmp_path) -> Path:
    """A send that would work: the `env` settings, the issue, three subscribers."""
    write_subscribers(tmp_path / "subscribers.csv", 3)
    return issue_file


def test_a_good_send_does_connect(ready, smtp, connections):
    """The control for the tests below: the counter sees a real run's connections."""
    assert main(["send", str(ready)]) == 0
    assert connections
    assert sum(smtp.recorder.received().values()) == 3


BAD_VALUES = [
    ("MAILER_SMTP_PORT", "twenty-five"),
    ("MAILER_SMTP_PORT", "70000"),
    ("MAILER_SMTP_CONNECTIONS", "four"),
    ("MAILER_SMTP_CONNECTIONS", "0"),
    ("MAILER_MAX_ATTEMPTS", "3.5"),
    ("MAILER_MAX_ATTEMPTS", "lots"),
    ("MAILER_RATE_LIMIT", "-1"),
    ("MAILER_SMTP_TIMEOUT", "0"),
    ("MAILER_RETRY_BASE_SECONDS", "-2"),
    ("MAILER_SMTP_SECURITY", "tls"),
    ("MAILER_UNSUBSCRIBE_URL", "https://example.org/unsubscribe"),
    ("MAILER_UNSUBSCRIBE_URL", "http://example.org/unsubscribe/{token}"),
    ("MAILER_UNSUBSCRIBE_URL", "/unsubscribe/{token}"),
    ("MAILER_FROM", "The Top Ten"),
    ("MAILER_FROM", "a@example.org, b@example.org"),
    ("MAILER_FROM", "The Top Ten <news@example.org>\rBcc: all@example.org"),
    ("MAILER_REPLY_TO", "nobody"),
    ("MAILER_SMTP_CA_FILE", "no-such-ca.pem"),
    ("MAILER_DONATE_URL", "http://example.org/donate"),
    ("MAILER_UNSUBSCRIBE_MAILTO", "not-an-address"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_setting_stops_the_send_before_any_connection(
    ready, smtp, connections, capsys, monkeypatch, tmp_path, name, value
):
    monkeypatch.setenv(name, value)
    assert main(["send", str(ready)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert name + ":" in lines[0]
    assert connections == []
    assert smtp.recorder.messages == [] and not smtp.recorder.attempts
    assert not (tmp_path / "state").exists()  # no ledger either


@pytest.mark.parametrize(("name", "value"), BAD_VALUES[:4])
def test_a_bad_setting_in_the_env_file_is_named_too(clean, capsys, name, value):
    (clean / ".env").write_text(f"{name}={value}\n", encoding="utf-8")
    assert main(["config"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and name + ":" in lines[0]


def test_a_bad_setting_does_not_echo_the_secrets(ready, capsys, monkeypatch):
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "0")
    assert main(["send", str(ready)]) == 2
    captured = capsys.readouterr()
    assert PASSWORD not in captured.err + captured.out
    assert SECRET not in captured.err + captured.out


def test_send_without_a_host_is_exit_2_naming_it(ready, smtp, connections, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MAILER_SMTP_HOST")
    assert main(["send", str(ready)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "MAILER_SMTP_HOST" in lines[0]
    assert connections == [] and smtp.recorder.messages == []


def test_without_a_host_an_outbox_send_still_works(ready, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MAILER_SMTP_HOST")
    outbox = tmp_path / "outbox"
    assert main(["send", str(ready), "--outbox", str(outbox)]) == 0
    assert len(list(outbox.glob("*.eml"))) == 3


# -- mailer config ------------------------------------------------------------------------------


def test_config_masks_the_password_and_the_secret(env, capsys, monkeypatch):
    monkeypatch.setenv("MAILER_SMTP_USER", "topten-user")
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    capsys.readouterr()
    assert main(["config"]) == 0
    captured = capsys.readouterr()
    everything = captured.out + captured.err
    assert PASSWORD not in everything
    assert SECRET not in everything
    shown = dict(line.split("=", 1) for line in captured.out.splitlines())
    assert shown["MAILER_SMTP_PASSWORD"] == "********"
    assert shown["MAILER_SECRET"] == "********"
    assert shown["MAILER_SMTP_USER"] == "topten-user"  # not a secret: shown as it is
    assert shown["MAILER_SMTP_HOST"] == env["MAILER_SMTP_HOST"]
    assert set(shown) == set(SETTINGS)


def test_config_says_when_a_secret_is_not_set(clean, capsys):
    shown, _ = config_output(capsys)
    assert shown["MAILER_SMTP_PASSWORD"] == "(not set)"
    assert shown["MAILER_SECRET"] == "(not set)"


def test_the_example_placeholder_secret_is_refused_for_a_real_send(
    env, smtp, issue_file, tmp_path, monkeypatch, capsys
):
    from conftest import write_subscribers

    from mailer.config import EXAMPLE_SECRET

    write_subscribers(tmp_path / "subscribers.csv", 3)
    monkeypatch.setenv("MAILER_SECRET", EXAMPLE_SECRET)
    assert main(["send", str(issue_file)]) == 2
    assert "MAILER_SECRET: still the example's placeholder" in capsys.readouterr().err
    assert smtp.recorder.messages == []
    assert main(["send", str(issue_file), "--outbox", str(tmp_path / "outbox")]) == 0  # fine for trying


def test_a_ca_file_that_is_not_pem_is_a_setting_to_fix(env, smtp, issue_file, tmp_path, monkeypatch, capsys):
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("hello\n", encoding="utf-8")
    monkeypatch.setenv("MAILER_SMTP_CA_FILE", str(bogus))
    assert main(["send", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert "MAILER_SMTP_CA_FILE" in err and "not a PEM certificate file" in err


@pytest.mark.parametrize("value", ["no angle brackets", "Top Ten <x>\r\nBcc: a@example.org"])
def test_a_bad_list_id_is_one_line_naming_it(env, issue_file, monkeypatch, capsys, value):
    monkeypatch.setenv("MAILER_LIST_ID", value)
    assert main(["preview", str(issue_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MAILER_LIST_ID" in err
