"""The one retry helper: transient errors retried within a time budget,
permanent ones and unknown ones raised at once."""

from __future__ import annotations

import pytest

from farm.retry import ServicePermanentError, ServiceUnavailableError, call_with_retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def classify(exc):
    if isinstance(exc, ConnectionError):
        return "transient"
    if isinstance(exc, PermissionError):
        return "permanent"
    return None


def failing(errors):
    calls = []

    def call():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return call, calls


def run(call, clock, budget_s=10.0, jitter=lambda: 0.5):
    return call_with_retry(call, service="store", what="put k", budget_s=budget_s, classify=classify,
                           sleep=clock.sleep, clock=clock, jitter=jitter)


def test_transient_errors_are_retried_until_the_call_succeeds():
    clock = FakeClock()
    call, calls = failing([ConnectionError("refused")] * 4)
    assert run(call, clock) == "done"
    assert len(calls) == 5
    # Exponential backoff: each pause doubles (jitter fixed at its middle here).
    assert clock.pauses == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_the_budget_bounds_the_retries_and_the_failure_says_transient():
    clock = FakeClock()
    call, calls = failing([ConnectionError("refused")] * 1000)
    with pytest.raises(ServiceUnavailableError) as raised:
        run(call, clock, budget_s=5.0)
    assert clock.now == pytest.approx(5.0)  # the last pause is cut to the budget
    assert max(clock.pauses) <= 2.0
    assert "store unavailable" in str(raised.value) and "refused" in str(raised.value)
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_jitter_spreads_pauses_between_half_and_one_and_a_half_times_the_delay():
    for jitter, expected in ((0.0, 0.025), (0.999, 0.07495)):
        clock = FakeClock()
        call, _ = failing([ConnectionError()])
        run(call, clock, jitter=lambda j=jitter: j)
        assert clock.pauses == pytest.approx([expected])


def test_permanent_errors_are_not_retried():
    clock = FakeClock()
    call, calls = failing([PermissionError("bad key")])
    with pytest.raises(ServicePermanentError) as raised:
        run(call, clock)
    assert len(calls) == 1 and clock.pauses == []
    assert "bad key" in str(raised.value)


def test_errors_that_are_not_the_service_s_are_raised_unchanged():
    clock = FakeClock()
    call, calls = failing([KeyError("bug")])
    with pytest.raises(KeyError):
        run(call, clock)
    assert len(calls) == 1
