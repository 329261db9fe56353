"""The hub that drives every connection of a run from one thread (mailer/hub.py), on real
sockets and threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.config import load_settings
from mailer.delivery import Delivery
from mailer.hub import Hub, Signal
from mailer.issue import load_issue
from mailer.ledger import Ledger
from mailer.message import MessageFactory
from mailer.render import render_issue
from mailer.subscribers import Recipient
from mailer.transport import OutboxTransport

ISSUE = "2026-11-24"


def run(hub: Hub, *tasks) -> list[str]:
    stopped: list[str] = []
    hub.run(list(tasks), interrupted=lambda: stopped.append("interrupted"))
    return stopped


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of sockets: the first non-blocking, as a connection's under the hub."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_reply_wakes_its_waiter_while_the_others_go_on(pair):
    hub = Hub()
    a, b = pair
    seen: list[str] = []

    def reader() -> None:
        hub.readable(a, 5.0)
        seen.append(a.recv(100).decode())

    def writer() -> None:
        seen.append("writer ran")  # while the reader waits
        hub.sleep(0.05)
        b.send(b"250 ok")

    assert run(hub, reader, writer) == []
    assert seen == ["writer ran", "250 ok"]


def test_a_reply_that_never_comes_times_out(pair):
    hub = Hub()
    a, _ = pair
    outcome: list[object] = []

    def reader() -> None:
        started = time.monotonic()
        try:
            hub.readable(a, 0.2)
        except TimeoutError:
            outcome.append(time.monotonic() - started)

    run(hub, reader)
    assert len(outcome) == 1 and 0.15 <= outcome[0] < 5  # type: ignore[operator]


def test_a_blocking_call_runs_in_a_thread_while_the_others_go_on():
    hub = Hub()
    release = threading.Event()
    seen: list[object] = []

    def opener() -> None:
        def slow() -> str:
            release.wait(5)
            return threading.current_thread().name

        seen.append(hub.blocking(slow))
        with pytest.raises(ValueError, match="refused"):
            hub.blocking(lambda: (_ for _ in ()).throw(ValueError("refused")))
        seen.append("raised")

    def other() -> None:
        seen.append("other ran")  # while the opener's call is still running
        release.set()

    run(hub, opener, other)
    assert seen[0] == "other ran"
    assert seen[1] != threading.current_thread().name
    assert seen[2] == "raised"


def test_an_error_in_one_task_stops_the_run_but_the_others_finish():
    hub = Hub()
    finished: list[str] = []
    stop = threading.Event()

    def failing() -> None:
        raise KeyboardInterrupt

    def careful() -> None:
        while not stop.is_set():
            hub.sleep(0.01)
        finished.append("careful")

    with pytest.raises(KeyboardInterrupt):
        hub.run([failing, careful], interrupted=stop.set)
    assert finished == ["careful"]


def test_tasks_at_the_same_point_meet_at_the_end_of_the_round():
    hub = Hub()
    arrived: list[int] = []
    seen: list[int] = []

    def task(n: int):
        def body() -> None:
            arrived.append(n)
            hub.end_of_round()
            seen.append(len(arrived))

        return body

    run(hub, task(1), task(2), task(3))
    assert seen == [3, 3, 3]  # each went on only once all three had arrived


def test_a_signal_wakes_a_waiter_before_its_time_out():
    hub = Hub()
    signal = Signal(hub)
    waited: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        signal.wait(10.0)
        waited.append(time.monotonic() - started)

    def announcer() -> None:
        hub.sleep(0.05)
        signal.notify()

    run(hub, waiter, announcer)
    assert waited[0] < 5


def test_a_connection_closed_while_nobody_waits_does_not_make_the_hub_spin(pair):
    hub = Hub()
    a, b = pair

    def task() -> None:
        b.send(b"220 ready")
        hub.readable(a, 5.0)
        a.recv(100)
        b.close()  # the server hangs up while this connection is idle: `a` stays readable
        hub.sleep(0.5)

    started = time.process_time()
    run(hub, task)
    assert time.process_time() - started < 0.3  # polling a readable socket for 0.5 s would not


def test_a_socket_number_reused_after_forget_is_watched_again():
    hub = Hub()
    replies: list[bytes] = []

    def task() -> None:
        for _ in range(3):
            a, b = socket.socketpair()  # the numbers of the last pair, closed, come back
            a.setblocking(False)
            b.send(b"250 ok")
            hub.readable(a, 5.0)
            replies.append(a.recv(100))
            hub.forget(a)
            a.close()
            b.close()

    run(hub, task)
    assert replies == [b"250 ok"] * 3


def test_the_connections_final_dots_share_commits(env, issue_file, tmp_path: Path, monkeypatch):
    """Four connections of one run: the final-dot records of those at their dots in the same
    round go in one commit, each still committed before its message is delivered."""
    monkeypatch.setenv("MAILER_SMTP_CONNECTIONS", "4")
    settings = load_settings()
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.plan(ISSUE, [Recipient(n, f"r{n}@example.org") for n in range(200)])
    commits: list[str] = []
    ledger.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    outbox = tmp_path / "outbox"
    delivery = Delivery(
        ledger, ISSUE, MessageFactory(render_issue(load_issue(issue_file), settings), settings),
        lambda: OutboxTransport(outbox), settings, stop=threading.Event(),
    )
    try:
        tally = delivery.run()
        assert tally.sent == 200
        assert ledger.counts(ISSUE)["sent"] == 200
    finally:
        ledger.close()
    assert len(list(outbox.glob("*.eml"))) == 200
    assert len(commits) <= 200 / 2  # not one per message
