"""`farm worker`: start the runtime (register, heartbeat) and consume this
worker's own Celery queue with one solo-pool process."""

from __future__ import annotations

import logging

from farm.context import build_context
from farm.settings import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, name: str | None = None, vram_gb: float | None = None) -> None:
    from farm.workers.celery_app import create_celery
    from farm.workers.runtime import WorkerRuntime

    ctx = build_context(settings)
    runtime = WorkerRuntime(ctx, name=name, vram_gb=vram_gb)
    app = create_celery(settings)
    runtime.start()
    try:
        worker = app.Worker(
            hostname=f"{runtime.name}@{runtime.host}",
            queues=[runtime.queue],
            pool_cls="solo",
            concurrency=1,
            loglevel=settings.log_level,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            optimization="fair",
        )
        worker.start()
    finally:
        runtime.stop()
