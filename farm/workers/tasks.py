"""Celery tasks. They take ids, never ORM objects, and reload rows."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

logger = logging.getLogger(__name__)

RENDER_TASK = "farm.render_job"


@shared_task(name=RENDER_TASK, ignore_result=True)
def render_job(job_id: str, attempt: int) -> str:
    from farm.workers.render import execute_job
    from farm.workers.runtime import current_runtime

    return execute_job(current_runtime(), uuid.UUID(job_id), int(attempt))
