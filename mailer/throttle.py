"""The pace of a run: an optional rate limit that throttling replies lower and successes restore."""

from __future__ import annotations

import time
from collections import deque


class Pacer:
    """A shared pace for all connections of a run (messages per second, 0 = as fast as allowed).

    A throttling reply halves the rate (from the configured limit, or from the rate observed
    just before, when there is none), another transient refusal lowers it by a tenth (a
    greylisting relay or a full mailbox must not slow a long list to a crawl); each success
    afterwards raises it a little, so the run speeds up again gradually rather than hitting
    the relay at full speed at once. The replies to messages already in flight when the relay
    started refusing say nothing new, so the rate is lowered at most once per HOLD seconds.

    It is never lowered below the rate the relay has been accepting over the last WINDOW
    seconds: a relay allowing so many messages per period (Postfix's anvil) refuses everything
    until the period ends, and halving once a second all that time would leave the run far
    slower than the relay allows.

    The connections use it from the run's one thread (hub.py), taking turns only where they
    wait: it needs no lock.
    """

    MIN_RATE = 0.5
    GENTLE = 0.9  # the factor for a transient refusal that is not throttling
    RECOVERY = 0.05  # fraction of the current rate regained per success
    HOLD = 1.0
    WINDOW = 30.0  # seconds of accepted messages that set the floor
    MIN_SPAN = 5.0  # the floor is never judged over less than this

    def __init__(self, limit: float) -> None:
        self.limit = limit or None
        self.rate = self.limit
        self._next = 0.0
        self._recent: deque[float] = deque(maxlen=50)
        self._accepted: deque[float] = deque(maxlen=10_000)  # bounded: the floor is a lower bound
        self._started = time.monotonic()
        self._unthrottled = 0.0  # the rate observed before the first throttle of an unlimited run
        self.throttled = 0
        self._lowered = -self.HOLD  # when the rate was last halved

    def delay(self) -> float:
        """Seconds to wait before the next message, its turn taken."""
        if self.rate is None:  # unpaced
            return 0.0
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + 1.0 / self.rate
        return at - now

    def success(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        self._accepted.append(now)
        if self.rate is None:
            return
        self.rate *= 1 + self.RECOVERY
        if self.limit is not None:
            self.rate = min(self.rate, self.limit)
        elif self.rate >= self._unthrottled:
            self.rate = None  # back to what the run did before throttling: no limit again

    def throttle(self, factor: float = 0.5) -> None:
        """Slow down: by half for a throttling reply, by `factor` for another transient one."""
        self.throttled += 1
        now = time.monotonic()
        if now - self._lowered < self.HOLD:
            return
        self._lowered = now
        if self.rate is None:
            self._unthrottled = self._observed()
        current = self.rate if self.rate is not None else self._unthrottled
        lowered = max(current * factor, min(current, self._accepted_rate(now)))
        self.rate = max(self.MIN_RATE, lowered)

    def _accepted_rate(self, now: float) -> float:
        """Messages accepted per second over the last WINDOW seconds (or since the start)."""
        while self._accepted and self._accepted[0] < now - self.WINDOW:
            self._accepted.popleft()
        span = max(self.MIN_SPAN, min(self.WINDOW, now - self._started))
        return len(self._accepted) / span

    def _observed(self) -> float:
        if len(self._recent) < 2:
            return 10.0
        span = self._recent[-1] - self._recent[0]
        return (len(self._recent) - 1) / span if span > 0 else 1000.0
