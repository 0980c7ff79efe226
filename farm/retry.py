"""Transient until proven permanent: the one retry helper of the farm.

Every call a process makes to PostgreSQL, Redis or the object store at its
boundary goes through :func:`call_with_retry` with a classifier of that
service's errors. The caller sees either the call's result or one of two
classified failures:

- :class:`ServiceUnavailableError`: the error was transient (connection
  refused or dropped, a timeout, a 5xx) and stayed so for the whole time budget;
- :class:`ServicePermanentError`: retrying cannot help (bad credentials, a
  missing bucket); the message says what to fix.

Errors the classifier does not know are not service errors (a bug, bad input)
and are raised unchanged at once.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Literal, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Kind = Literal["transient", "permanent"]
Classifier = Callable[[BaseException], "Kind | None"]

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


class ServiceError(Exception):
    """A call to a service that did not succeed."""

    def __init__(self, service: str, what: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.what = what


class ServiceUnavailableError(ServiceError):
    """Transient errors outlasted the retry budget."""


class ServicePermanentError(ServiceError):
    """An error that no retry can fix."""


def call_with_retry(
    call: Callable[[], T],
    *,
    service: str,
    what: str,
    budget_s: float,
    classify: Classifier,
    explain: Callable[[BaseException], str] = str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run ``call`` until it succeeds, backing off (exponential, jittered)
    between tries for at most ``budget_s`` seconds of transient errors."""
    deadline = clock() + budget_s
    delay = FIRST_DELAY_S
    tries = 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as exc:  # classified below; unknown errors re-raised as they are
            kind = classify(exc)
            if kind is None:
                raise
            if kind == "permanent":
                raise ServicePermanentError(service, what, f"{service}: {what} failed: {explain(exc)}") from exc
            remaining = deadline - clock()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    service, what, f"{service} unavailable: {what} failed {tries} time(s) over {budget_s:.0f}s: {explain(exc)}"
                ) from exc
            # Jitter spreads the retries of many processes that lost the
            # service at the same moment (AWS architecture blog, "Exponential
            # backoff and jitter", 2015).
            pause = min(delay * (0.5 + jitter()), remaining)
            log = logger.warning if tries == 1 else logger.debug
            log("%s: %s failed (%s); retrying for up to %.1fs", service, what, _first_line(explain(exc)), remaining)
            sleep(pause)
            delay = min(delay * 2, MAX_DELAY_S)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
