"""Stand-in GPU workers for the scale-out benchmark: many registered workers
served by one Celery consumer process that finishes every job at once.

A real farm worker is one process per GPU. Two CPU cores cannot hold 200 of
them, and the benchmark asks what the scheduler and the transport sustain,
not what rendering costs, so one process (or a few) consumes all the
workers' queues (``farm.worker.<id>``) on the farm's own Celery app and
broker settings, and for each render message does what a real worker writes
on its success path, through the job state machine, without rendering:

- the fenced start (``states.start_job``: assigned -> running, lease taken,
  this process's instance id recorded), with the model marked held on the
  worker row (an ``evict`` in the message drops those models first);
- the fenced completion (``states.complete_job``: running -> succeeded, GPU
  seconds settled against the quota) with the output row in the same
  transaction (a deterministic object key; no object is uploaded);
- the job's change events and the scheduler wake-up a real worker publishes.

Preload messages mark the model held at once. A heartbeat thread (in the
consumer started with ``--heartbeat``) renews every worker row once per
``FARM_HEARTBEAT_S``, one transaction per worker spread over the interval,
as 200 separate worker processes would.

The same process also runs ``bench.noop``, the baseline's no-op task: it
pushes its token onto a Redis list, so the sender learns of the round trip.

    python bench/standin_workers.py --workers w000,w001,... [--concurrency 4] [--heartbeat]

(settings from the FARM_* environment, as for any farm process).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid

logger = logging.getLogger(__name__)

NOOP_TASK = "bench.noop"
# Redis list (under the farm's namespace) each no-op task pushes its token onto.
NOOP_DONE_LIST = "bench:noop:done"
STANDIN_HOST = "standin"


def worker_row(name: str, vram_total_gb: float, loaded: dict[str, float], families: list[str]) -> dict:
    """Column values of a stand-in worker's row, as a real worker registers them."""
    from farm.models import utcnow
    from farm.workers.celery_app import worker_queue

    now = utcnow()
    return dict(
        id=name, host=STANDIN_HOST, queue=worker_queue(name), device="cuda", device_name="stand-in (no GPU)",
        vram_total_gb=vram_total_gb, vram_free_gb=vram_total_gb - sum(loaded.values()),
        loaded_models=[{"id": model, "vram_gb": gb} for model, gb in loaded.items()], serves_models=None,
        families=families, max_pixels=4_194_304, capacity=1, speed=1.0, load_gbps=2.0, state="online",
        instance_id=uuid.uuid4().hex, software={}, started_at=now, last_heartbeat_at=now, created_at=now, updated_at=now,
    )


def _hold_model(worker, model_id: str, model_gb: float, evict: list[str]) -> None:
    """Mark ``model_id`` held on the worker row, dropping ``evict`` and then the
    least recently used models until it fits (what a real worker's LRU does)."""
    held = [m for m in worker.loaded_models if m["id"] not in evict]
    if not any(m["id"] == model_id for m in held):
        while held and sum(m["vram_gb"] for m in held) + model_gb > worker.vram_total_gb:
            held.pop(0)
        held.append({"id": model_id, "vram_gb": model_gb})
    else:  # most recently used last
        held = [m for m in held if m["id"] != model_id] + [m for m in held if m["id"] == model_id]
    worker.loaded_models = held
    worker.vram_free_gb = max(worker.vram_total_gb - sum(m["vram_gb"] for m in held), 0.0)


def finish_job(ctx, worker_name: str, job_id: uuid.UUID, attempt: int, evict: list[str], instance_id: str) -> str:
    """One render message, the way a real worker's success path writes it, without rendering."""
    from farm import states
    from farm.models import Job, ModelEntry, Output, Worker
    from farm.storage import CONTENT_TYPES, output_key, sidecar_key

    try:
        with ctx.db.transaction() as session:
            states.start_job(session, job_id, attempt, worker_name, ctx.settings.lease_s, instance_id=instance_id)
            job = session.get(Job, job_id)
            model = session.get(ModelEntry, job.model_id)
            _hold_model(session.get(Worker, worker_name), model.id, model.vram_gb, evict)
            snapshot = (job.user_id, job.campaign_id, job.params, job.width, job.height)
    except states.JobStateError as exc:
        logger.info("not running job %s attempt %d: %s", job_id, attempt, exc)
        return "skipped"
    user_id, campaign_id, params, width, height = snapshot
    ctx.events.job_changed(job_id)
    ctx.events.publish_live(job_id, campaign_id, {"type": "changed", "job": str(job_id)})
    fmt = params.get("output_format", "png")
    seed = int(params.get("seed", 0))
    rows = []
    for index in range(int(params.get("num_images", 1))):
        key = output_key(user_id, job_id, attempt, index, fmt)
        rows.append(Output(id=uuid.uuid4(), job_id=job_id, user_id=user_id, attempt=attempt, index=index, object_key=key,
                           sidecar_key=sidecar_key(key), content_type=CONTENT_TYPES[fmt], content_sha256="0" * 64,
                           byte_size=0, width=width, height=height, seed=seed + index,
                           lineage={"job_id": str(job_id), "attempt": attempt, "worker": {"id": worker_name}}))
    try:
        with ctx.db.transaction() as session:
            states.complete_job(session, job_id, attempt, worker_name, gpu_seconds=0.0)
            session.add_all(rows)
    except states.JobStateError as exc:
        logger.info("result of job %s attempt %d refused: %s", job_id, attempt, exc)
        return "refused"
    ctx.events.job_changed(job_id)
    ctx.events.publish_live(job_id, campaign_id, {"type": "changed", "job": str(job_id)})
    ctx.events.wake_scheduler()
    return "succeeded"


def preload(ctx, worker_name: str, model_id: str, evict: list[str]) -> str:
    from farm.models import ModelEntry, Worker

    with ctx.db.transaction() as session:
        model = session.get(ModelEntry, model_id)
        if model is None:
            return "unknown"
        _hold_model(session.get(Worker, worker_name), model.id, model.vram_gb, evict)
    ctx.events.wake_scheduler()
    return "loaded"


def heartbeat_loop(ctx, names: list[str], stop: threading.Event) -> None:
    """Renew each worker row once per heartbeat interval, one transaction per
    worker, spread evenly over the interval (as separate processes would)."""
    from sqlalchemy import update

    from farm.models import Worker, utcnow

    gap = ctx.settings.heartbeat_s / max(len(names), 1)
    while not stop.is_set():
        for name in names:
            started = time.monotonic()
            try:
                with ctx.db.transaction() as session:
                    session.execute(update(Worker).where(Worker.id == name)
                                    .values(last_heartbeat_at=utcnow(), state="online"))
            except Exception as exc:
                logger.warning("heartbeat of %s failed: %s", name, exc)
            if stop.wait(max(gap - (time.monotonic() - started), 0.0)):
                return


def build_app(ctx):
    """The farm's Celery app and broker settings, with the stand-in tasks
    under the real task names (the real task module is not loaded)."""
    import redis

    from farm.workers.celery_app import create_celery

    app = create_celery(ctx.settings)
    app.conf.include = []
    # Task names as farm.workers.tasks declares them; that module is not
    # imported here, so its real tasks do not register alongside these.
    render_task, preload_task = "farm.render_job", "farm.preload_model"
    instance_id = uuid.uuid4().hex
    done = redis.Redis.from_url(ctx.settings.redis_url)
    done_list = ctx.settings.redis_namespace + NOOP_DONE_LIST

    def worker_of(request) -> str:
        queue = request.delivery_info["routing_key"]
        return queue.removeprefix("farm.worker.")

    @app.task(name=render_task, bind=True, ignore_result=True)
    def render_job(self, job_id: str, attempt: int, evict: list[str] | None = None) -> str:
        return finish_job(ctx, worker_of(self.request), uuid.UUID(job_id), int(attempt), evict or [], instance_id)

    @app.task(name=preload_task, bind=True, ignore_result=True)
    def preload_model(self, model_id: str, evict: list[str] | None = None) -> str:
        return preload(ctx, worker_of(self.request), model_id, evict or [])

    @app.task(name=NOOP_TASK, ignore_result=True)
    def noop(token: str) -> None:
        done.rpush(done_list, token)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", required=True, help="comma-separated worker names whose queues this process consumes")
    parser.add_argument("--concurrency", type=int, default=4, help="threads taking messages at once")
    parser.add_argument("--heartbeat", action="store_true", help="also heartbeat these workers' rows")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("FARM_LOG_LEVEL", "WARNING"))

    from farm.context import build_context
    from farm.workers.celery_app import worker_queue

    ctx = build_context()
    names = [name for name in args.workers.split(",") if name]
    stop = threading.Event()
    if args.heartbeat:
        threading.Thread(target=heartbeat_loop, args=(ctx, names, stop), name="standin-heartbeat", daemon=True).start()
    app = build_app(ctx)
    try:
        app.worker_main(["worker", "--pool", "threads", "--concurrency", str(args.concurrency), "--loglevel", "WARNING",
                         "--queues", ",".join(worker_queue(name) for name in names),
                         "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", f"standin-{os.getpid()}@%h"])
    finally:
        stop.set()


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
