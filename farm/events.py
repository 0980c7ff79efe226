"""Wake-ups between processes: the scheduler is woken when work arrives or a
worker frees up, and API long-polls wake when a job changes.

Postgres stays the truth; these only shorten waits. With Redis (distributed
mode) they are pub/sub messages; embedded, in-process events plus short
polling of the database stand in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

logger = logging.getLogger(__name__)

SCHEDULER_CHANNEL = "farm:scheduler:wake"


def job_channel(job_id) -> str:
    return f"farm:job:{job_id}"


class Events(Protocol):
    def wake_scheduler(self) -> None: ...

    def scheduler_waiter(self) -> Callable[[float], bool]:
        """A function that blocks up to N seconds and returns True if woken."""

    def job_changed(self, job_id) -> None: ...

    def wait_job(self, job_id, is_done: Callable[[], bool], timeout: float) -> bool:
        """Block until ``is_done()`` holds or ``timeout`` passes; returns is_done()."""


class LocalEvents:
    """Embedded mode: one process hosts api and scheduler; workers are polled for."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self._wake = threading.Event()
        self._poll_s = poll_s

    def wake_scheduler(self) -> None:
        self._wake.set()

    def scheduler_waiter(self) -> Callable[[float], bool]:
        def wait(timeout: float) -> bool:
            woken = self._wake.wait(timeout)
            self._wake.clear()
            return woken

        return wait

    def job_changed(self, job_id) -> None:
        return None

    def wait_job(self, job_id, is_done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not is_done():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll_s)
        return True


class RedisEvents:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)

    def _publish(self, channel: str) -> None:
        try:
            self._redis.publish(channel, b"1")
        except Exception as exc:  # Redis down: waiters fall back to their timeouts
            logger.warning("cannot publish %s: %s", channel, exc)

    def wake_scheduler(self) -> None:
        self._publish(SCHEDULER_CHANNEL)

    def scheduler_waiter(self) -> Callable[[float], bool]:
        pubsub = None

        def wait(timeout: float) -> bool:
            nonlocal pubsub
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(SCHEDULER_CHANNEL)
                message = pubsub.get_message(timeout=timeout)
                if message is None:
                    return False
                while pubsub.get_message(timeout=0) is not None:  # coalesce a burst
                    pass
                return True
            except Exception as exc:
                logger.warning("scheduler wake-ups unavailable (%s); polling", exc)
                pubsub = None
                time.sleep(timeout)
                return False

        return wait

    def job_changed(self, job_id) -> None:
        self._publish(job_channel(job_id))

    def wait_job(self, job_id, is_done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(job_channel(job_id))
        except Exception as exc:
            logger.warning("job wake-ups unavailable (%s); polling", exc)
            return LocalEvents(poll_s=0.2).wait_job(job_id, is_done, timeout)
        try:
            # Subscribe first, then look: a change between the two is not lost.
            while not is_done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                pubsub.get_message(timeout=min(left, 1.0))
            return True
        finally:
            pubsub.close()


def make_events(settings) -> Events:
    if settings.redis_url:
        return RedisEvents(settings.redis_url)
    return LocalEvents()
