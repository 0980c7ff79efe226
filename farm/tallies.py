"""Campaign tallies: what a campaign's progress needs, kept as its jobs change
state, so reading it costs a few rows however many jobs the campaign has
(issue 19: a 100,000-job campaign's page within 2x of a 100-job one's).

- ``campaign_tallies``: a row per campaign and status (all six made at
  submission) with its jobs, images and estimated work (GPU seconds), and the
  first and latest time a job entered that status;
- ``campaign_throughput``: the work its jobs finished (succeeded or failed)
  per ``BUCKET_S`` seconds, for recent throughput.

farm.states (the one module that changes ``Job.status``) reports each
transition here with what the job left (``jobs.previous_status``, set by the
same UPDATE) and the session collects the changes; they are written just
before the transaction commits, in one sorted order, so two transactions
never wait on each other's tallies in a cycle, and a transaction that rolls
back writes none. Jobs outside campaigns have no tallies.

:func:`recount` rebuilds tallies from the jobs themselves: for rows written
behind the state machine's back (a bulk load, a repair), and as the
reference the tests compare the running tallies with.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from sqlalchemy import case, delete, event, func, select, update
from sqlalchemy.orm import Session

from farm.models import CampaignTally, CampaignThroughput, Job, JobStatus

# Finished work is kept per BUCKET_S seconds: fine enough that the shortest
# ETA window (30 s) is off by at most a fifteenth of a bucket's work.
BUCKET_S = 2
WORKED = (JobStatus.succeeded.value, JobStatus.failed.value)  # finished jobs that took a worker's time
_KEY = "farm.tallies"


def work_of(reserved_gpu_seconds: float | None) -> float:
    """A job's weight: its estimated GPU seconds; rows from before estimates were stored weigh one second."""
    return reserved_gpu_seconds if reserved_gpu_seconds and reserved_gpu_seconds > 0 else 1.0


def bucket_of(when: dt.datetime) -> dt.datetime:
    epoch = when.timestamp()
    return dt.datetime.fromtimestamp(epoch - epoch % BUCKET_S, dt.timezone.utc)


@dataclass
class _Change:
    jobs: int = 0
    images: int = 0
    work: float = 0.0
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None

    def add(self, jobs: int, images: int, work: float, first_at: dt.datetime | None = None,
            last_at: dt.datetime | None = None) -> None:
        self.jobs += jobs
        self.images += images
        self.work += work
        if first_at is not None:
            self.first_at = min(self.first_at, first_at) if self.first_at else first_at
        if last_at is not None:
            self.last_at = max(self.last_at, last_at) if self.last_at else last_at


@dataclass
class _Pending:
    tallies: dict[tuple[uuid.UUID, str], _Change] = field(default_factory=lambda: defaultdict(_Change))
    throughput: dict[tuple[uuid.UUID, dt.datetime], list] = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))


def _pending(session: Session) -> _Pending:
    return session.info.setdefault(_KEY, _Pending())


def create_rows(session: Session, campaign_id: uuid.UUID, jobs: Iterable[tuple[int, float]]) -> None:
    """A new campaign's tallies: every status, its jobs (num_images, reserved GPU seconds) queued."""
    jobs = list(jobs)
    rows = [dict(campaign_id=campaign_id, status=status.value, jobs=0, images=0, work=0.0) for status in JobStatus]
    queued = rows[[s.value for s in JobStatus].index(JobStatus.queued.value)]
    queued.update(jobs=len(jobs), images=sum(images for images, _ in jobs), work=sum(work_of(w) for _, w in jobs))
    session.execute(CampaignTally.__table__.insert(), rows)


def note_transitions(session: Session, target: JobStatus, rows, when: dt.datetime) -> None:
    """Jobs that just moved to ``target``: rows of (campaign_id, previous_status, num_images, reserved_gpu_seconds)."""
    pending = _pending(session)
    for campaign_id, previous, images, reserved in rows:
        if campaign_id is None or previous is None or previous == target.value:
            continue
        work = work_of(reserved)
        pending.tallies[(campaign_id, previous)].add(-1, -images, -work)
        # The running row keeps the campaign's first start; the worked rows their latest finish.
        worked = target.value in WORKED
        pending.tallies[(campaign_id, target.value)].add(1, images, work, first_at=when if target is JobStatus.running else None,
                                                         last_at=when if worked else None)
        if worked:
            counts = pending.throughput[(campaign_id, bucket_of(when))]
            counts[0] += 1
            counts[1] += work


def _apply(session: Session) -> None:
    pending: _Pending | None = session.info.pop(_KEY, None)
    if pending is None:
        return
    table = CampaignTally.__table__
    for (campaign_id, status), change in sorted(pending.tallies.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        values = dict(jobs=table.c.jobs + change.jobs, images=table.c.images + change.images, work=table.c.work + change.work)
        if change.first_at is not None:
            values["first_at"] = case((table.c.first_at.is_(None) | (table.c.first_at > change.first_at), change.first_at),
                                      else_=table.c.first_at)
        if change.last_at is not None:
            values["last_at"] = case((table.c.last_at.is_(None) | (table.c.last_at < change.last_at), change.last_at),
                                     else_=table.c.last_at)
        session.execute(update(table).where(table.c.campaign_id == campaign_id, table.c.status == status).values(**values))
    for (campaign_id, bucket), (jobs, work) in sorted(pending.throughput.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        _add_throughput(session, campaign_id, bucket, jobs, work)


def _add_throughput(session: Session, campaign_id: uuid.UUID, bucket: dt.datetime, jobs: int, work: float) -> None:
    table = CampaignThroughput.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table).values(campaign_id=campaign_id, bucket=bucket, jobs=jobs, work=work)
    session.execute(statement.on_conflict_do_update(
        index_elements=[table.c.campaign_id, table.c.bucket],
        set_={"jobs": table.c.jobs + statement.excluded.jobs, "work": table.c.work + statement.excluded.work}))


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _apply(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction) -> None:
    # Rolled back or closed without a commit: its changes never happened.
    if transaction.parent is None:
        session.info.pop(_KEY, None)


def prune_throughput(session: Session, older_than: dt.datetime) -> int:
    """Drop buckets no throughput window reaches any more (the janitor's pass)."""
    return session.execute(delete(CampaignThroughput).where(CampaignThroughput.bucket < older_than)).rowcount


def recount(session: Session, campaign_ids: list[uuid.UUID], since: dt.datetime | None = None) -> None:
    """Rebuild these campaigns' tallies and throughput from their jobs (buckets
    for jobs finished after ``since``; all of them without it)."""
    if not campaign_ids:
        return
    session.info.pop(_KEY, None)  # what the jobs say replaces any change noted so far
    session.execute(delete(CampaignTally).where(CampaignTally.campaign_id.in_(campaign_ids)))
    session.execute(delete(CampaignThroughput).where(CampaignThroughput.campaign_id.in_(campaign_ids)))
    work = case((Job.reserved_gpu_seconds > 0, Job.reserved_gpu_seconds), else_=1.0)
    found = {(cid, status): (count, images, total, last) for cid, status, count, images, total, last in session.execute(
        select(Job.campaign_id, Job.status, func.count(), func.sum(Job.num_images), func.sum(work), func.max(Job.finished_at))
        .where(Job.campaign_id.in_(campaign_ids)).group_by(Job.campaign_id, Job.status))}
    first_start = dict(session.execute(select(Job.campaign_id, func.min(Job.started_at))
                                       .where(Job.campaign_id.in_(campaign_ids)).group_by(Job.campaign_id)).all())
    rows = []
    for cid in campaign_ids:
        for status in JobStatus:
            count, images, total, last = found.get((cid, status.value), (0, 0, 0.0, None))
            rows.append(dict(campaign_id=cid, status=status.value, jobs=count, images=int(images or 0), work=float(total or 0.0),
                             first_at=first_start.get(cid) if status is JobStatus.running else None,
                             last_at=last if status.value in WORKED else None))
    session.execute(CampaignTally.__table__.insert(), rows)
    finished = select(Job.campaign_id, Job.finished_at, work).where(
        Job.campaign_id.in_(campaign_ids), Job.status.in_(WORKED), Job.finished_at.is_not(None))
    if since is not None:
        finished = finished.where(Job.finished_at >= since)
    buckets: dict[tuple[uuid.UUID, dt.datetime], list] = defaultdict(lambda: [0, 0.0])
    for cid, finished_at, job_work in session.execute(finished):
        counts = buckets[(cid, bucket_of(finished_at))]
        counts[0] += 1
        counts[1] += float(job_work)
    if buckets:
        session.execute(CampaignThroughput.__table__.insert(), [
            dict(campaign_id=cid, bucket=bucket, jobs=jobs, work=total) for (cid, bucket), (jobs, total) in buckets.items()])
