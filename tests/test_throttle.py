"""The pace of a run under throttling: lowered by refusals, never below what the relay has been
accepting, and recovered gradually by successes."""

from __future__ import annotations

import pytest

from mailer.throttle import Pacer


def pacer(limit: float) -> Pacer:
    p = Pacer(limit)
    p.HOLD = 0.0  # every refusal counts here; a run lowers the rate at most once a second
    return p


def test_throttling_halves_down_to_the_rate_the_relay_has_been_accepting():
    p = pacer(100)
    for _ in range(40):
        p.success()  # 40 accepted within the first seconds: judged over MIN_SPAN seconds
    floor = 40 / Pacer.MIN_SPAN
    rates = []
    for _ in range(10):
        p.throttle()
        rates.append(p.rate)
    assert rates[:3] == [50, 25, 12.5]
    assert rates[-1] == pytest.approx(floor)
    assert min(r for r in rates if r is not None) >= floor - 1e-9


def test_with_nothing_accepted_it_goes_down_to_the_minimum():
    p = pacer(100)
    for _ in range(20):
        p.throttle()
    assert p.rate == Pacer.MIN_RATE


def test_another_transient_refusal_slows_only_a_little_and_successes_recover():
    p = pacer(100)
    p.throttle(Pacer.GENTLE)
    assert p.rate == pytest.approx(90)
    for _ in range(5):
        p.success()
    assert p.rate == 100  # back to the configured limit, never above it


def test_an_unlimited_run_is_unlimited_again_once_recovered():
    p = pacer(0)
    assert p.rate is None
    for _ in range(10):
        p.success()
    p.throttle()
    assert p.rate is not None
    for _ in range(200):
        p.success()
    assert p.rate is None
