"""The live scheduler's queue, kept across passes and brought up to date
from the rows that changed (issue 23).

Reading every queued job each pass costs in the length of the queue; showing
the policy only the first few thousand makes a large farm look idle-bound
(docs/architecture.md). A ``LiveQueue`` instead keeps a ``JobQueue`` of the
whole queue and, each pass, reads only the job rows whose ``updated_at`` is
at or after the previous read's start (or the start of the oldest
transaction that had written and not committed then, on Postgres), less
``LOOKBACK_S`` (a row written on a clock a little behind ours, or whose
commit lagged, is still seen). Every job state change goes through ``farm.states``,
which sets ``updated_at``; a row read is applied idempotently (queued: put in
or replaced where it changed; left the queue: taken out), so a row read twice
is harmless.

A full read of the queue replaces the kept one on the first pass, after
``invalidate`` (leadership gained, a pass that failed), when the set of
paused campaigns changed (pausing or resuming one changes which of its jobs
wait, not their rows) and every ``FULL_READ_EVERY_S`` (what changes no job
row: a model's size, a user's team). A lighter safety net (a clock far
behind, a commit that lagged past the look-back) reads queued jobs' ids and
``updated_at`` and reads in full only the rows that differ from the kept
queue's: one of ``SAFETY_NET_SLICES`` slices of the id space each
``RESYNC_EVERY_S`` / ``SAFETY_NET_SLICES``, so every job is checked every
``RESYNC_EVERY_S`` and no pass stalls on a read of the whole queue.
What the kept queue gets wrong until then can cost a slot for a pass, never a
job: ``states.assign_job`` is a conditional UPDATE that refuses a job that is
no longer queued at that attempt, and the scheduler then drops it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Hashable

from sqlalchemy import func, or_, select, text

from farm.costs import estimate_render_s
from farm.families import refiner_names
from farm.models import Campaign, CampaignStatus, Job, JobStatus, ModelEntry, User
from farm.quantization import needs_cuda as quantization_needs_cuda
from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import QueuedJob

# How far before the previous read's start a pass reads changed rows again.
LOOKBACK_S = 2.0
# The safety net: every queued job's updated_at compared with the kept
# queue's, and what differs read in full ...
RESYNC_EVERY_S = 120.0
# ... a slice of the id space at a time (ids are random: slices of equal size).
SAFETY_NET_SLICES = 16
# ... and, for what changes no job row (a model's size, a user's team), a
# full read of the queue.
FULL_READ_EVERY_S = 1800.0

_QUEUED = JobStatus.queued.value


def id_slice(index: int, slices: int) -> tuple[uuid.UUID, uuid.UUID | None]:
    """The ids of slice ``index`` of ``slices``: [low, high), high None for the last (ids compare as 128-bit
    numbers in Python, as 32 hex digits in SQLite and as bytes in Postgres: the same order)."""
    step = (1 << 128) // slices
    high = None if index == slices - 1 else uuid.UUID(int=(index + 1) * step)
    return uuid.UUID(int=index * step), high


def queue_order(job: QueuedJob) -> tuple:
    """Order within a priority level: age, then id (as the full read orders rows)."""
    return job.queued_at, str(job.id)


def _queued_columns():
    return select(
        Job.id, Job.attempt, Job.user_id, Job.model_id, Job.width, Job.height, Job.steps, Job.priority,
        Job.created_at, Job.excluded_workers, ModelEntry.family, ModelEntry.vram_gb, User.team_id, User.role,
        Job.params["refiner"]["model"].as_string().label("refiner_id"),
        Job.params["reference_pixels"].as_integer().label("reference_pixels"),
        ModelEntry.quantization["format"].as_string().label("quantization"), Job.campaign_id,
        func.coalesce(Job.deadline, Campaign.deadline).label("deadline"), Job.status, Job.updated_at,
        Campaign.status.label("campaign_status"),
    ).join(ModelEntry, ModelEntry.id == Job.model_id).join(User, User.id == Job.user_id).outerjoin(
        Campaign, Campaign.id == Job.campaign_id)


def queued_rows_query(limit: int | None = None):
    """Every job waiting to be placed (not in a paused campaign), in queue order."""
    query = (_queued_columns()
             .where(Job.status == _QUEUED, or_(Job.campaign_id.is_(None), Campaign.status != CampaignStatus.paused.value))
             .order_by(Job.priority.desc(), Job.created_at, Job.id))
    return query if limit is None else query.limit(limit)


@dataclass
class SyncReport:
    full: bool  # the whole queue was read
    rows: int  # job rows read in full
    verified: bool = False  # the safety net compared every queued job's updated_at


class LiveQueue:
    """The whole queue, kept between passes (module docstring)."""

    def __init__(self) -> None:
        self.queue = JobQueue()
        self._roles: dict[Hashable, str] = {}
        self._stamps: dict[Hashable, dt.datetime] = {}  # job id -> updated_at as last read
        # Counts the scheduler reads every pass without walking the queue.
        self.depth: Counter = Counter()  # (model id, submitting user's role) -> queued jobs
        self.teams: Counter = Counter()  # team id -> queued jobs
        self.deadline_campaigns: Counter = Counter()  # campaign id -> queued jobs with a deadline
        self._since: dt.datetime | None = None  # the previous read's start (scheduler clock)
        self._resync_due = float("-inf")
        self._slice = 0  # the slice of the id space the safety net checks next
        self._full_due = float("-inf")
        self._paused: frozenset = frozenset()  # campaigns paused at the previous read

    def invalidate(self) -> None:
        """The next sync reads the whole queue."""
        self._since = None

    def sync(self, session, now: dt.datetime) -> SyncReport:
        """Bring the kept queue up to date; ``now`` is taken before the read."""
        since = self._since
        # Pausing or resuming a campaign changes which of its jobs wait, not their rows.
        paused = frozenset(session.execute(select(Campaign.id).where(Campaign.status == CampaignStatus.paused.value)).scalars())
        full = since is None or paused != self._paused or time.monotonic() >= self._full_due
        self._paused = paused
        refiner_gb = dict(session.execute(select(ModelEntry.id, ModelEntry.vram_gb)
                                          .where(ModelEntry.family.in_(refiner_names()))).all())
        verified = False
        if full:
            rows = session.execute(queued_rows_query()).all()
            self._replace([(row, self._job(row, refiner_gb)) for row in rows])
            self._resync_due = time.monotonic() + RESYNC_EVERY_S / SAFETY_NET_SLICES
            self._full_due = time.monotonic() + FULL_READ_EVERY_S
        else:
            rows = session.execute(
                _queued_columns().where(Job.updated_at >= since - dt.timedelta(seconds=LOOKBACK_S),
                                        # A row that left the queue did so in its latest change (it is
                                        # then final, or assigned by this scheduler, which takes it out
                                        # itself); a running job's progress is none of ours.
                                        or_(Job.status == _QUEUED, Job.previous_status == _QUEUED))
            ).all()
            # In queue order, so that new jobs (the most) go at the ends of their levels.
            for row in sorted(rows, key=lambda row: (row.created_at, str(row.id))):
                self._apply(row, refiner_gb)
            if time.monotonic() >= self._resync_due:
                slices = max(1, SAFETY_NET_SLICES)
                self._slice %= slices
                rows = [*rows, *self._verify(session, refiner_gb, *id_slice(self._slice, slices))]
                self._slice += 1
                self._resync_due = time.monotonic() + RESYNC_EVERY_S / slices
                verified = True
        # A session left open for longer than the resync interval does not hold
        # every read back: the safety net finds its rows once it commits.
        oldest = self._oldest_open_write(session) or now
        self._since = max(min(now, oldest), now - dt.timedelta(seconds=RESYNC_EVERY_S))
        return SyncReport(full=full, rows=len(rows), verified=verified)

    def _verify(self, session, refiner_gb: dict, low: uuid.UUID, high: uuid.UUID | None) -> list:
        """The safety net for the jobs whose id is in [low, high) (None: no end):
        read their ids and ``updated_at`` (two columns, no join but the
        campaign's status), take out what no longer waits, and read in full
        only the rows the kept queue has not seen as they are now. Returns
        those rows."""
        in_slice = [Job.id >= low] + ([Job.id < high] if high is not None else [])
        stamps = dict(session.execute(
            select(Job.id, Job.updated_at).outerjoin(Campaign, Campaign.id == Job.campaign_id)
            .where(Job.status == _QUEUED, *in_slice,
                   or_(Job.campaign_id.is_(None), Campaign.status != CampaignStatus.paused.value))
        ).all())
        for job_id in [job_id for job_id in self._stamps
                       if job_id not in stamps and low <= job_id and (high is None or job_id < high)]:
            self._remove(job_id)
        stale = [job_id for job_id, stamp in stamps.items() if self._stamps.get(job_id) != stamp]
        rows = []
        for start in range(0, len(stale), 1000):
            rows += session.execute(_queued_columns().where(Job.id.in_(stale[start:start + 1000]))).all()
        for row in sorted(rows, key=lambda row: (row.created_at, str(row.id))):
            self._apply(row, refiner_gb)
        return rows

    @staticmethod
    def _oldest_open_write(session) -> dt.datetime | None:
        """When the oldest transaction that has written and not yet committed
        began (Postgres; None elsewhere or when there is none).

        Its rows carry ``updated_at`` from after that start but become
        visible only at its commit, which may be long after (a campaign of
        thousands of jobs inserted in one transaction): the next read starts
        there, so they are read once they commit. Sessions of the farm's own
        database role are visible without extra privileges.
        """
        if session.bind.dialect.name != "postgresql":
            return None  # SQLite: one writer, and the embedded farm's commits are short
        return session.execute(text(
            "SELECT min(xact_start) FROM pg_stat_activity"
            " WHERE backend_xid IS NOT NULL AND datname = current_database() AND pid <> pg_backend_pid()")).scalar()

    def discard(self, job_id: Hashable) -> None:
        """Take a job out (this scheduler assigned it, or the assignment was refused)."""
        if job_id in self.queue:
            self._remove(job_id)

    def _apply(self, row, refiner_gb: dict) -> None:
        waiting = row.status == _QUEUED and row.campaign_status != CampaignStatus.paused.value
        kept = self.queue.get(row.id)
        if not waiting:
            if kept is not None:
                self._remove(row.id)
            return
        job = self._job(row, refiner_gb)
        if kept == job and self._roles[row.id] == row.role:
            self._stamps[row.id] = row.updated_at
            return
        if kept is not None:
            self._remove(row.id)
        self._add(job, row.role, row.updated_at)

    def _replace(self, pairs: list) -> None:
        self.queue = JobQueue(job for _, job in pairs)  # rows come in queue order: indexed in bulk
        self._roles = {job.id: row.role for row, job in pairs}
        self._stamps = {job.id: row.updated_at for row, job in pairs}
        self.depth = Counter((job.model_id, row.role) for row, job in pairs)
        self.teams = Counter(job.team_id for _, job in pairs if job.team_id is not None)
        self.deadline_campaigns = Counter(job.campaign_id for _, job in pairs
                                          if job.campaign_id is not None and job.deadline is not None)

    def _add(self, job: QueuedJob, role: str, stamp: dt.datetime) -> None:
        self.queue.add(job, queue_order)
        self._roles[job.id] = role
        self._stamps[job.id] = stamp
        self._count(job, role, 1)

    def _remove(self, job_id: Hashable) -> None:
        job = self.queue.remove(job_id)
        del self._stamps[job_id]
        self._count(job, self._roles.pop(job_id), -1)

    def _count(self, job: QueuedJob, role: str, step: int) -> None:
        for counter, key, counted in ((self.depth, (job.model_id, role), True),
                                      (self.teams, job.team_id, job.team_id is not None),
                                      (self.deadline_campaigns, job.campaign_id,
                                       job.campaign_id is not None and job.deadline is not None)):
            if counted:
                counter[key] += step
                if not counter[key]:
                    del counter[key]

    @staticmethod
    def _job(r, refiner_gb: dict) -> QueuedJob:
        return QueuedJob(
            id=r.id, attempt=r.attempt, user_id=r.user_id, model_id=r.model_id, family=r.family,
            model_gb=r.vram_gb + (refiner_gb.get(r.refiner_id, 0.0) if r.refiner_id else 0.0),
            width=r.width, height=r.height, priority=r.priority, queued_at=r.created_at.timestamp(),
            excluded_workers=frozenset(r.excluded_workers or ()), team_id=r.team_id,
            est_seconds=estimate_render_s(r.family, r.width, r.height, r.steps),
            needs_cuda=quantization_needs_cuda({"format": r.quantization}),
            deadline=r.deadline.timestamp() if r.deadline is not None else None, campaign_id=r.campaign_id,
            reference_pixels=r.reference_pixels or 0,
        )
