"""`mailer serve` over real HTTP: the real command in a child process on a free port, and the
requests mail providers, link scanners and readers really make."""

from __future__ import annotations

import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import ledger_rows, write_subscribers

from mailer.ledger import Ledger
from mailer.tokens import make_token

SECRET = "serve-test-secret-0123456789"
ADDRESS = "ann@example.org"
ISSUE = "2026-11-24"


def suppressions(state: Path) -> dict[str, str]:
    """The suppression list, address -> reason, read straight from SQLite."""
    path = state / "ledger.sqlite3"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, reason FROM suppressions").fetchall())
    finally:
        db.close()


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str
    seconds: float


@dataclass
class Served:
    """A running `mailer serve`: its process, where it listens, and its log file."""

    process: subprocess.Popen[str]
    host: str
    port: int
    state: Path
    log: Path
    path_of: object  # token -> the request target (path and query) of the unsubscribe URL

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            started = time.monotonic()
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            text = response.read().decode("utf-8")
            return Response(response.status, response.headers, text, time.monotonic() - started)
        finally:
            connection.close()

    def url(self, address: str = ADDRESS, secret: str = SECRET) -> str:
        return self.path_of(make_token(secret, address))  # type: ignore[operator]

    def one_click(self, target: str) -> Response:
        """Exactly what Gmail sends (RFC 8058)."""
        return self.request("POST", target, b"List-Unsubscribe=One-Click",
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def resubscribe(self) -> Response:
        """The button on the page after an unsubscribe."""
        return self.request("POST", self.url(), b"action=resubscribe",
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8")


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update({
        "MAILER_SECRET": SECRET,
        "MAILER_UNSUBSCRIBE_URL": "https://example.org/unsubscribe/{token}",
        "MAILER_FROM": "The Top Ten <news@example.org>",
        "MAILER_STATE_DIR": str(tmp_path / "state"),
    })
    env.update(extra)
    return env


def start_serve(tmp_path: Path, env: dict[str, str], *args: str) -> Served:
    """`mailer serve --port 0`, waiting for the address it prints (generous under load)."""
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", "serve", "--port", "0", *args],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )
    assert process.stdout is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    match = re.match(r"listening on http://([\d.]+):(\d+)$", (first or [""])[0].strip())
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"mailer serve did not start: {first!r} {log.read_text()}")
    url = env["MAILER_UNSUBSCRIBE_URL"].split("example.org", 1)[1]
    return Served(process, match.group(1), int(match.group(2)), Path(env["MAILER_STATE_DIR"]), log,
                  lambda token: url.replace("{token}", token))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serve(tmp_path, child_env(tmp_path))
    yield server
    assert server.stop() == 0


@pytest.fixture
def served_query(tmp_path: Path) -> Iterator[Served]:
    """The token as a query value, among other parameters."""
    env = child_env(tmp_path, MAILER_UNSUBSCRIBE_URL="https://example.org/list/leave?list=topten&t={token}")
    server = start_serve(tmp_path, env)
    yield server
    assert server.stop() == 0


def multipart_body(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "----mailer-test-boundary-7d93"
    lines = []
    for name, value in fields.items():
        lines += [f"--{boundary}", f'Content-Disposition: form-data; name="{name}"', "", value]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode(), f"multipart/form-data; boundary={boundary}"


def assert_plain_200(response: Response) -> None:
    """200 with a page, never a redirect, never a cookie."""
    assert response.status == 200
    assert response.headers.get("Location") is None
    assert response.headers.get("Set-Cookie") is None
    assert response.headers.get_content_type() == "text/html"


# -- one-click, as the mailbox providers send it ----------------------------------------------


def test_gmail_one_click_post_unsubscribes_before_replying(served):
    target = served.url()
    response = served.one_click(target)
    assert_plain_200(response)
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}
    assert "You are unsubscribed" in response.body and ADDRESS in response.body
    # Repeating it changes nothing and is still a 200.
    again = served.one_click(target)
    assert_plain_200(again)
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}
    assert served.stop() == 0
    log = served.stderr()
    assert len(re.findall(rf"unsubscribe: {re.escape(ADDRESS)} ", log)) == 2  # one line per POST
    token = make_token(SECRET, ADDRESS)
    assert token not in log and token.split(".")[1] not in log


def test_multipart_one_click_unsubscribes(served):
    body, content_type = multipart_body({"List-Unsubscribe": "One-Click"})
    response = served.request("POST", served.url(), body, {"Content-Type": content_type})
    assert_plain_200(response)
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}


def test_a_chunked_one_click_unsubscribes(served):
    """A proxy or client that streams the body (Transfer-Encoding: chunked, no Content-Length)."""
    connection = http.client.HTTPConnection(served.host, served.port, timeout=30)
    try:
        connection.request("POST", served.url(), body=iter([b"List-Unsubscribe=", b"One-Click"]),
                           headers={"Content-Type": "application/x-www-form-urlencoded"},
                           encode_chunked=True)
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}


def test_an_empty_post_unsubscribes(served):
    response = served.request("POST", served.url(), b"", {"Content-Length": "0"})
    assert_plain_200(response)
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}


def test_the_page_button_unsubscribes_and_offers_to_resubscribe(served):
    """A reader following the footer link: GET the page, press its button as a browser would."""
    page = served.request("GET", served.url())
    assert_plain_200(page)
    assert suppressions(served.state) == {}
    form = re.search(r'<form method="post" action="">(.*?)</form>', page.body, re.S)
    assert form is not None, page.body
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(1)))
    response = served.request("POST", served.url(), urlencode(fields).encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert_plain_200(response)
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}
    assert 'value="resubscribe"' in response.body
    # Coming back to the link later: the page says so, and still changes nothing.
    later = served.request("GET", served.url())
    assert "You are unsubscribed" in later.body and 'value="resubscribe"' in later.body


# -- scanners and bad links change nothing ----------------------------------------------------


def test_a_scanners_get_and_head_change_nothing(served):
    get = served.request("GET", served.url())
    head = served.request("HEAD", served.url())
    assert get.status == head.status == 200
    assert ADDRESS in get.body and "Unsubscribe from The Top Ten?" in get.body
    assert head.body == ""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    assert get.headers.get("Set-Cookie") is None
    assert get.headers["Referrer-Policy"] == "no-referrer"  # the token must not leak onwards
    assert suppressions(served.state) == {}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_forged_or_truncated_token_is_400_and_changes_nothing(served, method):
    genuine = make_token(SECRET, ADDRESS)
    forged = make_token("another-secret-entirely", ADDRESS)
    for token in (forged, genuine[:-3], genuine.split(".")[0], "not%20a%20token", "%FF%FE", ""):
        target = served.path_of(token)
        response = served.one_click(target) if method == "POST" else served.request("GET", target)
        assert response.status == 400, token
        assert "not valid" in response.body
    assert suppressions(served.state) == {}


def test_addresses_are_escaped_in_every_page(served):
    odd = "o'brien&<x>@example.org"  # only a genuine token can carry it, but still
    page = served.request("GET", served.url(odd))
    assert page.status == 200
    assert "o&#39;brien&amp;&lt;x&gt;@example.org" in page.body
    assert "<x>" not in page.body
    done = served.one_click(served.url(odd))
    assert "&lt;x&gt;" in done.body and "<x>" not in done.body


# -- resubscribe ------------------------------------------------------------------------------


def test_resubscribe_lifts_an_unsubscribe(served):
    served.one_click(served.url())
    response = served.resubscribe()
    assert_plain_200(response)
    assert suppressions(served.state) == {}
    assert "Welcome back" in response.body
    assert re.search(rf"unsubscribe: {re.escape(ADDRESS)} resubscribed", served.stderr())


@pytest.mark.parametrize("reason", ["bounced", "complained"])
def test_resubscribe_never_lifts_a_bounce_or_a_complaint(served, reason):
    ledger = Ledger.in_dir(served.state)
    ledger.suppress(ADDRESS, reason, "from the test")
    ledger.close()
    page = served.request("GET", served.url())
    assert page.status == 200 and "Not receiving" in page.body
    response = served.resubscribe()
    assert response.status == 409
    assert suppressions(served.state) == {ADDRESS: reason}


def test_an_unsubscribe_after_a_bounce_lifted_puts_the_bounce_back(served):
    """The mailbox is gone (a hard bounce); the reader, from another address's browser or an
    old message, unsubscribes and then resubscribes. The bounce must not be forgotten: the
    address stays off the list, for the bounce, and the page says so."""
    ledger = Ledger.in_dir(served.state)
    ledger.suppress(ADDRESS, "bounced", "2026-11-24: 5.1.1 no such user")
    ledger.close()
    served.one_click(served.url())
    assert suppressions(served.state) == {ADDRESS: "unsubscribed"}
    response = served.resubscribe()
    assert response.status == 409 and "Welcome back" not in response.body
    assert suppressions(served.state) == {ADDRESS: "bounced"}
    ledger = Ledger.in_dir(served.state)
    try:
        bounce = (ADDRESS, "bounced", "2026-11-24: 5.1.1 no such user")
        assert [row[:3] for row in ledger.suppressed()] == [bounce]
    finally:
        ledger.close()


def test_a_bounce_for_an_unsubscribed_address_outlives_its_resubscribe(served):
    """The other order: unsubscribed first, then a bounce comes back for the address (a message
    sent before the unsubscribe). The bounce is kept with the unsubscribe, and a resubscribe
    leaves the address suppressed for it."""
    served.one_click(served.url())
    ledger = Ledger.in_dir(served.state)
    assert ledger.suppress(ADDRESS, "bounced", "5.1.1 returned, issue 2026-11-24") is False  # already off
    both = ("unsubscribed", "by one-click; bounced too: 5.1.1 returned, issue 2026-11-24")
    assert ledger.suppressed()[0][1:3] == both
    ledger.close()
    response = served.resubscribe()
    assert response.status == 409
    assert suppressions(served.state) == {ADDRESS: "bounced"}


def test_a_complaint_after_an_unsubscribe_is_never_lifted_by_a_resubscribe(served):
    """Unsubscribed on the page, then a spam complaint comes back for the same address
    (`mailer inbox`): the complaint replaces the unsubscribe, and the page's resubscribe no
    longer lifts the address."""
    served.one_click(served.url())
    ledger = Ledger.in_dir(served.state)
    assert ledger.suppress(ADDRESS, "complained", "a complaint, issue 2026-11-24") is True
    ledger.close()
    response = served.resubscribe()
    assert response.status == 409
    assert suppressions(served.state) == {ADDRESS: "complained"}


# -- everything else --------------------------------------------------------------------------


def test_other_paths_404_other_methods_405_big_bodies_413(served):
    assert served.request("GET", "/").status == 404
    assert served.request("GET", "/unsubscribe").status == 404
    assert served.request("GET", "/unsubscribe/" + make_token(SECRET, ADDRESS) + "/more").status == 404
    assert served.request("POST", "/elsewhere", b"List-Unsubscribe=One-Click").status == 404
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        response = served.request(method, served.url(), b"")
        assert response.status == 405, method
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    big = b"List-Unsubscribe=One-Click&pad=" + b"x" * (64 * 1024)
    response = served.request("POST", served.url(), big,
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 413
    assert suppressions(served.state) == {}  # nothing changed by any of them
    # exactly 64 KB is still fine
    fits = b"List-Unsubscribe=One-Click&pad="
    fits += b"x" * (64 * 1024 - len(fits))
    assert served.request("POST", served.url(), fits,
                          {"Content-Type": "application/x-www-form-urlencoded"}).status == 200


def test_healthz_says_ok_when_the_ledger_can_be_read_else_503(served):
    response = served.request("GET", "/healthz")
    assert (response.status, response.body) == (200, "ok\n")
    ledger = served.state / "ledger.sqlite3"
    db = sqlite3.connect(ledger, isolation_level=None)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    db.execute("PRAGMA user_version=999")  # as a newer mailer would leave it
    assert served.request("GET", "/healthz").status == 503
    db.execute(f"PRAGMA user_version={version}")
    db.close()
    assert served.request("GET", "/healthz").status == 200
    for path in served.state.iterdir():  # the state directory wiped, or not mounted
        path.unlink()
    assert served.request("GET", "/healthz").status == 503
    assert served.request("HEAD", "/healthz").status == 503
    assert served.request("POST", "/healthz").status == 405


def test_sigterm_stops_it_cleanly(served):
    assert served.request("GET", "/healthz").status == 200
    assert served.stop() == 0
    assert "Traceback" not in served.stderr()
    with pytest.raises(OSError):
        served.request("GET", "/healthz")


# -- the token in the query -------------------------------------------------------------------


def test_token_as_a_query_value(served_query):
    s = served_query
    target = s.url()
    assert target.startswith("/list/leave?list=topten&t=")
    assert s.request("GET", target).status == 200
    assert suppressions(s.state) == {}
    assert_plain_200(s.one_click(target))
    assert suppressions(s.state) == {ADDRESS: "unsubscribed"}
    # the parameters in another order are the same link
    token = make_token(SECRET, "bob@example.org")
    assert s.one_click(f"/list/leave?t={token}&list=topten").status == 200
    assert suppressions(s.state)["bob@example.org"] == "unsubscribed"
    assert s.one_click("/list/leave?list=topten").status == 400  # no token at all
    assert s.one_click(f"/unsubscribe/{token}").status == 404  # the path shape is not ours here


def test_the_page_follows_the_templates_folder_of_the_email(tmp_path):
    """MAILER_TEMPLATES_DIR with a page of its own look is used; one without falls back to the
    page installed with the mailer."""
    own = tmp_path / "our-look"
    own.mkdir()
    (own / "unsubscribe.html.j2").write_text("<p>Our own page for {{ address }}: {{ state }}</p>\n")
    server = start_serve(tmp_path, child_env(tmp_path, MAILER_TEMPLATES_DIR=str(own)))
    try:
        page = server.request("GET", server.url())
        assert page.body.strip() == f"<p>Our own page for {ADDRESS}: confirm</p>"
    finally:
        assert server.stop() == 0
    bare = tmp_path / "email-only"
    bare.mkdir()
    server = start_serve(tmp_path, child_env(tmp_path, MAILER_TEMPLATES_DIR=str(bare)))
    try:
        assert "Unsubscribe from The Top Ten?" in server.request("GET", server.url()).body
    finally:
        assert server.stop() == 0


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        ({"MAILER_SERVE_PORT": "eighty"}, [], "MAILER_SERVE_PORT"),
        ({"MAILER_SERVE_PORT": "70000"}, [], "MAILER_SERVE_PORT"),
        ({"MAILER_SERVE_HOST": "local host"}, [], "MAILER_SERVE_HOST"),
        ({"MAILER_SECRET": ""}, [], "MAILER_SECRET"),
        ({"MAILER_UNSUBSCRIBE_URL": ""}, [], "MAILER_UNSUBSCRIBE_URL"),
        ({}, ["--port", "99999"], "--port"),
        ({"MAILER_TEMPLATES_DIR": "no-such-folder"}, [], "MAILER_TEMPLATES_DIR"),
    ],
)
def test_bad_serve_settings_are_one_line_exit_2(tmp_path, extra, args, expected):
    env = child_env(tmp_path, **extra)
    done = subprocess.run([sys.executable, "-m", "mailer", "serve", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_ledger_that_is_not_one_is_one_line_exit_2(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.sqlite3").write_bytes(b"not a database at all" * 200)
    done = subprocess.run([sys.executable, "-m", "mailer", "serve"], env=child_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ledger.sqlite3: cannot open the ledger" in done.stderr and "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line_exit_2(served, tmp_path):
    env = child_env(tmp_path, MAILER_SERVE_PORT=str(served.port))
    done = subprocess.run([sys.executable, "-m", "mailer", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{served.port}" in done.stderr and "Traceback" not in done.stderr


def test_the_default_address_comes_from_the_settings(tmp_path):
    from smtpserver import free_port

    port = free_port()
    env = child_env(tmp_path, MAILER_SERVE_PORT=str(port))
    process = subprocess.Popen([sys.executable, "-m", "mailer", "serve"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"listening on http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


# -- during a send ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["one-click POST", "mailer unsubscribe"])
def test_an_unsubscribe_during_a_send_is_honoured_from_that_moment(env, smtp, issue_file, tmp_path, how):
    """A 2,000-recipient send against a slow server; an address a few hundred places ahead
    (already in the run's queue) unsubscribes: it is not sent, and the POST is answered at once."""
    count = 2000
    write_subscribers(tmp_path / "subscribers.csv", count)
    smtp.recorder.delay = 0.01  # about 100 messages/s per connection at best
    state = Path(env["MAILER_STATE_DIR"])
    serve_env = dict(os.environ, MAILER_SECRET="test-secret-16ch")  # the `env` fixture's settings
    served = start_serve(tmp_path, serve_env) if how == "one-click POST" else None
    send = subprocess.Popen([sys.executable, "-m", "mailer", "send", str(issue_file)], cwd=tmp_path,
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while sum(smtp.recorder.received().values()) < 100:
            assert send.poll() is None and time.monotonic() < deadline, "the send did not get going"
            time.sleep(0.05)
        target = f"reader{sum(smtp.recorder.received().values()) + 200}@example.org"
        if served is not None:
            response = served.one_click(served.path_of(make_token("test-secret-16ch", target)))
            assert response.status == 200
            assert response.seconds < 1.0, response.seconds  # the send does not hold it up
        else:
            done = subprocess.run([sys.executable, "-m", "mailer", "unsubscribe", target], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        assert target not in smtp.recorder.received()  # it was still to come when it unsubscribed
        _, err = send.communicate(timeout=300)
    finally:
        if send.poll() is None:
            send.kill()
        if served is not None:
            assert served.stop() == 0
    assert send.returncode == 0, err[-2000:]
    got = smtp.recorder.received()
    assert target not in got
    assert got == {f"reader{n}@example.org": 1 for n in range(count) if f"reader{n}@example.org" != target}
    rows = ledger_rows(state, ISSUE)
    assert rows[target]["status"] == "suppressed"
    assert f"{target}: on the suppression list since the run started; not sent" in err


def test_a_health_check_leaves_the_ledger_shared_and_whole(served, tmp_path):
    """Reading the ledger's header with a file handle of its own, then closing it, dropped every
    POSIX lock SQLite held on the file in that process: the next command to close the ledger
    deleted the WAL under the server, whose unsubscribes then went nowhere, and later corrupted
    the file."""
    env = child_env(tmp_path)
    assert served.request("GET", "/healthz").status == 200
    for command in (["suppressed"], ["unsubscribe", "bob@example.org"]):  # commands meanwhile
        subprocess.run([sys.executable, "-m", "mailer", *command], env=env, cwd=tmp_path,
                       check=True, capture_output=True)
    assert served.one_click(served.url()).status == 200
    expected = {"bob@example.org": "unsubscribed", ADDRESS: "unsubscribed"}
    assert suppressions(served.state) == expected  # seen by another process
    assert served.request("GET", "/healthz").status == 200
    assert served.stop() == 0
    db = sqlite3.connect(served.state / "ledger.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert dict(db.execute("SELECT key, reason FROM suppressions")) == expected
    finally:
        db.close()
