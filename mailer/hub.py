"""One thread for every connection of a run.

Each connection is a greenlet: code written as if it blocked, which hands control to the hub
wherever it would wait (a reply, room in a socket, a timer, work to take) and is resumed when
that wait is over. The hub waits on every socket at once (epoll) and wakes once for all the
replies that came in meanwhile.

A thread per connection did the same with the kernel's help, but each reply then woke a thread
that queued for the interpreter lock; on a machine whose cores the relay keeps busy, that was
some twenty futex calls per message with four connections, and the CPU they cost was taken
from the relay.

Only what cannot wait this way runs in a short-lived thread (`Hub.blocking`): opening a
connection (name lookup, TCP, TLS handshake, login), so that a slow relay does not hold up the
connections already open.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

T = TypeVar("T")
_TIMED_OUT = object()
_START = object()
_COMPACT_AT = 1024  # timers kept before those of waits already over are dropped


class _Wait:
    """One greenlet's wait, ended by whichever comes first: its event or its time-out."""

    __slots__ = ("task", "over")

    def __init__(self, task: greenlet) -> None:
        self.task = task
        self.over = False


class Hub:
    """Runs tasks (plain functions) as greenlets in the calling thread until all have ended."""

    def __init__(self) -> None:
        self._ready: deque[tuple[_Wait | None, greenlet, object]] = deque()
        self._timers: list[tuple[float, int, _Wait]] = []
        self._seq = itertools.count()
        self._round: list[greenlet] = []  # waiting for everyone ready to have run
        self._watched: dict[int, _Wait | None] = {}  # socket fd -> who waits on it, if anyone
        self._interest: dict[int, int] = {}  # socket fd -> the events epoll watches it for
        self._finished: deque[tuple[_Wait, object, BaseException | None]] = deque()
        self._main: greenlet | None = None

    # -- running ------------------------------------------------------------------------

    def run(self, tasks: Iterable[Callable[[], None]], interrupted: Callable[[], None]) -> None:
        """Run every task to its end. The first exception a task lets out (or one raised while
        waiting, such as KeyboardInterrupt) calls `interrupted`, the others go on to their
        end, and it is raised then."""
        self._poll = select.epoll()
        # a thread's call (`blocking`) that has returned wakes the hub through this pair
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._poll.register(self._wake_in.fileno(), select.EPOLLIN)
        self._main = getcurrent()
        live = [greenlet(task, parent=self._main) for task in tasks]
        for task in live:
            self._ready.append((None, task, _START))
        error: BaseException | None = None
        try:
            while True:
                try:
                    self._run_ready()
                    if all(task.dead for task in live):
                        break
                    self._wait()
                except BaseException as exc:
                    if error is None:
                        error = exc
                        interrupted()
        finally:
            self._main = None
            self._poll.close()
            self._wake_in.close()
            self._wake_out.close()
        if error is not None:
            raise error

    def _run_ready(self) -> None:
        """Run everyone ready, and again everyone who waited for the end of that round."""
        ready = self._ready
        while ready:
            wait, task, value = ready.popleft()
            if wait is not None:
                if wait.over:
                    continue
                wait.over = True
            if value is _START:
                task.switch()
            else:
                task.switch(value)
            if not ready and self._round:
                self._end_round()

    def _wait(self) -> None:
        """Wait for a socket, a thread's call or a timer; who waited for it is ready then."""
        ready = self._ready
        timeout = -1.0
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        watched = self._watched
        for fd, _events in self._poll.poll(timeout):
            waiter = watched.get(fd)
            if waiter is None or waiter.over:
                if fd == self._wake_in.fileno():
                    self._threads_done()
                else:
                    # readable with nobody waiting (the server closed an idle connection):
                    # not watched until someone waits on it again, or the hub would spin
                    self._unwatch(fd)
                continue
            watched[fd] = None
            ready.append((waiter, waiter.task, None))
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, wait = heapq.heappop(timers)
            if not wait.over:
                ready.append((wait, wait.task, _TIMED_OUT))

    # -- waiting ------------------------------------------------------------------------

    def _park(self, wait: _Wait, timeout: float | None) -> object:
        """Give control to the hub until `wait` ends; _TIMED_OUT after `timeout` seconds."""
        if timeout is not None:
            self._time_out(wait, timeout)
        return self._switch()

    def _time_out(self, wait: _Wait, timeout: float) -> None:
        timers = self._timers
        if len(timers) >= _COMPACT_AT:  # most are waits long over (a reply came in time)
            timers[:] = [timer for timer in timers if not timer[2].over]
            heapq.heapify(timers)
        heapq.heappush(timers, (time.monotonic() + timeout, next(self._seq), wait))

    def _switch(self) -> object:
        main = self._main
        if main is None:
            raise RuntimeError("waiting outside a running hub")
        return main.switch()

    def readable(self, sock: socket.socket, timeout: float) -> None:
        """Wait until the socket has something to read (or was closed); TimeoutError after
        `timeout` seconds."""
        self._wait_for(sock, select.EPOLLIN, timeout)

    def writable(self, sock: socket.socket, timeout: float) -> None:
        self._wait_for(sock, select.EPOLLOUT, timeout)

    def _wait_for(self, sock: socket.socket, events: int, timeout: float) -> None:
        wait = _Wait(getcurrent())
        fd = sock.fileno()
        interest = self._interest
        if fd not in interest:
            self._poll.register(fd, events)
            interest[fd] = events
        elif interest[fd] != events:
            self._poll.modify(fd, events)
            interest[fd] = events
        self._watched[fd] = wait
        self._time_out(wait, timeout)
        ready = self._ready
        if ready or self._round:
            outcome = self._switch()
        else:
            # Nobody else can run before something happens: wait for it here, as the hub
            # would, and hand over only if it is not this task's own socket or time-out (two
            # greenlet switches saved per reply with one connection, and often with more).
            self._wait()
            if len(ready) == 1 and ready[0][0] is wait:
                outcome = ready.popleft()[2]
                wait.over = True
            else:
                outcome = self._switch()
        if outcome is _TIMED_OUT:
            self._watched[fd] = None
            raise TimeoutError("timed out")

    def forget(self, sock: socket.socket) -> None:
        """A socket about to be closed: its number may be reused by the next one."""
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd in self._interest:
            self._unwatch(fd)

    def _unwatch(self, fd: int) -> None:
        self._watched.pop(fd, None)
        del self._interest[fd]
        with contextlib.suppress(OSError):
            self._poll.unregister(fd)

    def sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Wait `seconds`, or less once `until()` is true (it is checked every half second)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if until is not None and until():
                return
            self._park(_Wait(getcurrent()), min(left, 0.5) if until is not None else left)

    def end_of_round(self) -> None:
        """Wait until every other task ready to run now has run and is waiting in turn: what
        they do meanwhile (their final-dot records) can then be done in one go."""
        if self._main is None:
            return
        if self._ready:
            self._round.append(getcurrent())
            self._main.switch()
        elif self._round:  # the last to come: the others go on after this one
            self._end_round()

    def _end_round(self) -> None:
        """Everyone waiting for the end of the round is ready again."""
        waiting, self._round = self._round, []
        self._ready.extend((None, task, None) for task in waiting)

    def blocking(self, call: Callable[[], T]) -> T:
        """Run `call` in a thread of its own, the other tasks going on meanwhile."""
        wait = _Wait(getcurrent())

        def run() -> None:
            result: object = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:
                error = exc
            self._finished.append((wait, result, error))
            with contextlib.suppress(OSError):  # else the hub is gone: nobody waits for this
                self._wake_out.send(b"\0")

        threading.Thread(target=run, name="mailer-open", daemon=True).start()
        outcome: Any = self._park(wait, None)
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome  # type: ignore[no-any-return]

    def _threads_done(self) -> None:
        try:
            while self._wake_in.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._finished:
            wait, result, error = self._finished.popleft()
            self._ready.append((wait, wait.task, result if error is None else _Failed(error)))


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Signal:
    """Tasks of one hub waiting for something another task announces (work to take, room in
    the queue); a wait can time out."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._waiting: deque[_Wait] = deque()

    def wait(self, timeout: float) -> None:
        wait = _Wait(getcurrent())
        self._waiting.append(wait)
        self.hub._park(wait, timeout)

    def notify(self) -> None:
        """Wake the longest waiting, if anyone waits."""
        while self._waiting:
            wait = self._waiting.popleft()
            if not wait.over:
                self.hub._ready.append((wait, wait.task, None))
                return

    def notify_all(self) -> None:
        waiting, self._waiting = self._waiting, deque()
        for wait in waiting:
            if not wait.over:
                self.hub._ready.append((wait, wait.task, None))
