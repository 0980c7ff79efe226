"""Celery worker heartbeats sent from a thread of their own.

Flower and ``celery events`` call a worker online while its ``worker-heartbeat``
events keep coming (every 2 s; a worker silent for two intervals is shown
offline). Celery's own heartbeat step sends them from the worker's event loop,
and with the solo pool (one pipeline per process) that loop stands still for
as long as a render runs: every worker rendering anything longer than a few
seconds would be called offline. This step sends the same events (Celery's
``Heart``) from a timer thread over a broker connection of its own, so that
they never wait for a render and never share the consumer's connection.
"""

from __future__ import annotations

import logging

from celery import bootsteps
from celery.utils.timer2 import Timer
from celery.worker import heartbeat
from celery.worker.consumer.events import Events

logger = logging.getLogger(__name__)


class ThreadedHeart(bootsteps.StartStopStep):
    """A consumer step in place of Celery's ``Heart`` (start the worker with
    ``without_heartbeat=True`` and add this step)."""

    requires = (Events,)

    def __init__(self, c, heartbeat_interval=None, **kwargs) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.heart = None
        self.timer = None
        self.connection = None
        super().__init__(c, **kwargs)

    def start(self, c) -> None:
        self.timer = Timer()
        self.connection = c.app.connection_for_write()
        dispatcher = c.app.events.Dispatcher(self.connection, hostname=c.hostname, groups=["worker"])
        self.heart = heartbeat.Heart(self.timer, dispatcher, self.heartbeat_interval)
        self.heart.start()  # worker-online, then a worker-heartbeat every interval

    def stop(self, c) -> None:
        if self.heart is None:
            return
        heart, self.heart = self.heart, None
        try:
            heart.stop()  # worker-offline
        except Exception as exc:  # the broker may be gone; the heartbeats stop anyway
            logger.warning("could not announce the worker offline to Celery's monitors: %s", exc)
        self.timer.stop()
        heart.eventer.close()
        self.connection.close()

    shutdown = stop
