"""Celery tasks. They take ids, never ORM objects, and reload rows."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task
from celery.signals import task_postrun, task_prerun

from farm import logs

logger = logging.getLogger(__name__)

RENDER_TASK = "farm.render_job"


PRELOAD_TASK = "farm.preload_model"
DESCRIBE_TASK = "farm.describe_image"


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


@shared_task(name=DESCRIBE_TASK, ignore_result=True)
def describe_image(request_id: str, object_key: str) -> str:
    """Describe a stored image and post the answer where the API waits for it (reply ``request_id``)."""
    from farm.workers.runtime import current_runtime

    runtime = current_runtime()
    answer = runtime.describe(object_key)
    runtime.ctx.events.post_reply(request_id, answer)
    return "failed" if "error" in answer else "described"


# Log fields bound for the task each Celery task id names; prerun and postrun
# bracket Celery's own "succeeded"/"raised" lines as well as the task's.
_bound_fields: dict[str, object] = {}


@task_prerun.connect
def _bind_task_log_fields(task_id=None, task=None, args=(), **_) -> None:
    from farm.workers.runtime import current_runtime

    try:
        fields = {"worker": current_runtime().name}
    except RuntimeError:  # a task run outside a farm worker (tests)
        fields = {}
    if task is not None and task.name == RENDER_TASK and len(args) >= 2:
        fields.update(job_id=args[0], attempt=int(args[1]))
    _bound_fields[task_id] = logs.scope_fields(**fields)


@task_postrun.connect
def _reset_task_log_fields(task_id=None, **_) -> None:
    token = _bound_fields.pop(task_id, None)
    if token is not None:
        logs.reset_fields(token)
