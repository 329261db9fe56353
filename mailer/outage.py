"""The outage rule: when refusals say more about the relay than about the addresses.

An outage is a relay problem, not a list of bad addresses, whatever the list's size. The run
stops (exit 75) and the recipients it refused go back to pending with their attempts not
counted, however many runs the outage lasts, when

- nothing has been delivered in this run and every recipient tried so far was refused, once
  OUTAGE_STREAK of them were (or all the pending ones, when there are fewer), or
- OUTAGE_STREAK recipients in a row were refused after earlier deliveries,

and those refusals span OUTAGE_DOMAINS domains or more (or every domain the pending list
has): refusals of every kind count, mailbox-specific ones included, since a relay calling
every address unknown is misconfigured, while a block of dead addresses at one domain is not
an outage. A relay that has throttled everything for THROTTLED_SECONDS with nothing
delivered is an outage too.

This module only decides; the delivery run applies the effects to the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

OUTAGE_STREAK = 10
OUTAGE_DOMAINS = 3
THROTTLED_SECONDS = 300.0

T = TypeVar("T")


class OutageWatch(Generic[T]):
    """Recipients refused since the last delivery, and whether they make an outage.

    Not thread-safe: the caller holds its own lock around every call.
    """

    def __init__(
        self, pending: int, domains: int, *, clock: Callable[[], float] = time.monotonic,
        throttled_seconds: float = THROTTLED_SECONDS,
    ) -> None:
        self.pending = pending  # recipients pending at the start of the run
        self.domains = domains  # domains among them, counted up to OUTAGE_DOMAINS
        self.clock = clock
        self.throttled_seconds = throttled_seconds
        self.delivered_before = False  # anything delivered in this run
        self.streak: dict[str, T] = {}  # recipient key -> the latest refusal, since the last delivery
        self.streak_domains: set[str] = set()
        self.last_delivery = clock()  # or the run's start

    def delivered(self) -> None:
        self.delivered_before = True
        self.last_delivery = self.clock()
        if self.streak:
            self.streak.clear()
            self.streak_domains.clear()

    def refused(self, key: str, domain: str, refusal: T) -> list[T] | None:
        """Count a refused recipient (once, however many attempts); when that makes an
        outage, the refusals to undo (the streak, which starts again), else None."""
        self.streak[key] = refusal
        self.streak_domains.add(domain)
        return self._take() if self.is_outage() else None

    def throttled(self) -> list[T] | None:
        """A throttling reply: when nothing was delivered for THROTTLED_SECONDS, an outage
        (the refusals to undo, perhaps none), else None."""
        if self.clock() - self.last_delivery < self.throttled_seconds:
            return None
        return self._take()

    def is_outage(self) -> bool:
        needed = OUTAGE_STREAK if self.delivered_before else max(1, min(OUTAGE_STREAK, self.pending))
        spread = min(OUTAGE_DOMAINS, max(1, self.domains))
        return len(self.streak) >= needed and len(self.streak_domains) >= spread

    def _take(self) -> list[T]:
        taken = list(self.streak.values())
        self.streak.clear()
        self.streak_domains.clear()
        return taken
