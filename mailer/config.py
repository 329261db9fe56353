"""Settings: read from the environment and a `.env` file, each one checked at start."""

from __future__ import annotations

import io
import os
import re
import ssl
from collections.abc import Mapping
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailer.errors import ConfigError
from mailer.verp import LOCAL_PART_MAX, TOKEN_LENGTH

PREFIX = "MAILER_"
SECRET_FIELDS = {"smtp_password", "secret", "inbox_imap_password"}
# The placeholder in .env.example: good for trying it out, refused for a real send.
EXAMPLE_SECRET = "change-me-to-a-long-random-string"  # noqa: S105 - a placeholder, refused
MIN_SECRET_CHARS = 16
MAX_UNSUBSCRIBE_URL = 500


# Characters that have no business in a URL that goes into a header and an HTML attribute.
_URL_MARKUP = set("<>\"'`\\{}|^")


def _https_url(value: str | None, *, placeholder: str = "") -> str | None:
    """An absolute https URL with a host, no user name or password, a port that exists, and
    nothing that is markup or white space (it goes into headers and HTML)."""
    if value is None:
        return None
    parts = urlsplit(value)
    bare = value.replace(placeholder, "") if placeholder else value
    try:
        port = parts.port
    except ValueError:
        raise ValueError("must be an https URL (its port is not a number from 1 to 65535)") from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or any(c.isspace() or not c.isprintable() for c in value)
        or not value.isascii()
    ):
        raise ValueError("must be an https URL, in ASCII, without spaces")
    if _URL_MARKUP & set(bare):
        raise ValueError("must not contain markup or quotes (< > \" ' ` \\ { } | ^)")
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password (user@host)")
    if port == 0:
        raise ValueError("must be an https URL (port 0 does not exist)")
    return value


def _no_controls(value: str) -> None:
    """A value that goes into a header: no line break or other control character."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")


def check_address(address: str) -> str:
    """An address for a header the mailer writes itself: ASCII before the @, at most 64 octets
    there, and an IDN domain in punycode. A cheap check with the standard library, so that
    every command can check its settings without loading email-validator; the subscribers'
    addresses get the full one."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("an address needs a part before and after the @-sign")
    if not local.isascii():
        raise ValueError("non-ASCII characters before the @-sign are not supported")
    if len(local) > 64:
        raise ValueError("the part before the @-sign is longer than 64 octets")
    if any(c.isspace() or c in '<>()[]\\,;:"@' for c in local):
        raise ValueError("the part before the @-sign has characters an address cannot have there")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{domain!r} is not a valid domain name") from None
    if "." not in ascii_domain.strip(".") or ".." in ascii_domain or ascii_domain.startswith("."):
        raise ValueError(f"{domain!r} is not a valid domain name")
    return f"{local}@{ascii_domain}"


def _single_address(value: str | None) -> str | None:
    """`Name <address>`: the name may be in any script, the address is checked as a
    subscriber's is (an IDN domain becomes punycode; a non-ASCII local part is refused)."""
    if value is None:
        return None
    _no_controls(value)
    pairs = getaddresses([value])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        raise ValueError("must be one address, such as 'Name <news@example.org>'")
    address = pairs[0][1]
    try:
        checked = check_address(address)
    except ValueError as exc:
        raise ValueError(f"not a usable address: {exc}") from None
    head, found, tail = value.rpartition(address)
    return head + checked + tail if found else value


class Settings(BaseModel):
    """The settings in effect; field `x` is read from `MAILER_X`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_ca_file: Path | None = None
    smtp_timeout: float = Field(default=30.0, ge=1, le=600, allow_inf_nan=False)
    smtp_connections: int = Field(default=4, ge=1, le=100)
    rate_limit: float = Field(default=0.0, ge=0, le=100_000, allow_inf_nan=False)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_base_seconds: float = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)
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
    @field_validator("donate_url")
    @classmethod
    def _check_donate(cls, value: str | None) -> str | None:
        return _https_url(value)

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if 0 < value < 1 / 60:
            raise ValueError("must be 0 (no limit) or at least one message a minute (0.0167)")
        return value

    @field_validator("unsubscribe_url")
    @classmethod
    def _check_unsubscribe_url(cls, value: str | None) -> str | None:
        _https_url(value, placeholder="{token}")
        if value is None:
            return None
        if len(value) > MAX_UNSUBSCRIBE_URL:  # with the token, it must fit in one header line
            raise ValueError(f"must be at most {MAX_UNSUBSCRIBE_URL} characters")
        parts = urlsplit(value)
        if "{token}" not in parts.path + parts.query:
            raise ValueError("must contain {token} in its path or query, where the unsubscribe token goes")
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
        try:
            return check_address(address)
        except ValueError as exc:
            raise ValueError(f"must be a bare address, such as unsubscribe@example.org ({exc})") from None

    @model_validator(mode="before")
    @classmethod
    def _utf8_text(cls, values: object) -> object:
        """A value read from a non-UTF-8 environment holds lone surrogates: refuse it here,
        naming it, rather than fail to encode it in the middle of a run."""
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
                    raise ConfigError(f"{PREFIX}{str(key).upper()}: not UTF-8 text")
        return values

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
        if not name or not name.isascii():
            return list_id
        if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+", name):
            return f"{name} {list_id}"
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" {list_id}'  # a name with <, >, @ or the like, as a quoted phrase

    def require(self, *names: str) -> None:
        """Refuse to go on when a setting this command needs is not set."""
        missing = [f"{PREFIX}{n.rstrip('_').upper()}" for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError("\n".join(f"{m}: required for this command, not set" for m in missing))

    def real_send_problems(self) -> list[str]:
        """What a send over SMTP refuses, though a preview or an outbox run may go ahead."""
        problems = []
        if self.secret is not None and len(self.secret) < MIN_SECRET_CHARS:
            problems.append(
                f"{PREFIX}SECRET: {len(self.secret)} characters; a real send needs at least "
                f"{MIN_SECRET_CHARS} (a long random string), or unsubscribe links can be forged"
            )
        return problems

    def check_real_send(self) -> None:
        problems = self.real_send_problems()
        if problems:
            raise ConfigError("\n".join(problems))

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
        values.update(_read_env_file(env_file, environ))
    values.update(environ)
    raw: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith(PREFIX) and value.strip() != "":
            name = key[len(PREFIX):].lower()
            # a secret is taken as given: spaces around it may be part of it
            raw[name] = value if name in VERBATIM_FIELDS else value.strip()
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


# Values a stripped or truncated copy of would only show up as "authentication refused".
VERBATIM_FIELDS = {"smtp_password", "smtp_user", "secret"}
_ENV_LINE = re.compile(r"\s*(?:export\s+)?(MAILER_[A-Za-z0-9_]+)\s*=[ \t]*(.*?)\r?\n?\Z")


def _read_env_file(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The `.env` file through python-dotenv, refusing what it would silently change in a
    secret: an unquoted ` #...` (read as a comment) or spaces at the end (dropped)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the env file: {exc.strerror}") from None
    for number, text_line in enumerate(text.splitlines(keepends=True), start=1):
        match = _ENV_LINE.match(text_line)
        if not match or match[1] in environ:  # the environment's value wins anyway
            continue
        key, value = match[1], match[2]
        if key[len(PREFIX):].lower() not in VERBATIM_FIELDS or value[:1] in ("'", '"'):
            continue
        if re.search(r"\s#", value):
            raise ConfigError(f"{key}: {path} line {number}: the unquoted value holds ' #', where a "
                              ".env file starts a comment, so the rest would be dropped; quote the value")
        if value != value.rstrip():
            raise ConfigError(f"{key}: {path} line {number}: the unquoted value ends in spaces, which a "
                              ".env file drops; quote the value if they are part of it, else remove them")
    with io.StringIO(text) as stream:
        return {k: v for k, v in dotenv_values(stream=stream).items() if v is not None}
