"""How `farm api` and `farm up` serve the Flask app: uvicorn (asyncio) in
front, every request handed to Flask through a2wsgi on a bounded thread
pool (``FARM_API_THREADS``), and event streams kept open by coroutines
after their Flask view has answered the first events (``farm/api/streams.py``).

Why: waitress gives each streaming response a thread for its whole life, so
500 open streams needed 500 threads. Here an open stream costs a coroutine,
a queue and a socket; the thread pool only ever runs short views and the
streams' database reads (their own small pool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from farm.api.streams import HEARTBEAT, SCOPE_KEY, encode, encode_all
from farm.events import job_channel, live_channel
from farm.ports import listen_socket

logger = logging.getLogger(__name__)

WAKE: dict[str, Any] = {"type": "changed"}
# Threads that run the open streams' database reads.
STREAM_READ_THREADS = 4
# How often the embedded farm's live files are looked at.
LOCAL_LIVE_POLL_S = 0.25
KEEP_ALIVE_S = 120


class RedisHub:
    """One Redis connection and one pub/sub subscription set for every
    stream of this process; messages fan out to the streams' queues."""

    def __init__(self, url: str, namespace: str = "") -> None:
        self.url = url
        self.namespace = namespace
        self._queues: dict[str, set[asyncio.Queue]] = {}
        self._pubsub = None
        self._task: asyncio.Task | None = None
        self.slow_poll = True  # wake-ups come from Redis; database reads are the safety net

    async def _connect(self):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=30)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        if self._queues:
            await pubsub.subscribe(*self._queues)
        return pubsub

    async def _read(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._connect()
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: streams go on with database reads
                logger.warning("event streams: Redis pub/sub unavailable (%s); retrying", exc)
                self._pubsub = None
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            try:
                payload = WAKE if message["data"] in (b"1", "1") else json.loads(message["data"])
            except ValueError:
                continue
            for queue in self._queues.get(channel, ()):
                queue.put_nowait(payload)

    async def subscribe(self, feed, queue: asyncio.Queue) -> list[str]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())
        channels = [live_channel(feed.kind, feed.id, self.namespace)] + ([job_channel(feed.id, self.namespace)] if feed.kind == "job" else [])
        fresh = [channel for channel in channels if channel not in self._queues]
        for channel in channels:
            self._queues.setdefault(channel, set()).add(queue)
        if fresh and self._pubsub is not None:
            try:
                await self._pubsub.subscribe(*fresh)
            except Exception as exc:
                logger.warning("event streams: cannot subscribe (%s)", exc)
        return channels

    async def unsubscribe(self, channels: list[str], queue: asyncio.Queue) -> None:
        gone = []
        for channel in channels:
            queues = self._queues.get(channel)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[channel]
                    gone.append(channel)
        if gone and self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(*gone)
            except Exception as exc:
                logger.warning("event streams: cannot unsubscribe (%s)", exc)


class LocalHub:
    """`farm up`: the worker child leaves its latest live message in a file;
    one task looks at the files of the jobs and campaigns being watched."""

    def __init__(self, events) -> None:
        self.events = events
        self._watched: dict[tuple[str, Any], set[asyncio.Queue]] = {}
        self._seen: dict[tuple[str, Any], Any] = {}
        self._task: asyncio.Task | None = None
        self.slow_poll = False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(LOCAL_LIVE_POLL_S)
            for key, queues in list(self._watched.items()):
                message = self.events.latest_live(*key)
                if message is not None and message != self._seen.get(key):
                    self._seen[key] = message
                    for queue in queues:
                        queue.put_nowait(message)

    async def subscribe(self, feed, queue: asyncio.Queue) -> list:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        key = (feed.kind, feed.id)
        if key not in self._watched:
            self._seen[key] = self.events.latest_live(*key)  # already sent with the first events
        self._watched.setdefault(key, set()).add(queue)
        return [key]

    async def unsubscribe(self, keys: list, queue: asyncio.Queue) -> None:
        for key in keys:
            queues = self._watched.get(key, set())
            queues.discard(queue)
            if not queues:
                self._watched.pop(key, None)
                self._seen.pop(key, None)


class StreamingFront:
    """The ASGI app: Flask through a2wsgi, with event streams continued here."""

    def __init__(self, flask_app, ctx, threads: int) -> None:
        from a2wsgi import WSGIMiddleware

        self.wsgi = WSGIMiddleware(flask_app, workers=threads)
        self.settings = ctx.settings
        self.hub = RedisHub(ctx.settings.redis_url, ctx.settings.redis_namespace) if ctx.settings.redis_url else LocalHub(ctx.events)
        self.reads = ThreadPoolExecutor(max_workers=STREAM_READ_THREADS, thread_name_prefix="farm-stream")
        self.open_streams = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.wsgi(scope, receive, send)
            return
        holder: dict[str, Any] = {}
        scope[SCOPE_KEY] = holder

        async def send_open(message) -> None:
            # A handed-over stream's last body chunk is not its end.
            if message["type"] == "http.response.body" and not message.get("more_body") and "feed" in holder:
                message = {**message, "more_body": True}
            await send(message)

        await self.wsgi(scope, receive, send_open)
        if "feed" in holder:
            self.open_streams += 1
            try:
                await self._go_on(holder["feed"], receive, send)
            finally:
                self.open_streams -= 1

    async def _go_on(self, feed, receive, send) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        poll_s = settings.sse_poll_s * (10 if self.hub.slow_poll else 1)
        started = loop.time()
        deadline = started + settings.sse_max_s
        next_read, next_beat = started + poll_s, started + settings.sse_heartbeat_s
        queue: asyncio.Queue = asyncio.Queue()
        keys = await self.hub.subscribe(feed, queue)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            # A change between the view's read and the subscription is not lost.
            events = await loop.run_in_executor(self.reads, feed.read)
            while True:
                if events:
                    await send({"type": "http.response.body", "body": encode_all(events, feed.cursor), "more_body": True})
                    next_beat = loop.time() + settings.sse_heartbeat_s
                if feed.final or gone.done():
                    return
                now = loop.time()
                if now >= deadline:
                    await send({"type": "http.response.body", "body": encode("end", {"reason": "timeout"}, feed.cursor),
                                "more_body": True})
                    return
                if now >= next_beat:
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                    next_beat = now + settings.sse_heartbeat_s
                events, read = [], now >= next_read
                try:
                    message = await asyncio.wait_for(queue.get(), max(0.0, min(next_read, next_beat, deadline) - now))
                except asyncio.TimeoutError:
                    message = None
                while message is not None:
                    if message.get("type") == "changed":
                        read = True
                    else:
                        events += feed.live(message)
                    message = queue.get_nowait() if not queue.empty() else None
                if read or loop.time() >= next_read:
                    events += await loop.run_in_executor(self.reads, feed.read)
                    next_read = loop.time() + poll_s
        finally:
            gone.cancel()
            await self.hub.unsubscribe(keys, queue)
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the client left first
                pass


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# uvicorn options of every api process. Idle keep-alive connections are kept
# 120 s, as waitress kept them: at uvicorn's 5 s a client pausing about that
# long reused a connection the server was closing and got "Remote end closed
# connection". log_config=None: uvicorn's loggers propagate to the farm's
# handler (farm.logs, FARM_LOG_FORMAT) instead of getting handlers of their own.
SERVER_OPTIONS: dict[str, Any] = {"lifespan": "off", "access_log": False, "log_level": "warning", "backlog": 2048,
                                  "timeout_graceful_shutdown": 5, "timeout_keep_alive": KEEP_ALIVE_S, "log_config": None}


def make_front(flask_app, ctx, threads: int) -> StreamingFront:
    return StreamingFront(flask_app, ctx, threads)


def make_server(flask_app, ctx, host: str, port: int, threads: int, sock: socket.socket | None = None):
    """A uvicorn server bound to its port already (so a taken port fails here,
    and clients may connect as soon as this returns); ``.run()`` serves until
    SIGINT/SIGTERM or ``should_exit``. ``sock``: a socket from
    :func:`listen_socket` to serve on (`farm up` binds before anything else)."""
    import uvicorn

    class BoundServer(uvicorn.Server):
        def run(self, sockets=None) -> None:
            super().run(sockets=sockets or [self.socket])

    config = uvicorn.Config(make_front(flask_app, ctx, threads), host=host, port=port, **SERVER_OPTIONS)
    server = BoundServer(config)
    # Listening from here on: until run() starts the event loop, connections wait
    # in the backlog instead of being refused (farm up prints its banner first).
    server.socket = sock if sock is not None else listen_socket(host, port, config.backlog)
    return server
