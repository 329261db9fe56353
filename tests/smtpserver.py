"""A real SMTP server for the tests: aiosmtpd in this process, recording every message it
accepts and injecting the faults a test asks for, per recipient and per attempt."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    """A port the OS just gave out (aiosmtpd 1.4 cannot bind port 0 itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Faults, named in a recipient's script and consumed one per attempt:
#   "ok"           accept normally
#   "451" / "550" / "421" / "452 rate"  reply with that code at the end of DATA
#   "rcpt:550"     refuse at RCPT TO (any key of REPLIES after "rcpt:")
#   "drop-rcpt"    drop the connection at RCPT TO (before the final dot)
#   "drop-dot"     read the whole message, then drop the connection with no reply
#   "slow-dot:S"   wait S seconds before replying 250 (a client timeout makes it in doubt)
REPLIES = {
    "451": "451 4.3.0 Temporary local problem, try again",
    "452 rate": "452 4.7.1 Rate limit exceeded, slow down",
    "421": "421 4.7.0 Too many messages, closing connection",
    "550": "550 5.1.1 No such user here",
    "550 bare": "550 No such user here",  # no enhanced status code: whose fault is not said
    "554": "554 5.7.1 Message refused",
    "554 relay": "554 5.7.1 Relay access denied",
    "450 domain": "450 4.1.2 Recipient address rejected: Domain not found",
    "452 storage": "452 4.3.1 Insufficient system storage",
    "553 sender": "553 5.1.8 Sender address rejected: Domain not found",
    "530 auth": "530 5.7.0 Authentication required",
}


@dataclass
class Recorder:
    """The handler: what the server accepted, and the faults still to inject."""

    scripts: dict[str, list[str]] = field(default_factory=dict)
    default: Callable[[str, int], str] | None = None  # (recipient, attempt) -> fault
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Seconds to wait after accepting each message before replying 250: the message is
    # recorded as received first, as a real server that queued it and then stalled.
    delay: float = 0.0
    # Every session that got as far as RCPT TO, kept alive so that ids stay distinct.
    sessions: dict[int, object] = field(default_factory=dict)
    # Connections accepted at all, even those that never got to a message.
    opened: int = 0
    # The user names of every AUTH attempt, successful or not.
    logins: list[str] = field(default_factory=list)
    # A reply (a key of REPLIES) to every MAIL FROM, as a relay refusing the sender or
    # putting it off; None accepts.
    mail_reply: str | None = None
    # At most this many sessions at once; the next is greeted with 421 and closed.
    max_sessions: int | None = None
    live: int = 0
    turned_away: int = 0
    mail_commands: int = 0  # MAIL FROM commands received, accepted or not

    @property
    def connections(self) -> int:
        """How many SMTP sessions delivered (or tried to deliver) a message."""
        with self.lock:
            return len(self.sessions)

    @property
    def encrypted(self) -> list[bool]:
        """For each of those sessions, whether it ran over TLS."""
        with self.lock:
            return [bool(getattr(s, "encrypted", False)) for s in self.sessions.values()]

    def fault(self, recipient: str) -> str:
        with self.lock:
            self.attempts[recipient] += 1
            script = self.scripts.get(recipient)
            if script:
                return script.pop(0)
            if self.default is not None:
                return self.default(recipient, self.attempts[recipient])
            return "ok"

    pipelining: bool = True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        """Offer PIPELINING (RFC 2920) unless a test turns it off; aiosmtpd reads commands in
        order from the stream, so a pipelined client works against it."""
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        with self.lock:
            self.mail_commands += 1
        if self.mail_reply is not None:
            return REPLIES[self.mail_reply]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self.lock:
            self.sessions[id(session)] = session
        session.encrypted = server.transport.get_extra_info("ssl_object") is not None
        fault = self.fault(address)
        if fault == "drop-rcpt":
            server.transport.abort()
            return "250 OK"
        if fault.startswith("rcpt:"):
            return REPLIES[fault.removeprefix("rcpt:")]
        envelope.rcpt_tos.append(address)
        session.faults = getattr(session, "faults", {}) | {address: fault}
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        fault = "ok"
        for rcpt in envelope.rcpt_tos:
            fault = session.faults.get(rcpt, "ok")
        if fault == "drop-dot":
            with self.lock:  # the server did get it, as a real one might have queued it
                self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            server.transport.abort()
            return "250 OK"
        if fault.startswith("slow-dot:"):
            await asyncio.sleep(float(fault.split(":")[1]))
            with self.lock:
                self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK queued late"
        if fault in REPLIES:
            return REPLIES[fault]
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 2.0.0 OK queued"

    # -- reading what arrived -------------------------------------------------------------

    def received(self) -> Counter[str]:
        """Copies received per recipient address."""
        with self.lock:
            return Counter(r for _, rcpts, _ in self.messages for r in rcpts)

    def parsed(self) -> list[EmailMessage]:
        with self.lock:
            return [message_from_bytes(m, policy=policy.default) for _, _, m in self.messages]  # type: ignore[misc]


class _Session(SMTPServerProtocol):
    """aiosmtpd's protocol, turning away sessions over the recorder's `max_sessions`."""

    _counted: bool | None = None  # None until the first connection_made (STARTTLS makes another)

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        if self._counted is None:
            recorder = self.event_handler
            with recorder.lock:
                full = recorder.max_sessions is not None and recorder.live >= recorder.max_sessions
                if full:
                    recorder.turned_away += 1
                else:
                    recorder.live += 1
            self._counted = not full
            if full:
                transport.write(b"421 4.7.0 localhost Error: too many connections from 127.0.0.1\r\n")
                transport.close()
                return
        super().connection_made(transport)

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        if not self._counted:
            return  # turned away: aiosmtpd never saw this session
        with self.event_handler.lock:
            self.event_handler.live -= 1
        super().connection_lost(exc)


class _Controller(Controller):
    def __init__(self, handler: Recorder, port: int, **smtp_kwargs: object) -> None:
        self._smtp_kwargs = smtp_kwargs
        super().__init__(handler, hostname="127.0.0.1", port=port, server_hostname="localhost",
                         ready_timeout=10)

    def factory(self):  # type: ignore[override]
        with self.handler.lock:
            self.handler.opened += 1
        return _Session(self.handler, hostname="localhost", **self._smtp_kwargs)


@dataclass
class SMTPServer:
    """A running server: `recorder` holds what it got, `port` where it listens."""

    recorder: Recorder
    port: int
    controller: _Controller

    def stop(self) -> None:
        self.controller.stop()


def start_server(
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    credentials: tuple[str, str] | None = None,
    implicit_tls: bool = False,
    port: int | None = None,
) -> SMTPServer:
    """Start a server on loopback (on `port`, to restart one where it was, else a free one)."""
    recorder = Recorder()
    port = port or free_port()
    kwargs: dict[str, object] = {}
    if tls_context is not None and not implicit_tls:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = require_starttls
    if credentials is not None:

        def authenticate(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                with recorder.lock:
                    recorder.logins.append(auth_data.login.decode())
            ok = isinstance(auth_data, LoginPassword) and (
                auth_data.login.decode(), auth_data.password.decode()
            ) == credentials
            # handled=False: aiosmtpd then replies 535 itself; with the default (True) a
            # refused login got no reply at all and the client hung until its timeout.
            return AuthResult(success=ok, handled=False)

        kwargs["authenticator"] = authenticate
        # Under implicit TLS the whole session is encrypted, but aiosmtpd only knows about
        # STARTTLS: requiring TLS there would hide AUTH altogether.
        kwargs["auth_require_tls"] = tls_context is not None and not implicit_tls
    controller = _Controller(recorder, port, **kwargs)
    if implicit_tls:
        controller.ssl_context = tls_context
    controller.start()
    recorder.opened = 0  # start() made one connection of its own to see the server answer
    return SMTPServer(recorder, port, controller)
