"""Where returned messages are read from, behind one small interface: `messages()` yields each
raw message, `done(item)` says it was dealt with, `close()` lets go.

A Maildir folder, an mbox file, one message file, standard input (`-`, for an MTA's pipe), or
an IMAP mailbox over verified TLS. Only IMAP acts on `done`: the message is moved to the done
folder, never deleted; a local file is the operator's to keep or remove.
"""

from __future__ import annotations

import contextlib
import mailbox
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailer.config import Settings
from mailer.errors import ConfigError, InputError

IMAP_BATCH = 100


@dataclass
class Item:
    ref: Any  # where the source finds it again (a key, a UID)
    data: bytes


class Source(Protocol):
    name: str

    def messages(self) -> Iterator[Item]: ...

    def done(self, item: Item) -> None: ...

    def close(self) -> None: ...


class _Local:
    """Files on this machine: nothing is moved or removed."""

    name = ""

    def done(self, item: Item) -> None:
        pass

    def close(self) -> None:
        pass


class MessageFile(_Local):
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.path = path

    def messages(self) -> Iterator[Item]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the message ({exc.strerror or exc})") from None
        yield Item(self.path, data)


class StandardInput(_Local):
    name = "-"

    def messages(self) -> Iterator[Item]:
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:
            raise InputError(f"standard input: cannot read the message ({exc})") from None
        if data.strip():
            yield Item("-", data)


class Folder(_Local):
    """A Maildir folder or an mbox file, read with the standard library's `mailbox`."""

    def __init__(self, box: mailbox.Mailbox, name: str) -> None:
        self.box = box
        self.name = name

    def messages(self) -> Iterator[Item]:
        try:
            keys = sorted(self.box.keys())
            for key in keys:
                try:
                    data = self.box.get_bytes(key)
                except KeyError:  # removed by someone else meanwhile
                    continue
                yield Item(key, data)
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read the mailbox ({exc.strerror or exc})") from None


def open_source(text: str) -> Source:
    """A SOURCE from the command line: `-`, a Maildir folder, an mbox file, or one message."""
    if text == "-":
        return StandardInput()
    path = Path(text)
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise InputError(f"{text}: a folder that is not a Maildir (no cur/, new/ and tmp/ in it)")
        return Folder(mailbox.Maildir(path, factory=None, create=False), text)
    try:
        with path.open("rb") as f:
            start = f.read(5)
    except OSError as exc:
        raise InputError(f"{text}: cannot read it ({exc.strerror or exc})") from None
    if start == b"From ":
        return Folder(mailbox.mbox(path, factory=None, create=False), text)
    return MessageFile(path)


class Imap:
    """An IMAP mailbox over implicit TLS, certificate and host name verified."""

    def __init__(self, settings: Settings) -> None:
        missing = [n for n in ("inbox_imap_host", "inbox_imap_user", "inbox_imap_password")
                   if getattr(settings, n) is None]
        if missing:
            raise ConfigError("\n".join(
                f"MAILER_{n.upper()}: required for `mailer inbox` without a SOURCE, not set" for n in missing
            ))
        self.settings = settings
        self.name = f"imaps://{settings.inbox_imap_host}:{settings.inbox_imap_port}/{settings.inbox_imap_folder}"
        self.client: Any = None
        self._folder_ready = False

    def _fail(self, what: str, exc: BaseException) -> InputError:
        return InputError(f"{self.name}: {what} ({type(exc).__name__}: {exc})")

    def _connect(self) -> None:
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError, LoginError

        s = self.settings
        try:
            self.client = IMAPClient(
                s.inbox_imap_host, port=s.inbox_imap_port, ssl=True,
                ssl_context=ssl.create_default_context(), timeout=60,
            )
        except ssl.SSLCertVerificationError as exc:
            raise InputError(
                f"{self.name}: the server's certificate is not trusted ({exc.verify_message}); check "
                "MAILER_INBOX_IMAP_HOST, or add its CA to the system's store (or SSL_CERT_FILE)"
            ) from None
        except (OSError, IMAPClientError) as exc:
            what = "cannot connect; check MAILER_INBOX_IMAP_HOST and MAILER_INBOX_IMAP_PORT"
            raise self._fail(what, exc) from None
        try:
            self.client.login(s.inbox_imap_user, s.inbox_imap_password)
        except LoginError:
            raise InputError(f"{self.name}: login refused; check MAILER_INBOX_IMAP_USER and "
                             "MAILER_INBOX_IMAP_PASSWORD") from None
        except (OSError, IMAPClientError) as exc:
            raise self._fail("cannot log in", exc) from None
        try:
            self.client.select_folder(s.inbox_imap_folder)
        except (OSError, IMAPClientError) as exc:
            raise self._fail("cannot open MAILER_INBOX_IMAP_FOLDER", exc) from None

    def messages(self) -> Iterator[Item]:
        from imapclient.exceptions import IMAPClientError

        self._connect()
        try:
            uids = sorted(self.client.search(["ALL"]))
            for start in range(0, len(uids), IMAP_BATCH):
                batch = uids[start:start + IMAP_BATCH]
                # BODY.PEEK: reading leaves a message unseen for anyone who looks after us.
                fetched = self.client.fetch(batch, ["BODY.PEEK[]"])
                for uid in batch:
                    data = fetched.get(uid, {}).get(b"BODY[]")
                    if isinstance(data, bytes):
                        yield Item(uid, data)
        except (OSError, IMAPClientError) as exc:
            raise self._fail("reading the mailbox failed", exc) from None

    def done(self, item: Item) -> None:
        """Move it to the done folder (created when missing); never a deletion alone."""
        from imapclient.exceptions import IMAPClientError

        folder = self.settings.inbox_done_folder
        try:
            if not self._folder_ready:
                if not self.client.folder_exists(folder):
                    self.client.create_folder(folder)
                self._folder_ready = True
            if self.client.has_capability("MOVE"):
                self.client.move([item.ref], folder)
            else:  # copied first: the original goes only once the copy is there
                self.client.copy([item.ref], folder)
                self.client.delete_messages([item.ref])
                if self.client.has_capability("UIDPLUS"):
                    self.client.uid_expunge([item.ref])
        except (OSError, IMAPClientError) as exc:
            raise self._fail(f"cannot move a message to MAILER_INBOX_DONE_FOLDER {folder!r}", exc) from None

    def close(self) -> None:
        if self.client is None:
            return
        with contextlib.suppress(Exception):  # leaving; the server has saved its state
            self.client.logout()
        self.client = None
