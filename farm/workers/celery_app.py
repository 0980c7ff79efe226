"""The Celery entry module: builds the app from settings and imports the tasks.

Nothing connects or reads configuration at import time. Processes that have
their settings in hand call :func:`create_celery`; Celery's own tools
(``celery -A farm.workers.celery_app inspect ping``, Flower) find the
module-level ``app``, which is built on first access from
:func:`farm.settings.get_settings` (the same ``FARM_`` environment as the
farm's processes).

Embedded, the broker is kombu's filesystem transport under FARM_HOME (no
service needed) with our whole-file writes (``fs_transport``); distributed,
Redis. Postgres is the truth, so results are not stored and a lost message
only delays a job until its lease expires.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.app.control import Control

logger = logging.getLogger(__name__)


class RemoteControlUnavailableError(RuntimeError):
    """Celery's remote control was asked of a broker that cannot carry it."""


class EmbeddedControl(Control):
    """The embedded farm's workers listen to no remote control (a broadcast
    over folders would leave reply queues behind), so every broadcast says so
    at once instead of waiting out its timeout; ``celery inspect`` prints the
    message as its one-line error."""

    def broadcast(self, *args, **kwargs):
        raise RemoteControlUnavailableError(
            "this farm's broker is the embedded folder under FARM_HOME (farm up), which carries no remote control; "
            "celery inspect and Flower need a farm on Redis (FARM_BROKER_URL=redis://...)")


def worker_queue(worker_id: str) -> str:
    return f"farm.worker.{worker_id}"


#: The queue every worker with a describe model (FARM_WORKER_DESCRIBE_MODEL) consumes besides its own.
DESCRIBE_QUEUE = "farm.describe"


def remote_control_enabled(settings) -> bool:
    """Whether workers answer remote control and send heartbeats: on Redis,
    not on the embedded filesystem transport."""
    return not settings.resolved_broker_url.startswith("filesystem")


def create_celery(settings) -> Celery:
    remote = remote_control_enabled(settings)
    app = Celery("farm", broker=settings.resolved_broker_url, include=["farm.workers.tasks"], set_as_current=True,
                 control=None if remote else EmbeddedControl)
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
            # kombu prefixes queue keys and the fanout (pub/sub) channels of
            # remote control and events alike, so `celery inspect` with this
            # namespace reaches this farm's workers and no other's.
            transport_options["global_keyprefix"] = settings.redis_namespace
    events = remote and settings.celery_events
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
        worker_enable_remote_control=remote,
        # Task events (FARM_CELERY_EVENTS) are what Flower lists tasks from;
        # "sent" comes from the scheduler's publish.
        worker_send_task_events=events,
        task_send_sent_event=events,
        task_default_queue="farm.default",
        broker_heartbeat=0,
    )
    return app


def __getattr__(name: str) -> Celery:
    # The module-level app of Celery's tools (`celery -A farm.workers.celery_app`),
    # built on first use so that importing this module reads nothing.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from farm.settings import get_settings

    app = create_celery(get_settings())
    globals()["app"] = app
    return app
