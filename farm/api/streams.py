"""Server-Sent Events for jobs and campaigns (issue 19).

A stream is opened by an ordinary Flask view (``farm/api/events.py``, the
dashboard's ``/jobs/<id>/events``): authentication, the contract's checks
and visibility run there, and the view answers the first events (the
current status, progress, latest preview and outputs). What happens next
depends on the server:

- under ``farm api`` / ``farm up`` (uvicorn, ``farm/api/server.py``) the
  view hands its feed to the ASGI front through the request's scope and
  returns; the front keeps the connection and goes on asynchronously, woken
  by Redis pub/sub (or the embedded farm's live files), so an open stream
  holds no thread;
- under any other WSGI server (tests' waitress, Flask's test client) the
  view streams by itself from a generator that polls, which does hold a
  thread: fine for tests, not for 500 viewers.

Either way a stream sends ``retry``, then ``status``, ``progress``,
``preview``, ``output`` events and heartbeat comments, and ends with an
``end`` event when the job (campaign) is final or after ``FARM_SSE_MAX_S``
(reason ``timeout``: the client reconnects with ``Last-Event-ID``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable, Iterator

from flask import Response, request

from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

RETRY_MS = 3000
HEARTBEAT = b": keep-alive\n\n"
# Where the ASGI front leaves a dict for the view's feed (scope keys cannot
# come from a client).
SCOPE_KEY = "farm.stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


def encode_all(events: Iterable[tuple[str, dict]], cursor: int) -> bytes:
    return b"".join(encode(event, data, cursor) for event, data in events)


def last_event_id() -> int:
    """The count of outputs a reconnecting client already has (0 when new)."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 9:
        raise RequestError([FieldProblem("Last-Event-ID", "must be the id of an event this stream sent (a whole number)")],
                           status=400)
    return int(raw)


def first_events(feed, events_layer) -> tuple[list[tuple[str, dict]], dict | None]:
    """The feed's first events with the job's latest live message (a stream
    opened mid-render shows the current preview), and that message."""
    events, latest = feed.read(), None
    if not feed.final and feed.kind == "job":
        latest = events_layer.latest_live("job", feed.id)
        if latest:
            events += feed.live(latest)
    return events, latest


def stream_response(feed, ctx) -> Response:
    """The answer of an events view: the first events, then the rest by the
    ASGI front (no thread) or by a polling generator (any WSGI server)."""
    settings = ctx.settings
    events, latest = first_events(feed, ctx.events)
    body = f"retry: {RETRY_MS}\n\n".encode() + encode_all(events, feed.cursor)
    holder = request.environ.get("asgi.scope", {}).get(SCOPE_KEY)
    if feed.final:
        chunks: Iterable[bytes] = [body]
    elif holder is not None:
        holder["feed"] = feed
        chunks = iter([body])  # no Content-Length: the front goes on writing
    else:
        chunks = _polled(feed, ctx, body, latest, settings.sse_max_s, settings.sse_heartbeat_s, settings.sse_poll_s)
    return Response(chunks, mimetype="text/event-stream", headers=HEADERS)


def _polled(feed, ctx, body: bytes, last_live: dict | None, max_s: float, heartbeat_s: float,
            poll_s: float) -> Iterator[bytes]:
    yield body
    deadline = time.monotonic() + max_s
    last_beat = time.monotonic()
    while not feed.final:
        now = time.monotonic()
        if now >= deadline:
            yield encode("end", {"reason": "timeout"}, feed.cursor)
            return
        time.sleep(min(poll_s, max(deadline - now, 0)))
        events = feed.read()
        if not feed.final and feed.kind == "job":
            latest = ctx.events.latest_live("job", feed.id)
            if latest and latest != last_live:
                last_live = latest
                events += feed.live(latest)
        if events:
            last_beat = time.monotonic()
            yield encode_all(events, feed.cursor)
        elif time.monotonic() - last_beat >= heartbeat_s:
            last_beat = time.monotonic()
            yield HEARTBEAT
