"""Delivery behind one small interface: SMTP, or an outbox folder of `.eml` files.

`send()` calls `before_dot` at the last moment before the message becomes irrevocable (the
final "." over SMTP, the rename in the outbox), so the caller can record it durably first.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import ipaddress
import os
import re
import smtplib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mailer.config import EXAMPLE_SECRET, Settings
from mailer.errors import ConfigError, ConnectFailed, DeliveryError, storage_error
from mailer.hub import Hub
from mailer.verdicts import (
    AUTH,
    CONNECT,
    DATA,
    DOT,
    EHLO,
    MAIL,
    RCPT,
    STARTTLS,
    Verdict,
    answered_stage,
    verdict,
)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9@._+-]")
# What `_text` would change in an ASCII reply: str.split()'s other whitespace, runs of spaces,
# and a space at either end.
_UNUSUAL_SPACE = re.compile(rb"[\t\n\r\x0b\x0c\x1c-\x1f]|  |^ | $")
_MAX_REPLY = 65536  # bytes of a reply line not yet ended: more is not a server speaking SMTP
_SETTING_FOR_STAGE = {
    AUTH: "MAILER_SMTP_USER and MAILER_SMTP_PASSWORD",
    STARTTLS: "MAILER_SMTP_SECURITY",
}


def classify_reply(stage: str, code: int, text: str) -> DeliveryError:
    """A refusal of one message, judged by the verdict table."""
    return DeliveryError(
        f"{code} {text}".strip(), code=code, stage=stage, verdict=verdict(stage, code, text)
    )


class Transport(Protocol):
    """What a delivery run needs from a way of delivering."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def send(self, sender: str, recipient: str, message: bytes, before_dot: Callable[[], None]) -> str:
        """Deliver one message; return the server's reply, or raise DeliveryError."""
        ...


class Pipelining(Protocol):
    """A transport that can send the next message's envelope with a message's final dot."""

    @property
    def pipelines(self) -> bool: ...

    def send(
        self, sender: str, recipient: str, message: bytes, before_dot: Callable[[], None],
        following: Callable[[], tuple[str, str] | None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> str: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verify certificates and host names; the CA file is trusted in addition to the system's."""
    context = ssl.create_default_context()
    if settings.smtp_ca_file is not None:
        context.load_verify_locations(cafile=str(settings.smtp_ca_file))
    return context


def check_smtp_settings(settings: Settings) -> None:
    """Refuse, before any connection, settings that would leak credentials, cannot work, or
    would make unsubscribe links that can be forged (`Settings.check_real_send`)."""
    settings.require("smtp_host")
    if settings.secret == EXAMPLE_SECRET:
        raise ConfigError(
            "MAILER_SECRET: still the example's placeholder, which anyone can read; set a long "
            "random string before sending for real"
        )
    host = settings.smtp_host or ""
    if bool(settings.smtp_user) != bool(settings.smtp_password):
        raise ConfigError("MAILER_SMTP_USER and MAILER_SMTP_PASSWORD: set both or neither")
    if settings.smtp_user and settings.smtp_security == "none" and not is_loopback(host):
        raise ConfigError(
            "MAILER_SMTP_SECURITY: 'none' would send the password unencrypted to "
            f"{host}; use starttls or ssl"
        )
    settings.check_real_send()


class Transparent(bytes):
    """A message known to have no line starting with ".", ending in CRLF: nothing to stuff.

    Scanning 30 KB for lines to stuff costs more than building the message; the message
    factory knows the answer from its pre-encoded parts, so it says so with this type.
    """


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, and a CRLF before the final dot."""
    if isinstance(message, Transparent):
        return message
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


class SMTPTransport:
    """One SMTP connection, reused across messages and reopened when it drops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.smtp_host or ""
        self.smtp: smtplib.SMTP | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""  # replies received and not yet read, from `_start` on
        self._start = 0
        # (sender, recipient) whose MAIL, RCPT and DATA went out with the last final dot,
        # their replies not read yet
        self._announced: tuple[str, str] | None = None
        # Whether the server takes commands in groups (RFC 2920): read from its EHLO once per
        # connection, not three times per message.
        self._pipelining = False
        self._hub: Hub | None = None

    def attach(self, hub: Hub) -> None:
        """Wait through the hub, beside the run's other connections, instead of blocking."""
        self._hub = hub

    @property
    def pipelines(self) -> bool:
        """Whether the server takes commands in groups (RFC 2920), as far as known now."""
        return self._pipelining

    def open(self) -> None:
        hub = self._hub
        smtp = self._connect() if hub is None else hub.blocking(self._connect)
        self.smtp = smtp
        self._pipelining = smtp.has_extn("pipelining")
        self._sock = smtp.sock
        self._buffer, self._start = b"", 0
        if hub is None:
            self._kernel_timeouts(self._sock)
        elif self._sock is not None:
            self._sock.setblocking(False)

    def _connect(self) -> smtplib.SMTP:
        """A session open and ready for its first message: TLS and login done."""
        s = self.settings
        where = f"{self.host}:{s.port}"
        try:
            if s.smtp_security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, s.port, timeout=s.smtp_timeout, context=tls_context(s)
                )
            else:
                smtp = smtplib.SMTP(self.host, s.port, timeout=s.smtp_timeout)
            try:
                # The final dot goes out in a write of its own (after the ledger records it);
                # with Nagle's algorithm it would wait for the delayed ACK of the body, 40 ms.
                smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
                self._hello(smtp)
                if s.smtp_security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise ConnectFailed(
                            f"MAILER_SMTP_SECURITY: {where} does not offer STARTTLS; refusing to "
                            "send in plain text (set MAILER_SMTP_SECURITY=none only for a local relay)",
                            verdict=Verdict.CONFIG,
                        )
                    code, text = smtp.starttls(context=tls_context(s))
                    if code != 220:
                        raise self._session_refused(STARTTLS, code, text)
                    self._hello(smtp)
                if s.smtp_user and s.smtp_password:
                    self._login(smtp, s.smtp_user, s.smtp_password)
            except BaseException:
                smtp.close()
                raise
        except ConnectFailed:
            raise
        except ssl.SSLCertVerificationError as exc:
            mismatch = "mismatch" in str(exc.verify_message).lower()
            setting = "MAILER_SMTP_HOST" if mismatch else "MAILER_SMTP_CA_FILE"
            raise ConnectFailed(
                f"{setting}: {where}: TLS certificate not trusted: {exc.verify_message}",
                verdict=Verdict.CONFIG,
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError) as exc:
            # the connection dropped during the handshake: the network's or the relay's trouble
            raise ConnectFailed(f"{where}: TLS handshake cut short: {exc}") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(
                f"MAILER_SMTP_SECURITY: {where}: TLS failed: {exc.reason}", verdict=Verdict.CONFIG
            ) from None
        except smtplib.SMTPConnectError as exc:
            raise self._session_refused(CONNECT, exc.smtp_code, exc.smtp_error) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectFailed(f"{where}: cannot connect: {_scrub(str(exc), s.smtp_password)}") from None
        return smtp

    def _kernel_timeouts(self, sock: socket.socket | None) -> None:
        """A plain socket blocks, with the time-out kept by the kernel (`SO_RCVTIMEO`,
        `SO_SNDTIMEO`): a socket with a Python time-out polls before every call, two system
        calls where one does. A TLS socket keeps Python's time-out."""
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return
        seconds = self.settings.smtp_timeout
        interval = struct.pack("ll", int(seconds), int((seconds - int(seconds)) * 1_000_000))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        except (OSError, struct.error):
            return  # not on this system: Python's time-out stays
        sock.settimeout(None)

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        hub = self._hub
        if hub is None:
            try:
                sock.sendall(data)
            except BlockingIOError:  # SO_SNDTIMEO ran out
                raise TimeoutError("timed out") from None
            return
        timeout = self.settings.smtp_timeout
        view: bytes | memoryview = data
        sent = 0
        while sent < len(data):  # usually once: a message fits in the socket's buffer
            try:
                sent += sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):  # full: wait for room
                hub.writable(sock, timeout)
            except ssl.SSLWantReadError:  # TLS renegotiating
                hub.readable(sock, timeout)
            else:
                view = memoryview(data)[sent:]

    def _reply(self) -> tuple[int, bytes]:
        """The next reply (code, text), as smtplib's `getreply` parses it, from one buffer
        that usually holds all the replies of a pipelined group after one `recv`."""
        buffer, start, lines = self._buffer, self._start, []
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > _MAX_REPLY:
                    raise smtplib.SMTPResponseException(500, "Line too long.")
                sock = self._sock
                if sock is None:
                    raise smtplib.SMTPServerDisconnected("not connected")
                chunk = self._receive(sock)
                if not chunk:
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                buffer, start = buffer[start:] + chunk, 0
                continue
            line, start = buffer[start:end + 1], end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                self._buffer, self._start = buffer, start
                try:
                    code = int(line[:3])
                except ValueError:
                    code = -1
                return code, b"\n".join(lines)

    def _receive(self, sock: socket.socket) -> bytes:
        hub = self._hub
        if hub is None:
            try:
                return sock.recv(65536)
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise TimeoutError("timed out") from None
        timeout = self.settings.smtp_timeout
        while True:  # tried first: the reply is often in already, and then no switch is made
            try:
                return sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                hub.readable(sock, timeout)
            except ssl.SSLWantWriteError:
                hub.writable(sock, timeout)

    def _command(self, line: bytes) -> tuple[int, bytes]:
        self._write(line)
        return self._reply()

    def _hello(self, smtp: smtplib.SMTP) -> None:
        code, text = smtp.ehlo()
        if code != 250:
            code, text = smtp.helo()
            if code != 250:
                raise self._session_refused(EHLO, code, text)

    def _login(self, smtp: smtplib.SMTP, user: str, password: str) -> None:
        """AUTH PLAIN (RFC 4616), else LOGIN, with the credentials in UTF-8: smtplib encodes
        them as ASCII, failing on a non-ASCII password with an error quoting part of it."""
        where = f"{self.host}:{self.settings.port}"
        if not smtp.has_extn("auth"):
            raise ConnectFailed(
                f"MAILER_SMTP_USER: {where} offers no AUTH, but MAILER_SMTP_USER is set; unset it "
                "and MAILER_SMTP_PASSWORD for a relay that needs no login",
                verdict=Verdict.CONFIG,
            )
        mechanisms = smtp.esmtp_features["auth"].upper().split()
        name, secret = user.encode("utf-8"), password.encode("utf-8")
        if "PLAIN" in mechanisms:
            code, text = smtp.docmd("AUTH", "PLAIN " + _b64(b"\0" + name + b"\0" + secret))
        elif "LOGIN" in mechanisms:
            code, text = smtp.docmd("AUTH", "LOGIN")
            if code == 334:
                code, text = smtp.docmd(_b64(name))
            if code == 334:
                code, text = smtp.docmd(_b64(secret))
        else:
            raise ConnectFailed(
                f"MAILER_SMTP_USER: {where} offers AUTH {' '.join(mechanisms)}, but neither PLAIN "
                "nor LOGIN, the mechanisms this mailer speaks",
                verdict=Verdict.CONFIG,
            )
        if code != 235:
            raise self._session_refused(AUTH, code, text)

    def _session_refused(self, stage: str, code: int, text: bytes | str) -> ConnectFailed:
        """A refusal before any message, judged by the verdict table; our settings' fault
        names the setting to check."""
        reply = _scrub(f"{code} {_text(text)}", self.settings.smtp_password)
        where = f"{self.host}:{self.settings.port}"
        judged = verdict(stage, code, _text(text))
        if judged is Verdict.CONFIG:
            what = "the login" if stage == AUTH else stage.upper()
            return ConnectFailed(
                f"{_SETTING_FOR_STAGE.get(stage, 'MAILER_SMTP_HOST')}: {where} refused {what} "
                f"({reply}); check the setting (stopped at the first refusal: retrying would get "
                "the same answer, and repeated failed logins can lock the account)",
                verdict=judged,
            )
        return ConnectFailed(f"{where}: {stage} refused: {reply}", verdict=judged)

    def close(self) -> None:
        if self._announced is not None:
            self._drop()  # mid-DATA of an announced message: a QUIT would be message text
        if self.smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._command(b"QUIT\r\n")
            self._drop()

    def _drop(self) -> None:
        if self._hub is not None and self._sock is not None:
            self._hub.forget(self._sock)
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None
        self._pipelining = False
        self._sock = None
        self._buffer, self._start = b"", 0
        self._announced = None

    def _refused(self, stage: str, code: int, text: bytes) -> DeliveryError:
        error = classify_reply(stage, code, _text(text))
        if code == 421 or self.smtp is None:
            self._drop()  # 421: the server is closing this session
        elif self._announced is not None:
            pass  # the next message's MAIL, sent with the dot, began a new transaction already
        else:
            try:
                self._command(b"RSET\r\n")
            except (OSError, smtplib.SMTPException):
                self._drop()
        return error

    def _envelope(self, sender: str, recipient: str) -> None:
        """MAIL, RCPT and DATA up to the 354; in one round trip when the server pipelines,
        none when they went out with the previous message's final dot.

        Both addresses were checked before (no space, angle bracket or line break can be in
        them), so they go out as they are rather than through smtplib's address parser.
        """
        announced, self._announced = self._announced, None
        if not self._pipelining:
            for stage, command, accepted in ((MAIL, f"mail FROM:<{sender}>", (250,)),
                                             (RCPT, f"rcpt TO:<{recipient}>", (250, 251)),
                                             (DATA, "data", (354,))):
                code, text = self._command(f"{command}\r\n".encode("ascii"))
                if code not in accepted:
                    raise self._refused(answered_stage(stage, _text(text), sender, recipient), code, text)
            return
        # RFC 2920: DATA ends the group; every reply is read before acting on any of them.
        if announced is None:
            self._write(_envelope_group(sender, recipient))
        replies = []
        for stage in (MAIL, RCPT, DATA):
            code, text = self._reply()
            if code == 421:  # the server is closing: there are no more replies to read
                raise self._refused(stage, code, text)
            replies.append((code, text))
        (mail_code, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = replies
        if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
            self._command(b".\r\n")  # a server that said 354 anyway gets an empty message ended
        if mail_code != 250:
            raise self._refused(MAIL, mail_code, mail_text)
        if rcpt_code not in (250, 251):  # whose fault is read only when refused, not per message
            stage = answered_stage(RCPT, _text(rcpt_text), sender, recipient)
            raise self._refused(stage, rcpt_code, rcpt_text)
        if data_code != 354:
            raise self._refused(DATA, data_code, data_text)

    def send(
        self, sender: str, recipient: str, message: bytes, before_dot: Callable[[], None],
        following: Callable[[], tuple[str, str] | None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> str:
        """`following`, called once the dot is recorded: the (sender, recipient) of this
        connection's next message, if there is one now, whose MAIL, RCPT and DATA then go out
        in the same write as this final dot (RFC 2920 lets a group follow the end of the
        data). The reply to the dot is the first to come back, so it is this message's.
        `meanwhile`, called when a next message was announced, after that write and before
        reading the replies: work for the next message done while the server answers (it
        must not raise)."""
        if self._announced is not None and self._announced != (sender, recipient):
            self._drop()  # the message announced is not to be sent after all: never its dot
        if self.smtp is None:
            self.open()
        try:
            self._envelope(sender, recipient)
            self._write(dot_stuff(message))
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise DeliveryError(
                f"connection lost before the final dot: {exc}", stage=DATA, verdict=Verdict.TRANSIENT
            ) from None
        try:
            before_dot()
        except BaseException:
            self._drop()  # mid-DATA: a QUIT now would be read as message text, so just close
            raise
        announce = following() if following is not None and self._pipelining else None
        try:
            if announce is not None:
                self._announced = announce
                self._write(b".\r\n" + _envelope_group(*announce))
                if meanwhile is not None:
                    meanwhile()
            else:
                self._write(b".\r\n")
            code, text = self._reply()
        except (OSError, smtplib.SMTPException) as exc:
            # RFC 5321 4.5.3.2: the server may have accepted the message; resending risks a
            # second copy, so the caller records it as in doubt.
            self._drop()
            raise DeliveryError(
                f"no reply after the final dot: {exc}", stage=DOT, verdict=Verdict.IN_DOUBT
            ) from None
        if code != 250:
            raise self._refused(DOT, code, text)
        return f"{code} {_text(text)}"


def outbox_name(recipient: str) -> str:
    """The address as a file name; when characters had to be replaced, a short hash of the
    address keeps `a&b@x` and `a*b@x` from landing in the same file."""
    safe = _SAFE_NAME.sub("_", recipient)
    if safe == recipient:
        return safe
    return f"{safe}.{hashlib.sha256(recipient.lower().encode()).hexdigest()[:10]}"


class OutboxTransport:
    """Writes each message as an `.eml` file: the same run, with nothing leaving the machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def send(self, sender: str, recipient: str, message: bytes, before_dot: Callable[[], None]) -> str:
        target = self.folder / f"{outbox_name(recipient)}.eml"
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(b"Return-Path: <" + sender.encode() + b">\r\n" + message)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # no use trying the next one: stop
                raise storage_error(exc, self.folder) from None
            raise DeliveryError(
                f"cannot write {temporary}: {exc.strerror}", stage=DATA, verdict=Verdict.TRANSIENT
            ) from None
        try:
            before_dot()
        except BaseException:
            temporary.unlink(missing_ok=True)  # not to be delivered after all
            raise
        os.replace(temporary, target)
        return f"250 written to {target.name}"


def _envelope_group(sender: str, recipient: str) -> bytes:
    return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrub(text: str, secret: str | None) -> str:
    """Never a password in an error, even one a server or a library quoted back."""
    return text.replace(secret, "********") if secret else text


def _text(reply: bytes | str) -> str:
    """A reply's text on one line, its whitespace runs made single spaces."""
    if isinstance(reply, bytes):
        if reply.isascii() and not _UNUSUAL_SPACE.search(reply):
            return reply.decode("ascii")  # the usual reply, with nothing to change: no second pass
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())
