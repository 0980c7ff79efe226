"""Wake-ups between processes: the scheduler is woken when work arrives or a
worker frees up, and API long-polls wake when a job changes.

Postgres stays the truth; these only shorten waits. With Redis (distributed
mode) they are pub/sub messages; embedded, in-process events plus short
polling of the database stand in.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Protocol

logger = logging.getLogger(__name__)

SCHEDULER_CHANNEL = "farm:scheduler:wake"


def job_channel(job_id, namespace: str = "") -> str:
    return f"{namespace}farm:job:{job_id}"


def reply_key(key: str, namespace: str = "") -> str:
    """Where a worker leaves its answer to one request the API waits for (describe)."""
    return f"{namespace}farm:reply:{key}"


def live_channel(kind: str, key, namespace: str = "") -> str:
    """Where a worker publishes what is not stored (progress, previews) for
    a job's or a campaign's event streams (``kind``: job or campaign).

    ``namespace`` is FARM_REDIS_NAMESPACE: farms sharing one Redis keep
    their channels apart."""
    return f"{namespace}farm:live:{kind}:{key}"


# The latest live message of a job is kept this long, so that a stream opened
# mid-render shows the current preview at once.
LIVE_KEEP_S = 300
# An answer nobody collected (the API gave up waiting) is dropped after this long.
REPLY_KEEP_S = 120
# The latest preview of a job is kept apart under this kind (latest_live(PREVIEW,
# job id)): progress messages come between previews, and a client polling for
# the current image (A1111's /sdapi/v1/progress) would otherwise often find none.
PREVIEW = "job-preview"


class Events(Protocol):
    def wake_scheduler(self) -> None: ...

    def scheduler_waiter(self) -> Callable[[float], bool]:
        """A function that blocks up to N seconds and returns True if woken."""

    def job_changed(self, job_id) -> None: ...

    def wait_job(self, job_id, is_done: Callable[[], bool], timeout: float) -> bool:
        """Block until ``is_done()`` holds or ``timeout`` passes; returns is_done()."""

    def publish_live(self, job_id, campaign_id, message: dict) -> None:
        """Best effort: a job's progress or preview (or ``{"type": "changed"}``)
        for its event streams and its campaign's."""

    def latest_live(self, kind: str, key) -> dict | None:
        """The last message published for a job or campaign, if still kept."""

    def campaign_changed(self, campaign_id) -> None:
        """Best effort: the campaign's status or one of its jobs' changed (a
        pause, a cancel, an assignment); its event streams read the database."""

    def post_reply(self, key: str, message: dict) -> None:
        """A worker's answer to a request the API waits for (describe), kept REPLY_KEEP_S."""

    def wait_reply(self, key: str, timeout: float) -> dict | None:
        """The answer posted under ``key``, taken (read once), or None after ``timeout`` seconds."""


class LocalEvents:
    """Embedded mode: one process hosts api and scheduler; workers are polled for."""

    def __init__(self, poll_s: float = 0.05, live_dir: str | os.PathLike | None = None) -> None:
        self._wake = threading.Event()
        self._poll_s = poll_s
        # Replies within one process (no live_dir: tests running the worker in-process).
        self._replies: dict[str, dict] = {}
        self._replied = threading.Condition()
        # The worker of `farm up` is a child process: live messages cross
        # over as small files (the latest message per job or campaign).
        self.live_dir = Path(live_dir) if live_dir else None

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

    def _live_path(self, kind: str, key) -> Path | None:
        return self.live_dir / f"{kind}-{key}.json" if self.live_dir else None

    def publish_live(self, job_id, campaign_id, message: dict) -> None:
        if self.live_dir is None:
            return
        data = json.dumps(message)
        try:
            self.live_dir.mkdir(parents=True, exist_ok=True)
            keys = [("job", job_id), ("campaign", campaign_id)]
            if message.get("type") == "preview":
                keys.append((PREVIEW, job_id))
            for kind, key in keys:
                if key is None:
                    continue
                path = self._live_path(kind, key)
                temporary = path.with_name(f".{path.name}.{os.getpid()}")
                temporary.write_text(data)
                os.replace(temporary, path)  # readers see all of a message or the one before
            if message.get("type") == "changed":
                self._prune_live()
        except OSError as exc:
            logger.warning("cannot publish live progress of job %s: %s", job_id, exc)

    def campaign_changed(self, campaign_id) -> None:
        # A fresh message each time: the api's watcher passes over one equal to the last.
        self.publish_live(None, campaign_id, {"type": "changed", "change": uuid.uuid4().hex})

    def _prune_live(self) -> None:
        """Drop the files of jobs and campaigns quiet for longer than LIVE_KEEP_S
        (latest_live ignores them already), once per job start or end."""
        cutoff = time.time() - LIVE_KEEP_S
        for path in self.live_dir.glob("*.json"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass  # another process pruned it first

    def post_reply(self, key: str, message: dict) -> None:
        if self.live_dir is None:
            with self._replied:
                self._replies[key] = message
                self._replied.notify_all()
            return
        path = self.live_dir / f"reply-{key}.json"
        try:
            self.live_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(message))
            os.replace(temporary, path)
        except OSError as exc:
            logger.warning("cannot post the reply to %s: %s", key, exc)

    def wait_reply(self, key: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        if self.live_dir is None:
            with self._replied:
                self._replied.wait_for(lambda: key in self._replies, timeout)
                return self._replies.pop(key, None)
        path = self.live_dir / f"reply-{key}.json"
        while True:
            try:
                message = json.loads(path.read_text())
                path.unlink(missing_ok=True)
                return message
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(self._poll_s)

    def latest_live(self, kind: str, key) -> dict | None:
        path = self._live_path(kind, key)
        if path is None:
            return None
        try:
            if time.time() - path.stat().st_mtime > LIVE_KEEP_S:
                return None
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


class RedisEvents:
    def __init__(self, url: str, namespace: str = "") -> None:
        import redis

        self.namespace = namespace
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)

    def _publish(self, channel: str, data: bytes = b"1") -> None:
        try:
            self._redis.publish(channel, data)
        except Exception as exc:  # Redis down: waiters fall back to their timeouts
            logger.warning("cannot publish %s: %s", channel, exc)

    def publish_live(self, job_id, campaign_id, message: dict) -> None:
        data = json.dumps(message).encode()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(f"{live_channel('job', job_id, self.namespace)}:last", data, ex=LIVE_KEEP_S)
            if message.get("type") == "preview":
                pipe.set(f"{live_channel(PREVIEW, job_id, self.namespace)}:last", data, ex=LIVE_KEEP_S)
            pipe.publish(live_channel("job", job_id, self.namespace), data)
            if campaign_id is not None:
                # Campaign streams show numbers and tiles, not every job's previews.
                brief = data if message.get("type") != "preview" else json.dumps({**message, "jpeg": None}).encode()
                pipe.publish(live_channel("campaign", campaign_id, self.namespace), brief)
            pipe.execute()
        except Exception as exc:
            logger.warning("cannot publish live progress of job %s: %s", job_id, exc)

    def campaign_changed(self, campaign_id) -> None:
        self._publish(live_channel("campaign", campaign_id, self.namespace))  # b"1": the streams' plain wake-up

    def latest_live(self, kind: str, key) -> dict | None:
        try:
            data = self._redis.get(f"{live_channel(kind, key, self.namespace)}:last")
            return json.loads(data) if data else None
        except Exception as exc:
            logger.warning("cannot read live progress of %s %s: %s", kind, key, exc)
            return None

    def post_reply(self, key: str, message: dict) -> None:
        name = reply_key(key, self.namespace)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.rpush(name, json.dumps(message).encode())
            pipe.expire(name, REPLY_KEEP_S)
            pipe.execute()
        except Exception as exc:
            logger.warning("cannot post the reply to %s: %s", key, exc)

    def wait_reply(self, key: str, timeout: float) -> dict | None:
        name = reply_key(key, self.namespace)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                # Whole seconds below the client's 5 s socket timeout.
                found = self._redis.blpop([name], timeout=max(1, min(int(left), 4)))
            except Exception as exc:
                logger.warning("replies unavailable (%s); retrying", exc)
                time.sleep(min(left, 0.5))
                continue
            if found is not None:
                return json.loads(found[1])

    def wake_scheduler(self) -> None:
        self._publish(self.namespace + SCHEDULER_CHANNEL)

    def scheduler_waiter(self) -> Callable[[float], bool]:
        pubsub = None

        def wait(timeout: float) -> bool:
            nonlocal pubsub
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.namespace + SCHEDULER_CHANNEL)
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
        self._publish(job_channel(job_id, self.namespace))

    def wait_job(self, job_id, is_done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(job_channel(job_id, self.namespace))
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
        return RedisEvents(settings.redis_url, settings.redis_namespace)
    return LocalEvents(live_dir=settings.home / "live")
