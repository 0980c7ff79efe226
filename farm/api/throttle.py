"""Throttling of dashboard sign-ins and failed API token checks (issue 18).

What is counted are failures: failed sign-ins per client address and per user
name (known and unknown names alike), failed bearer-token checks per client
address. Every limit is tested before the credential is checked, so once a
count is full the next attempt is answered 429 with ``Retry-After`` without
touching the password hash or the token table, and the right password is
refused like a wrong one until the window frees a place. Successful requests
never count.

Flask-Limiter (one ``Limiter`` per app) holds the storage and the strategy:
Redis in distributed mode, so every api replica shares one count, and
``memory://`` under ``farm up``. Its route decorators count requests to a
view; here the count must follow the outcome of a check made inside a view
(``authenticate`` runs in every API view), so the limits are tested and hit
through the extension's rate-limiting strategy (``Limiter.limiter``). The
moving window counts exactly the failures of the last period, with no burst
at a window's edge.

The client address is ``request.remote_addr``: behind a reverse proxy every
client would share the proxy's address, so ``FARM_FORWARDED_FOR_HOPS`` makes
werkzeug's ProxyFix take it from ``X-Forwarded-For``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from farm.api.errors import error_response
from farm.settings import Settings

logger = logging.getLogger(__name__)

EXTENSION = "farm.throttle"
STRATEGY = "moving-window"
# A Redis that does not answer must not hold a sign-in for long (redis-py waits for ever by default).
REDIS_TIMEOUT_S = 1.0


class ThrottledError(Exception):
    """Too many failures: the attempt is refused unchecked; ``retry_after_s`` says when a place frees."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Count:
    """One count of failures: its limit and whose failures it counts."""

    limit: RateLimitItem
    identifiers: tuple[str, ...]


class Attempt:
    """A credential check the limits let through; tell it when the check failed."""

    def __init__(self, throttle: Throttle, counts: list[Count]) -> None:
        self._throttle = throttle
        self._counts = counts

    def failed(self) -> None:
        self._throttle.count_failure(self._counts)


class Throttle:
    def __init__(self, limiter: Limiter, settings: Settings) -> None:
        self.limiter = limiter
        self.prefix = settings.throttle_key_prefix
        self.sign_in_per_address = _parse_limit(settings, "throttle_sign_in_per_address")
        self.sign_in_per_name = _parse_limit(settings, "throttle_sign_in_per_name")
        self.token_failures_per_address = _parse_limit(settings, "throttle_token_failures_per_address")
        self._fallback: RateLimiter = MovingWindowRateLimiter(MemoryStorage())
        self._storage_down = False

    def sign_in(self, name: str | None) -> Attempt:
        """A dashboard sign-in by ``name`` (None for a token sign-in) from the
        request's address; ThrottledError when either has failed too often."""
        counts = [Count(self.sign_in_per_address, (self.prefix, "sign-in-address", get_remote_address()))]
        if name:
            # Hashed: any length and any character make one short key, and no user names sit in Redis.
            digest = hashlib.sha256(name.casefold().encode()).hexdigest()
            counts.append(Count(self.sign_in_per_name, (self.prefix, "sign-in-name", digest)))
        return self._attempt(counts, "too many failed sign-ins")

    def token_check(self) -> Attempt:
        """A bearer-token check from the request's address; ThrottledError when it has failed too often."""
        counts = [Count(self.token_failures_per_address, (self.prefix, "token-address", get_remote_address()))]
        return self._attempt(counts, "too many failed API token checks from this address")

    def count_failure(self, counts: list[Count]) -> None:
        for count in counts:
            self._call("hit", count)

    def _attempt(self, counts: list[Count], what: str) -> Attempt:
        full = [count for count in counts if not self._call("test", count)]
        if full:
            now = time.time()
            retry_after_s = max(max(math.ceil(self._call("get_window_stats", count).reset_time - now) for count in full), 1)
            raise ThrottledError(f"{what}; try again in {retry_after_s} s", retry_after_s)
        return Attempt(self, counts)

    def _call(self, method: str, count: Count):
        """The shared storage, or this process's own counts while it does not
        answer: a Redis outage must neither stop sign-ins nor lift throttling."""
        try:
            result = getattr(self.limiter.limiter, method)(count.limit, *count.identifiers)
        except StorageError as exc:
            if not self._storage_down:
                logger.warning("throttling storage unavailable (%s); counting in this process until it answers", exc)
            self._storage_down = True
            return getattr(self._fallback, method)(count.limit, *count.identifiers)
        if self._storage_down:
            logger.info("throttling storage answers again")
            self._storage_down = False
        return result


def storage_url(settings: Settings) -> str:
    """FARM_THROTTLE_STORAGE_URL; else the farm's Redis; else this process's memory (farm up)."""
    return settings.throttle_storage_url or settings.redis_url or "memory://"


def init_throttling(app: Flask, settings: Settings) -> Throttle:
    """Bind a Limiter with the farm's storage to ``app`` and answer ThrottledError as a JSON 429."""
    url = storage_url(settings)
    options: dict = {"wrap_exceptions": True}
    if url.startswith(("redis://", "rediss://")):
        options.update(socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    elif url == "memory://" and not settings.embedded:
        logger.warning("throttling counts are kept per process: api replicas do not share them "
                       "(set FARM_BROKER_URL to Redis or FARM_THROTTLE_STORAGE_URL)")
    limiter = Limiter(get_remote_address, storage_uri=url, storage_options=options, strategy=STRATEGY)
    limiter.init_app(app)
    if settings.forwarded_for_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.forwarded_for_hops)
    throttle = app.extensions[EXTENSION] = Throttle(limiter, settings)
    app.register_error_handler(ThrottledError, _throttled_answer)
    return throttle


def current_throttle() -> Throttle:
    return current_app.extensions[EXTENSION]


def _throttled_answer(exc: ThrottledError):
    response, status = error_response(429, exc.message, {"retry_after_s": exc.retry_after_s}, code="throttled")
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response, status


def _parse_limit(settings: Settings, field: str) -> RateLimitItem:
    value = getattr(settings, field)
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"FARM_{field.upper()}={value!r} is not a limit such as '10/minute' or '100 per hour'") from None
