"""The unsubscribe endpoint: a WSGI app that turns a request into a ledger call and a page.

GET and HEAD only show a page, because mail scanners and link checkers fetch every URL in a
message; POST unsubscribes (RFC 8058 one-click, the page's button, or an empty body), and the
address is on the suppression list before the reply goes out. The token is read where
`{token}` stands in `$MAILER_UNSUBSCRIBE_URL`, a path segment or a query value; the scheme and
host are the HTTPS proxy's business. The token is never logged: it is as good as the address's
consent.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, TemplateError, select_autoescape

from mailer.config import Settings, load_settings
from mailer.errors import ConfigError, InputError, LedgerError
from mailer.ledger import FILE_NAME, Ledger
from mailer.render import DEFAULT_LIST_NAME, templates_dir
from mailer.tokens import read_token

log = logging.getLogger("mailer")

BODY_LIMIT = 64 * 1024
# How long a request waits for a send's write to the ledger to end. A send commits once per
# message, in microseconds, so a moment is plenty; longer means the ledger is stuck.
BUSY_TIMEOUT = 5.0
PAGE = "unsubscribe.html.j2"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}
# The page links nowhere and loads nothing: the token in its URL must not leak as a referrer.
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Robots-Tag", "noindex"),
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
]


class _Refused(Exception):
    """A request answered with an error page: (status, state of the page)."""

    def __init__(self, status: int, state: str, allow: str = "") -> None:
        super().__init__(state)
        self.status = status
        self.state = state
        self.allow = allow


@dataclass(frozen=True)
class TokenPlace:
    """Where the token stands in the unsubscribe URL: a path segment, or a query value."""

    path: str
    pattern: re.Pattern[str] | None = None  # the path's shape, when the token is in it
    query_name: str = ""
    affixes: tuple[str, str] = ("", "")  # around the token in the query value

    @classmethod
    def of(cls, url: str) -> TokenPlace:
        parts = urlsplit(url)
        path = unquote(parts.path) or "/"
        if "{token}" in path:
            before, _, after = path.partition("{token}")
            return cls(path, re.compile(re.escape(before) + "([^/]*)" + re.escape(after)))
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if "{token}" in value:
                before, _, after = value.partition("{token}")
                return cls(path, query_name=name, affixes=(before, after))
        raise ConfigError("MAILER_UNSUBSCRIBE_URL: must contain {token} in its path or query")

    def token(self, path: str, query: str) -> str | None:
        """The token in a request, "" when the path is ours but has none; None: not our path."""
        if self.pattern is not None:
            match = self.pattern.fullmatch(path)
            return None if match is None else match.group(1)
        if path != self.path:
            return None
        for name, value in parse_qsl(query, keep_blank_values=True):
            before, after = self.affixes
            if name == self.query_name and value.startswith(before) and value.endswith(after):
                return value[len(before) : len(value) - len(after)]
        return ""


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class UnsubscribeApp:
    """The WSGI app: one ledger connection shared by the server's threads."""

    def __init__(self, settings: Settings) -> None:
        settings.require("secret", "unsubscribe_url")
        self.secret = settings.secret or ""
        self.place = TokenPlace.of(settings.unsubscribe_url or "")
        self.list_name = parseaddr(settings.from_ or "")[0] or DEFAULT_LIST_NAME
        self.contact = parseaddr(settings.reply_to or settings.from_ or "")[1]
        self.ledger_path = settings.state_dir / FILE_NAME
        installed = str(resources.files("mailer.templates"))
        self.pages = Environment(
            # The email's lookup first (a page of the operator's own look, when their templates
            # folder has one), then the page installed with the mailer.
            loader=ChoiceLoader([FileSystemLoader(templates_dir(settings.templates_dir)),
                                 FileSystemLoader(installed)]),
            autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
        )
        try:
            self.pages.get_template(PAGE)
        except TemplateError as exc:
            raise InputError(f"templates: {PAGE}: {exc}") from None
        # not a database, or a folder it cannot write to: the ledger's own one-line error
        self.ledger = Ledger(self.ledger_path, busy_timeout=BUSY_TIMEOUT)

    def close(self) -> None:
        self.ledger.close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            reply = self.handle(environ, method)
        except _Refused as exc:
            reply = self.page(exc.status, exc.state)
            if exc.allow:
                reply.headers.append(("Allow", exc.allow))
        except (sqlite3.OperationalError, LedgerError) as exc:
            log.error("unsubscribe endpoint: the ledger cannot be used: %s", exc)
            reply = self.page(503, "busy")
            reply.headers.append(("Retry-After", "10"))
        except Exception as exc:  # never the server's traceback page, nor a log line with the URL
            log.error("unsubscribe endpoint: %s: %s", type(exc).__name__, exc)
            reply = Reply(500, b"internal error\n", "text/plain; charset=utf-8")
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
                   *_HEADERS, *reply.headers]
        start_response(f"{reply.status} {_REASONS[reply.status]}", headers)
        return [b""] if method == "HEAD" else [reply.body]

    def handle(self, environ: dict[str, Any], method: str) -> Reply:
        path = _request_path(environ)
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise _Refused(405, "method", "GET, HEAD")
            return self.health()
        token = self.place.token(path, environ.get("QUERY_STRING", ""))
        if token is None:
            raise _Refused(404, "not_found")
        if method not in ("GET", "HEAD", "POST"):
            raise _Refused(405, "method", "GET, HEAD, POST")
        form = _read_form(environ) if method == "POST" else {}
        try:
            address = read_token(self.secret, token)
        except InputError:
            raise _Refused(400, "invalid") from None
        if method != "POST":
            return self.show(address)
        if form.get("action") == "resubscribe":
            return self.resubscribe(address)
        return self.unsubscribe(address, _how(form))

    # -- what a request does --------------------------------------------------------------

    def show(self, address: str) -> Reply:
        """Changes nothing: says what a POST would do, or what was done before."""
        reason = self.ledger.suppression_reason(address)
        if reason is None:
            return self.page(200, "confirm", address)
        return self.page(200, "unsubscribed" if reason == "unsubscribed" else "blocked", address, reason)

    def unsubscribe(self, address: str, how: str) -> Reply:
        added = self.ledger.suppress(address, "unsubscribed", f"by {how}")
        log.info("unsubscribe: %s %s (%s)", address, "unsubscribed" if added else "already off the list", how)
        return self.page(200, "unsubscribed", address)

    def resubscribe(self, address: str) -> Reply:
        lifted = self.ledger.resubscribe(address)
        if lifted:
            log.info("unsubscribe: %s resubscribed (web page)", address)
            return self.page(200, "resubscribed", address)
        reason = self.ledger.suppression_reason(address)
        if reason is None:  # nothing to lift: it gets the list
            log.info("unsubscribe: %s resubscribe: already subscribed", address)
            return self.page(200, "resubscribed", address)
        log.info("unsubscribe: %s resubscribe refused (%s)", address, reason)
        return self.page(409, "blocked", address, reason)

    def health(self) -> Reply:
        """The ledger as a new reader would find it: there, a ledger, of a version we know."""
        try:
            Ledger.check(self.ledger_path)
        except (sqlite3.Error, InputError, OSError) as exc:  # LedgerError and a read-only mount
            log.error("healthz: the ledger cannot be read: %s", exc)
            return Reply(503, b"ledger unreadable\n", "text/plain; charset=utf-8")
        return Reply(200, b"ok\n", "text/plain; charset=utf-8")

    def page(self, status: int, state: str, address: str = "", reason: str = "") -> Reply:
        html = self.pages.get_template(PAGE).render(
            state=state, address=address, reason=reason, list_name=self.list_name, contact=self.contact,
        )
        return Reply(status, html.encode("utf-8"))


def _request_path(environ: dict[str, Any]) -> str:
    """The path as sent, decoded (PEP 3333 hands it over as latin-1 of the raw bytes)."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return raw.encode("latin-1", "replace").decode("utf-8", "replace") or "/"


def _read_form(environ: dict[str, Any]) -> dict[str, str]:
    """The POSTed fields, urlencoded or multipart; an empty body is an empty form."""
    import multipart  # only a POST needs it

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _Refused(400, "bad_request") from None
    if length > BODY_LIMIT:
        raise _Refused(413, "too_large")
    stream = environ["wsgi.input"]
    if length == 0 and environ.get("wsgi.input_terminated"):
        body = stream.read(BODY_LIMIT + 1)  # chunked: the server knows where it ends
    else:
        body = stream.read(length) if length > 0 else b""
    if len(body) > BODY_LIMIT:
        raise _Refused(413, "too_large")
    if not body:
        return {}
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type.lower().startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return {}  # some other body: a POST to the link all the same
    copy = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    try:
        forms, _files = multipart.parse_form_data(copy, strict=True, memory_limit=2 * BODY_LIMIT)
    except (multipart.MultipartError, ValueError, UnicodeDecodeError):
        raise _Refused(400, "bad_request") from None
    return {name: forms.get(name) for name in ("action", "List-Unsubscribe") if name in forms}


def _how(form: dict[str, str]) -> str:
    if form.get("List-Unsubscribe") == "One-Click":
        return "one-click"
    if form.get("action") == "unsubscribe":
        return "web page"
    return "web POST"


# -- `mailer.web:app` for any WSGI server ---------------------------------------------------

_app: UnsubscribeApp | None = None
_app_lock = threading.Lock()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The endpoint with the settings of the environment (and ./.env), made at the first request."""
    global _app
    if _app is None:
        with _app_lock:
            if _app is None:
                _app = UnsubscribeApp(load_settings())
    return _app(environ, start_response)


# -- `mailer serve` -------------------------------------------------------------------------


def make_server(application: UnsubscribeApp, host: str, port: int) -> Any:
    """A waitress server bound to host:port (0: any free port); run() serves until stopped."""
    import waitress.server  # only `mailer serve` needs it

    try:
        return waitress.server.create_server(
            application, host=host, port=port, threads=4, ident="mailer",
            # the app refuses over BODY_LIMIT itself; this keeps waitress from buffering more
            max_request_body_size=16 * BODY_LIMIT, channel_timeout=30,
        )
    except OSError as exc:
        raise ConfigError(
            f"MAILER_SERVE_HOST/MAILER_SERVE_PORT (or --host/--port): cannot listen on {host}:{port}: "
            f"{exc.strerror or exc}"
        ) from None


def listening(server: Any) -> list[str]:
    """The addresses a server listens on, as URLs."""
    pairs = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    return [f"http://[{h}]:{p}" if ":" in str(h) else f"http://{h}:{p}" for h, p in pairs]
