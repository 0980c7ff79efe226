"""Celery tasks. They take ids, never ORM objects, and reload rows."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

logger = logging.getLogger(__name__)

RENDER_TASK = "farm.render_job"


PRELOAD_TASK = "farm.preload_model"


@shared_task(name=RENDER_TASK, ignore_result=True)
def render_job(job_id: str, attempt: int, evict: list[str] | None = None) -> str:
    from farm.workers.render import execute_job
    from farm.workers.runtime import current_runtime

    return execute_job(current_runtime(), uuid.UUID(job_id), int(attempt), evict=evict or [])


@shared_task(name=PRELOAD_TASK, ignore_result=True)
def preload_model(model_id: str, evict: list[str] | None = None) -> str:
    """Load a model before work for it arrives (the scheduler's preload)."""
    from farm.workers.runtime import current_runtime, find_model

    runtime = current_runtime()
    entry = find_model(runtime.ctx, model_id)
    if entry is None:
        logger.warning("preload of unknown model %s ignored", model_id)
        return "unknown"
    runtime.evict(evict or [])
    _, load_s = runtime.pipeline_for(entry)
    runtime.heartbeat()  # tell the scheduler at once that the model is held
    runtime.ctx.events.wake_scheduler()
    return f"loaded in {load_s:.2f}s"
