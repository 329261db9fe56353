"""`mailer inbox` over IMAP against a real Dovecot on loopback (tests/dovecot/imap.sh): verified
TLS, processed messages moved to the done folder (created on first use), others left where
they were, nothing deleted.

It needs root and Debian's `dovecot-imapd`; without them these tests are skipped, unless
MAILER_REQUIRE_IMAP=1 (for CI), where they fail instead."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import require, started
from smtpserver import free_port
from test_inbox import FORMATS, SUBSCRIBERS, fill, run, sent_ids, suppressions, write_list

SCRIPT = Path(__file__).resolve().parent / "dovecot" / "imap.sh"
PASSWORD = "imap-test-password"


@dataclass
class ImapServer:
    base: Path
    port: int
    host: str = "localhost"
    user: str = "returns"
    password: str = PASSWORD

    @property
    def ca_file(self) -> Path:
        return self.base / "tls" / "ca.pem"

    def client(self):
        from imapclient import IMAPClient

        client = IMAPClient(self.host, port=self.port, ssl=True, timeout=30,
                            ssl_context=ssl.create_default_context(cafile=str(self.ca_file)))
        client.login(self.user, self.password)
        return client

    def settings(self, **extra: str) -> dict[str, str]:
        return {"MAILER_INBOX_IMAP_HOST": self.host, "MAILER_INBOX_IMAP_PORT": str(self.port),
                "MAILER_INBOX_IMAP_USER": self.user, "MAILER_INBOX_IMAP_PASSWORD": self.password,
                "SSL_CERT_FILE": str(self.ca_file), **extra}

    def contents(self) -> dict[str, list[bytes]]:
        """Every folder's messages' Message-IDs, deleted-flagged ones included."""
        client = self.client()
        try:
            found = {}
            for flags, _sep, name in client.list_folders():
                if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                    continue
                client.select_folder(name, readonly=True)
                uids = client.search(["ALL"])
                data = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
                field = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
                found[name] = sorted(message_id_line(v[field]) for v in data.values())
            return found
        finally:
            client.logout()

    def reset(self) -> None:
        from imapclient.exceptions import IMAPClientError

        client = self.client()
        try:
            names = [name for _flags, _sep, name in client.list_folders() if name != "INBOX"]
            for name in sorted(names, key=len, reverse=True):  # children first
                with contextlib.suppress(IMAPClientError):  # a parent may go with its child
                    client.delete_folder(name)
            client.select_folder("INBOX")
            uids = client.search(["ALL"])
            if uids:
                client.delete_messages(uids)
                client.expunge()
        finally:
            client.logout()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the test IMAP server needs root"
    if not Path("/usr/sbin/dovecot").exists() or not Path("/usr/lib/dovecot/imap").exists():
        return "the test IMAP server needs Debian's dovecot-imapd"
    if shutil.which("openssl") is None:
        return "the test IMAP server needs openssl"
    return None


@pytest.fixture(scope="module")
def dovecot() -> Iterator[ImapServer]:
    require(_unavailable(), "MAILER_REQUIRE_IMAP")
    port = free_port()
    with started(SCRIPT, "IMAP server", "mailer-imap-", str(port),
                 env={**os.environ, "IMAP_PASSWORD": PASSWORD}) as base:
        yield ImapServer(base, port)


@pytest.fixture
def imap(dovecot, env, monkeypatch) -> ImapServer:
    dovecot.reset()
    for key, value in dovecot.settings().items():
        monkeypatch.setenv(key, value)
    return dovecot


def message_id_line(raw: bytes) -> str:
    from email import message_from_bytes

    return str(message_from_bytes(raw)["Message-ID"])


def test_processed_messages_are_moved_and_others_left(imap, smtp, issue_file, tmp_path, capsys) -> None:
    write_list(tmp_path / "subscribers.csv", SUBSCRIBERS)
    assert run(capsys, "send", str(issue_file))[0] == 0
    ids = sent_ids(smtp)
    returned = [fill("gmail.eml", ids["gmail.user@gmail.example"][0]), fill("qmail.eml"),
                fill("feedback_rcpt.eml"), fill("soft.eml", ids["full@example.net"][0])]
    left = [fill("delayed.eml"), fill("reply.eml", ids["ann@example.org"][0])]
    client = imap.client()
    for raw in returned + left:
        client.append("INBOX", raw)
    client.logout()

    code, out, err = run(capsys, "inbox", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert {k: body[k] for k in ("hard", "soft", "complaint", "other")} == {
        "hard": 2, "soft": 1, "complaint": 1, "other": 2}
    assert suppressions(tmp_path / "state") == {
        "gmail.user@gmail.example": "bounced", FORMATS["qmail.eml"][2]: "bounced",
        "complainer@isp.example": "complained"}
    folders = imap.contents()
    assert folders["Processed"] == sorted(message_id_line(r) for r in returned)
    assert folders["INBOX"] == sorted(message_id_line(r) for r in left)

    # The next run reads only what was left, and changes nothing.
    before = suppressions(tmp_path / "state")
    code, out, _ = run(capsys, "inbox")
    assert code == 0 and out.splitlines()[-1].startswith("2 message(s) read: 0 hard, 0 soft, 0 complaint")
    assert suppressions(tmp_path / "state") == before
    assert imap.contents() == folders


def test_a_dry_run_moves_nothing(imap, smtp, issue_file, tmp_path, capsys) -> None:
    write_list(tmp_path / "subscribers.csv", [FORMATS["qmail.eml"][2]])
    assert run(capsys, "send", str(issue_file))[0] == 0
    client = imap.client()
    client.append("INBOX", fill("qmail.eml"))
    client.logout()
    code, out, _ = run(capsys, "inbox", "--dry-run")
    assert code == 0 and "would suppress" in out
    assert imap.contents() == {"INBOX": [message_id_line(fill("qmail.eml"))]}
    assert suppressions(tmp_path / "state") == {}


def test_without_a_ledger_nothing_is_read_or_moved(imap, capsys) -> None:
    """Run from the wrong folder: refused, rather than reading every bounce as about no one."""
    client = imap.client()
    client.append("INBOX", fill("qmail.eml"))
    client.logout()
    code, _, err = run(capsys, "inbox")
    assert code == 2 and "no ledger here" in err
    assert imap.contents() == {"INBOX": [message_id_line(fill("qmail.eml"))]}


def test_a_done_folder_of_another_name_is_created(
    imap, smtp, issue_file, tmp_path, capsys, monkeypatch
) -> None:
    write_list(tmp_path / "subscribers.csv", ["ann@example.org"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    monkeypatch.setenv("MAILER_INBOX_DONE_FOLDER", "Returns/Read")
    client = imap.client()
    client.append("INBOX", fill("exim.eml"))
    client.logout()
    assert run(capsys, "inbox")[0] == 0
    assert imap.contents()["Returns/Read"] == [message_id_line(fill("exim.eml"))]


@pytest.mark.parametrize("fault", ["password", "untrusted", "closed"])
def test_an_imap_mailbox_that_cannot_be_read_is_one_line_and_exit_2(
    imap, smtp, issue_file, tmp_path, capsys, monkeypatch, fault
) -> None:
    write_list(tmp_path / "subscribers.csv", ["ann@example.org"])
    assert run(capsys, "send", str(issue_file))[0] == 0
    if fault == "password":
        monkeypatch.setenv("MAILER_INBOX_IMAP_PASSWORD", "wrong-password")
    elif fault == "untrusted":
        monkeypatch.delenv("SSL_CERT_FILE")  # the test CA is trusted by nothing else
    else:
        monkeypatch.setenv("MAILER_INBOX_IMAP_PORT", str(free_port()))
    code, out, err = run(capsys, "inbox")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "wrong-password" not in err
    expected = {"password": "login refused", "untrusted": "certificate is not trusted",
                "closed": "cannot connect"}[fault]
    assert expected in lines[0], lines[0]
