"""The Celery entry module: builds the app from settings and imports the tasks.

Nothing connects at import time. Embedded, the broker is kombu's filesystem
transport under FARM_HOME (no service needed) with our whole-file writes
(``fs_transport``); distributed, Redis. Postgres is the truth, so results are
not stored and a lost message only delays a job until its lease expires.
"""

from __future__ import annotations

import logging

from celery import Celery

logger = logging.getLogger(__name__)


def worker_queue(worker_id: str) -> str:
    return f"farm.worker.{worker_id}"


def create_celery(settings) -> Celery:
    app = Celery("farm", broker=settings.resolved_broker_url, include=["farm.workers.tasks"], set_as_current=True)
    transport_options: dict = {}
    transport = None
    if settings.resolved_broker_url.startswith("filesystem"):
        # kombu's own filesystem transport can hand a consumer half a message
        # (issue 17); the URL keeps its scheme, the class is ours.
        transport = "farm.workers.fs_transport:Transport"
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # The default 1 s poll would add up to a second to every job.
            "polling_interval": 0.02,
        }
    else:
        # Longer than any render: an unacknowledged task is not redelivered
        # while it legitimately runs (fencing refuses it anyway).
        transport_options = {"visibility_timeout": settings.render_time_limit_s + 300}
        if settings.redis_namespace:
            transport_options["global_keyprefix"] = settings.redis_namespace
    app.conf.update(
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.render_time_limit_s,
        task_soft_time_limit=max(settings.render_time_limit_s - 30, 1),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue="farm.default",
        broker_heartbeat=0,
    )
    return app
