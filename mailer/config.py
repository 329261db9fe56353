"""Settings: read from the environment and a `.env` file, each one checked at start."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mailer.errors import ConfigError
from mailer.verp import LOCAL_PART_MAX, TOKEN_LENGTH

PREFIX = "MAILER_"
SECRET_FIELDS = {"smtp_password", "secret", "inbox_imap_password"}
# The placeholder in .env.example: good for trying it out, refused for a real send.
EXAMPLE_SECRET = "change-me-to-a-long-random-string"  # noqa: S105 - a placeholder, refused


def _https_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError("must be an https URL")
    return value


def _no_controls(value: str) -> None:
    """A value that goes into a header: no line break or other control character."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")


def _single_address(value: str | None) -> str | None:
    if value is None:
        return None
    _no_controls(value)
    pairs = getaddresses([value])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        raise ValueError("must be one address, such as 'Name <news@example.org>'")
    return value


class Settings(BaseModel):
    """The settings in effect; field `x` is read from `MAILER_X`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_ca_file: Path | None = None
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_connections: int = Field(default=4, ge=1, le=64)
    rate_limit: float = Field(default=0.0, ge=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    list_id: str | None = None
    secret: str | None = None
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    donate_url: str | None = None
    subscribers: Path = Path("subscribers.csv")
    issues_dir: Path = Path("issues")
    state_dir: Path = Path("state")
    templates_dir: Path | None = None
    bounce_address: str | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8080, ge=1, le=65535)
    inbox_imap_host: str | None = None
    inbox_imap_port: int = Field(default=993, ge=1, le=65535)
    inbox_imap_user: str | None = None
    inbox_imap_password: str | None = None
    inbox_imap_folder: str = "INBOX"
    inbox_done_folder: str = "Processed"
    soft_bounce_limit: int = Field(default=3, ge=1, le=100)

    _check_from = field_validator("from_", "reply_to")(_single_address)
    _check_donate = field_validator("donate_url")(_https_url)

    @field_validator("unsubscribe_url")
    @classmethod
    def _check_unsubscribe_url(cls, value: str | None) -> str | None:
        _https_url(value)
        if value is not None and "{token}" not in value:
            raise ValueError("must contain {token} where the unsubscribe token goes")
        return value

    @field_validator("serve_host")
    @classmethod
    def _check_serve_host(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._:%-]+", value.strip("[]")):
            raise ValueError("must be a host name or IP address to listen on, such as 127.0.0.1")
        return value.strip("[]")

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _check_mailto(cls, value: str | None) -> str | None:
        if value is None:
            return None
        address = value.removeprefix("mailto:")
        if parseaddr(address)[1] != address or "@" not in address:
            raise ValueError("must be a bare address, such as unsubscribe@example.org")
        return address

    @field_validator("bounce_address")
    @classmethod
    def _check_bounce_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.rpartition("@")
        if parseaddr(value)[1] != value or not at or not local or not value.isascii():
            raise ValueError("must be a bare ASCII address, such as bounces@example.org")
        room = LOCAL_PART_MAX - TOKEN_LENGTH - 1  # bounces+TOKEN must fit in a local part
        if len(local) > room:
            raise ValueError(
                f"its local part must be at most {room} characters, to leave room for the VERP token"
            )
        return value

    @field_validator("inbox_imap_folder", "inbox_done_folder")
    @classmethod
    def _check_folder(cls, value: str) -> str:
        _no_controls(value)
        return value

    @field_validator("smtp_ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        try:  # now, not at the first connection: a bad file is a setting to fix, not an outage
            ssl.create_default_context().load_verify_locations(cafile=str(value))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{value} is not a PEM certificate file ({exc})") from None
        return value

    @field_validator("list_id")
    @classmethod
    def _check_list_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _no_controls(value)
        atom = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
        if not value.isascii() or not re.fullmatch(rf"[^<>]*<{atom}(\.{atom})+>", value):
            raise ValueError("must be 'Name <list-id.example.org>' in ASCII (RFC 2919)")
        return value

    @property
    def port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return 465 if self.smtp_security == "ssl" else 587

    @property
    def from_address(self) -> str:
        return parseaddr(self.from_ or "")[1]

    @property
    def list_id_header(self) -> str:
        """`List-Id`: the setting, or `Name <local.domain>` derived from `MAILER_FROM`."""
        if self.list_id:
            return self.list_id
        name, address = parseaddr(self.from_ or "")
        local, _, domain = address.partition("@")
        list_id = f"<{local}.{domain}>"
        return f"{name} {list_id}" if name.isascii() and name else list_id

    def require(self, *names: str) -> None:
        """Refuse to go on when a setting this command needs is not set."""
        missing = [f"{PREFIX}{n.rstrip('_').upper()}" for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError("\n".join(f"{m}: required for this command, not set" for m in missing))

    def masked(self) -> dict[str, str]:
        """Every setting as `MAILER_X -> value`, secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value:
                text = "********"
            elif value is None:
                text = "(not set)"
            else:
                text = str(value)
            shown[PREFIX + name.rstrip("_").upper()] = text
        shown["MAILER_SMTP_PORT"] = str(self.port)
        return shown


def load_settings(env_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env_file` (default `./.env` when present), the real environment winning."""
    environ = os.environ if environ is None else environ
    if env_file is None:
        env_file = Path(".env") if Path(".env").is_file() else None
    elif not env_file.is_file():
        raise ConfigError(f"{env_file}: env file not found")
    values: dict[str, str] = {}
    if env_file is not None:
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)
    raw: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith(PREFIX) and value.strip() != "":
            raw[key[len(PREFIX):].lower()] = value.strip()
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"{PREFIX}{field.upper()}: {_plain(error['msg'])}")
        raise ConfigError("\n".join(lines)) from None


def _plain(message: str) -> str:
    return message.removeprefix("Value error, ")
