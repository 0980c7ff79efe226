"""Worker operations: drain (finish current work, take no more) and resume."""

from __future__ import annotations

import logging

from farm.context import FarmContext
from farm.models import Worker
from farm.services.jobs import ConflictError, NotFoundError

logger = logging.getLogger(__name__)


def set_draining(ctx: FarmContext, worker_id: str, draining: bool) -> Worker:
    with ctx.db.transaction() as session:
        worker = session.get(Worker, worker_id)
        if worker is None:
            raise NotFoundError(f"no worker {worker_id!r}")
        if worker.state == "offline":
            raise ConflictError(f"worker {worker_id} is offline; start it before changing its state")
        worker.draining = draining
    logger.info("worker %s is now %s", worker_id, "draining" if draining else "taking work")
    ctx.events.wake_scheduler()
    return worker
