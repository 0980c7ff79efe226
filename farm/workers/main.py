"""`farm worker`: start the runtime (register, heartbeat) and consume this
worker's own Celery queue with one solo-pool process.

SIGTERM (docker stop, a Kubernetes eviction, a reclaimed preemptible GPU) is
Celery's warm shutdown: it stops consuming and lets the running task end. The
runtime hears of it through ``worker_shutting_down``: the worker row says
``stopping`` (the scheduler sends nothing more), the render in hand finishes
if it can within FARM_WORKER_GRACE_S and is otherwise handed back to the
queue at its next step; then the worker goes offline and exits 0.
"""

from __future__ import annotations

import logging

from farm.context import build_context
from farm.settings import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, name: str | None = None, vram_gb: float | None = None) -> None:
    from celery.signals import worker_shutting_down

    from farm.metrics_server import start_metrics_server
    from farm.workers.celery_app import create_celery
    from farm.workers.runtime import WorkerRuntime

    ctx = build_context(settings)
    runtime = WorkerRuntime(ctx, name=name, vram_gb=vram_gb)
    app = create_celery(settings)
    # Up before the runtime starts: probes see it live while a preload runs, ready once registered.
    metrics_server = start_metrics_server(settings, runtime.liveness, runtime.readiness)
    runtime.start()

    def on_shutting_down(**_):
        runtime.begin_stop(settings.worker_grace_s)

    # weak=False: the receiver is a closure that nothing else references.
    worker_shutting_down.connect(on_shutting_down, weak=False)
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
        if metrics_server is not None:
            metrics_server.stop()
