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

from farm import logs
from farm.context import build_context
from farm.settings import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, name: str | None = None, vram_gb: float | None = None) -> None:
    from celery.signals import setup_logging, worker_ready, worker_shutting_down

    from farm.metrics_server import start_metrics_server
    from farm.workers.celery_app import DESCRIBE_QUEUE, create_celery, remote_control_enabled
    from farm.workers.celery_heart import ThreadedHeart
    from farm.workers.runtime import WorkerRuntime

    ctx = build_context(settings)
    runtime = WorkerRuntime(ctx, name=name, vram_gb=vram_gb)
    json_logs = settings.log_format == "json"
    if json_logs:
        logs.adopt_library_loggers()
    app = create_celery(settings)
    # Up before the runtime starts: probes see it live while a preload runs, ready once registered.
    metrics_server = start_metrics_server(settings, runtime.liveness, runtime.readiness)
    runtime.start()

    def on_shutting_down(**_):
        runtime.begin_stop(settings.worker_grace_s)

    # weak=False: the receiver is a closure that nothing else references.
    worker_shutting_down.connect(on_shutting_down, weak=False)
    # A receiver tells Celery that logging is set up (farm.logs, through the
    # CLI): Celery adds no handlers of its own and leaves stdout alone, so its
    # lines come out in FARM_LOG_FORMAT like everyone else's.
    setup_logging.connect(_logging_is_set_up, weak=False)
    if json_logs:
        worker_ready.connect(lambda **_: _quiet_shutdown_notice(worker), weak=False)
    if remote_control_enabled(settings):
        # Heartbeats (worker events, a PUBLISH every 2 s) are what Flower and
        # `celery events` call a worker online by; sent from a thread, so a
        # render in the solo pool does not silence them.
        app.steps["consumer"].add(ThreadedHeart)
    try:
        worker = app.Worker(
            hostname=f"{runtime.name}@{runtime.host}",
            # Describe requests wait on one shared queue for any worker that offers it.
            queues=[runtime.queue] + ([DESCRIBE_QUEUE] if runtime.describe_folder else []),
            pool_cls="solo",
            concurrency=1,
            loglevel=settings.log_level,
            # Gossip would subscribe every worker to every other worker's
            # events and mingle adds a start-up round trip; the farm uses
            # neither (Postgres is the truth). Celery's own heartbeat step
            # is replaced by ThreadedHeart (above).
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            optimization="fair",
            # The start-up banner is text on stdout; JSON logs say the same in lines.
            quiet=json_logs,
        )
        worker.start()
    finally:
        runtime.stop()
        if metrics_server is not None:
            metrics_server.stop()


def _logging_is_set_up(**_) -> None:
    pass


def _quiet_shutdown_notice(worker) -> None:
    """Reinstall Celery's SIGTERM handler without its plain-text notice on
    stdout ("worker: Warm shutdown"), which would be the one line of a JSON
    log that is not JSON; the runtime logs the stop itself."""
    from celery.apps.worker import install_worker_term_handler

    install_worker_term_handler(worker, verbose=False)
