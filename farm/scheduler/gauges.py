"""The leading scheduler's gauges, filled from what its pass has anyway (the
queue depth it keeps, every worker, the jobs placed on workers), so that no scrape
and no extra query ever counts the jobs table.

Only the leader shows them; a standby clears them, so that a dashboard that
sums over schedulers counts every job once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Iterable, Mapping

from farm.metrics import ACTIVE_JOBS, QUEUED_JOBS, WORKER_HEARTBEAT_AGE_SECONDS, WORKERS, WORKER_STATES, fill_gauge

logger = logging.getLogger(__name__)


def worker_state(state: str, draining: bool) -> str:
    """One of ``farm.metrics.WORKER_STATES``: an online worker an admin drains
    is 'draining'; a state outside the vocabulary counts as 'offline'."""
    if state == "online" and draining:
        return "draining"
    return state if state in WORKER_STATES else "offline"


def publish_queue(depth: Mapping) -> None:
    """``depth``: (model id, submitting user's role) -> queued jobs, the whole
    queue (the live scheduler keeps it, farm/scheduler/livequeue.py)."""
    fill_gauge(QUEUED_JOBS, depth)


def publish_snapshot(depth: Mapping, workers: Iterable, active: Iterable, now: dt.datetime, offline: int = 0) -> None:
    """``depth``: as for :func:`publish_queue`; ``workers``: rows with
    ``id``, ``state``, ``draining``, ``last_heartbeat_at``; ``active``: rows
    with ``model_id`` and ``status`` (assigned|running)."""
    publish_queue(depth)
    fill_gauge(ACTIVE_JOBS, Counter((row.model_id, row.status) for row in active))
    workers = list(workers)
    states = Counter(worker_state(row.state, row.draining) for row in workers)
    states["offline"] += offline  # ``offline``: workers counted apart, not in ``workers``
    fill_gauge(WORKERS, {state: states.get(state, 0) for state in WORKER_STATES})
    fill_gauge(WORKER_HEARTBEAT_AGE_SECONDS, {row.id: max(0.0, (now - row.last_heartbeat_at).total_seconds())
                                              for row in workers if row.state != "offline"})


def clear() -> None:
    """A standby (or a scheduler that lost the lead) shows none of them."""
    for gauge in (QUEUED_JOBS, ACTIVE_JOBS, WORKERS, WORKER_HEARTBEAT_AGE_SECONDS):
        gauge.clear()
