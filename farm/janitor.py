"""The janitor: deletes objects of attempts that did not complete, and
render checkpoints that no job will continue from.

An attempt writes only under its own keys (``outputs/u<user>/<job>/a<attempt>/``,
see farm/storage.py) and the output rows point at the keys of the one attempt
whose fenced completion won. An attempt that fails, is canceled or is
superseded deletes what it uploaded; a worker killed or cut off mid-upload
cannot, and leaves objects no row references. Garbage can therefore only sit
under jobs that had more than one attempt or ended without success, so the
janitor lists just those jobs' prefixes, not the whole bucket.

Render checkpoints (``checkpoints/u<user>/<job>/a<attempt>.pt``, written by
a preempted attempt, which always leaves the job with attempt > 1) are swept
with their job: the one ``jobs.resume_key`` names is referenced; the others
(superseded, or left by a job that ended without continuing) are not.

It deletes an object when no output row references it, it is not under the
attempt a worker is running right now, and it is older than
``FARM_ORPHAN_GRACE_S`` (a margin for clocks and for uploads racing the sweep).
It runs in the leading scheduler's process, in a thread of its own: a store
outage slows the janitor, never placement.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import or_, select, tuple_

from farm.context import FarmContext
from farm.db import classify_database_error
from farm.models import Job, JobStatus, Output, utcnow
from farm.retry import ServiceError
from farm.storage import StorageError, attempt_of_key, checkpoint_prefix, job_prefix

logger = logging.getLogger(__name__)

# Jobs looked at in one sweep; the rest of the window waits for the next ones.
MAX_JOBS_PER_SWEEP = 500
LIVE = (JobStatus.assigned.value, JobStatus.running.value)
ENDED_WITHOUT_SUCCESS = (JobStatus.failed.value, JobStatus.canceled.value)


@dataclass
class SweepReport:
    jobs: int = 0
    deleted: list[str] = field(default_factory=list)
    kept_young: int = 0


class Janitor:
    def __init__(self, ctx: FarmContext) -> None:
        self.ctx = ctx
        # Jobs found clean in a final state, with the attempt they were clean at:
        # nothing new appears under them unless a frozen worker wakes up, and
        # that worker deletes its own objects. Kept for the jobs of the current
        # pass over the lookback window only.
        self._clean: dict[uuid.UUID, int] = {}
        self._seen: set[uuid.UUID] = set()
        # Where the pass over the window stands: (updated_at, id) of the last
        # job looked at. Each sweep takes the next MAX_JOBS_PER_SWEEP jobs in
        # that order, so a window with more candidates is covered in turns.
        self._after: tuple[dt.datetime, uuid.UUID] | None = None

    def sweep(self, now: dt.datetime | None = None) -> SweepReport:
        settings = self.ctx.settings
        now = now or utcnow()
        grace = dt.timedelta(seconds=settings.orphan_grace_s)
        report = SweepReport()
        query = (select(Job.id, Job.user_id, Job.attempt, Job.status, Job.updated_at)
                 .where(Job.updated_at >= now - dt.timedelta(seconds=settings.janitor_lookback_s),
                        or_(Job.attempt > 1, Job.status.in_(ENDED_WITHOUT_SUCCESS)))
                 .order_by(Job.updated_at, Job.id)
                 .limit(MAX_JOBS_PER_SWEEP))
        if self._after is not None:
            query = query.where(tuple_(Job.updated_at, Job.id) > tuple_(*self._after))
        with self.ctx.db.session() as session:
            jobs = session.execute(query).all()
        if len(jobs) < MAX_JOBS_PER_SWEEP:
            # The pass reached the end of the window: start over next time,
            # forgetting jobs that have left it.
            self._after = None
            self._seen |= {job.id for job in jobs}
            self._clean = {job_id: attempt for job_id, attempt in self._clean.items() if job_id in self._seen}
            self._seen = set()
        else:
            self._after = (jobs[-1].updated_at, jobs[-1].id)
            self._seen |= {job.id for job in jobs}
        for job in jobs:
            if self._clean.get(job.id) == job.attempt:
                continue
            report.jobs += 1
            objects = list(self.ctx.storage.list(job_prefix(job.user_id, job.id)))
            objects += self.ctx.storage.list(checkpoint_prefix(job.user_id, job.id))
            if not objects:
                self._remember_if_final(job)
                continue
            with self.ctx.db.session() as session:
                referenced = set()
                for object_key, side_key in session.execute(
                        select(Output.object_key, Output.sidecar_key).where(Output.job_id == job.id)).all():
                    referenced |= {object_key, side_key}
                current = session.execute(select(Job.status, Job.attempt, Job.resume_key)
                                          .where(Job.id == job.id)).one_or_none()
            if current is not None and current.resume_key and (current.status in LIVE or current.status == JobStatus.queued.value):
                referenced.add(current.resume_key)  # the checkpoint its next attempt continues from
            young = 0
            for stored in objects:
                written_by = attempt_of_key(stored.key)
                if written_by is None or stored.key in referenced:
                    continue
                if current is not None and current.status in LIVE and written_by[1] == current.attempt:
                    continue  # a worker is writing these right now
                if now - _aware(stored.modified) < grace:
                    young += 1
                    continue
                self.ctx.storage.delete(stored.key)
                report.deleted.append(stored.key)
            report.kept_young += young
            if not young:
                self._remember_if_final(job)
        if report.deleted:
            logger.info("janitor deleted %d object(s) of attempts that did not complete", len(report.deleted))
        return report

    def prune_throughput(self, now: dt.datetime | None = None) -> int:
        """Campaigns' finished-work buckets older than any ETA window reaches (farm.tallies)."""
        from farm import tallies
        from farm.services.campaign_progress import WINDOWS_S

        older_than = (now or utcnow()) - dt.timedelta(seconds=2 * WINDOWS_S[-1])
        with self.ctx.db.transaction() as session:
            return tallies.prune_throughput(session, older_than)

    def _remember_if_final(self, job) -> None:
        if job.status not in LIVE and job.status != JobStatus.queued.value:
            self._clean[job.id] = job.attempt

    def run(self, stop: threading.Event, active: Callable[[], bool] = lambda: True) -> None:
        """Sweep every FARM_JANITOR_INTERVAL_S while ``active()`` (leadership)."""
        interval = self.ctx.settings.janitor_interval_s
        while not stop.wait(interval):
            if not active():
                continue
            try:
                self.sweep()
                self.prune_throughput()
            except (ServiceError, StorageError) as exc:
                logger.warning("janitor sweep skipped: %s", exc)
            except Exception as exc:
                if classify_database_error(exc) is None:
                    logger.exception("janitor sweep failed")
                else:
                    logger.warning("janitor sweep skipped, the database is unavailable: %s", exc)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
