"""Describe: a prompt for one of the caller's images, written by a worker's image-to-text model.

The API process loads no model: it looks the image up (an upload or an
output the caller can see, checked like any image input), makes sure a live
worker offers describe (``workers.describe_model``), sends one task to the
shared describe queue, and waits a bounded time for the answer the worker
posts through the events transport (Redis, or files under FARM_HOME
embedded). The task expires with the wait, so a worker busy past it skips a
request nobody waits for any more.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Callable

from sqlalchemy import select

from farm.context import FarmContext
from farm.models import User, Worker, utcnow
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

#: (request id, object key, expires in seconds) -> None: hands one describe request to the workers.
Sender = Callable[[str, str, float], None]


class DescribeUnavailableError(Exception):
    """No live worker offers describe, or the one that took the request failed (503)."""


class DescribeTimeoutError(Exception):
    """No answer within FARM_DESCRIBE_WAIT_S (504)."""


def describe_workers(ctx: FarmContext) -> list[str]:
    """Names of the workers that offer describe now: online, not draining, heard from within the heartbeat timeout."""
    fresh_since = utcnow() - dt.timedelta(seconds=ctx.settings.heartbeat_timeout_s)
    with ctx.db.session() as session:
        return list(session.execute(
            select(Worker.id).where(Worker.describe_model.is_not(None), Worker.state == "online",
                                    Worker.draining.is_(False), Worker.last_heartbeat_at >= fresh_since)
            .order_by(Worker.id)).scalars())


def describe(ctx: FarmContext, user: User, *, upload: str | None, output: str | None, send: Sender) -> dict:
    """{"prompt", "model", "worker"} for the image named by ``upload`` or ``output`` (exactly one)."""
    from farm.services.jobs import find_output_source
    from farm.services.uploads import find_upload

    if (upload is None) == (output is None):
        raise RequestError([FieldProblem("upload", "name one image: an upload id in upload, or an output id in output")])
    if upload is not None:
        source = find_upload(ctx, user, upload, "upload")
    else:
        with ctx.db.session() as session:
            source = find_output_source(session, user, output, "output")
    if not describe_workers(ctx):
        raise DescribeUnavailableError("no worker offers describe now; start a worker with FARM_WORKER_DESCRIBE_MODEL "
                                       "set to the folder of an image-to-text model")
    request_id = uuid.uuid4().hex
    wait_s = ctx.settings.describe_wait_s
    send(request_id, source.object_key, wait_s)
    answer = ctx.events.wait_reply(request_id, wait_s)
    if answer is None:
        raise DescribeTimeoutError(f"no describe worker answered within {wait_s:g} s (FARM_DESCRIBE_WAIT_S); "
                                   "the workers may be busy rendering, try again")
    if "error" in answer:
        raise DescribeUnavailableError(answer["error"])
    logger.info("described %s with %s on %s", source.object_key, answer["model"], answer["worker"])
    return {"prompt": answer["prompt"], "model": answer["model"], "worker": answer["worker"]}
