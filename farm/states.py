"""The job state machine: the one module that changes ``Job.status``.

    queued -> assigned -> running -> succeeded | failed | canceled
    assigned/running -> queued  (lease expired or worker lost; attempt + 1)
    failed -> queued            (a user's explicit retry; attempt + 1)

Every change is one conditional ``UPDATE ... WHERE id = :id AND status IN
(allowed sources) [AND attempt = :attempt]``, so two writers can never both win
and a write from a stale attempt (fencing) changes nothing. The same UPDATE
sets ``previous_status`` from the old row and returns it, so the campaign
tallies (farm.tallies) learn what each job left without another query. The
functions run inside the caller's transaction and do not commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import Integer, String, column, or_, select, update, values
from sqlalchemy.orm import Session

from farm import tallies
from farm.models import FINAL_STATUSES, Campaign, CampaignStatus, Job, JobStatus, utcnow

logger = logging.getLogger(__name__)

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.assigned, S.canceled, S.failed}),
    S.assigned: frozenset({S.running, S.queued, S.canceled, S.failed}),
    S.running: frozenset({S.succeeded, S.failed, S.canceled, S.queued}),
    S.succeeded: frozenset(),
    # A user's explicit retry (a campaign's "retry failed") starts a new attempt.
    S.failed: frozenset({S.queued}),
    S.canceled: frozenset(),
}


class JobStateError(Exception):
    """A job could not make the asked transition."""


class StaleAttemptError(JobStateError):
    """A write carried an attempt that is no longer the job's current one."""


class InvalidTransitionError(JobStateError):
    """The job is not in a state the transition may start from."""


class JobNotFoundError(JobStateError):
    pass


def sources_of(target: JobStatus) -> list[str]:
    return [source.value for source, targets in TRANSITIONS.items() if target in targets]


def can_transition(source: JobStatus | str, target: JobStatus | str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(source)]


def _transition(
    session: Session,
    job_id: uuid.UUID,
    target: JobStatus,
    *,
    attempt: int | None = None,
    worker_id: str | None = None,
    values: dict[str, Any] | None = None,
):
    """The one UPDATE of a transition; returns the changed job's _TALLIED row."""
    conditions = [Job.id == job_id, Job.status.in_(sources_of(target))]
    if attempt is not None:
        conditions.append(Job.attempt == attempt)
    if worker_id is not None:
        conditions.append(Job.worker_id == worker_id)
    now = utcnow()
    changed = session.execute(
        update(Job)
        .where(*conditions)
        .values(previous_status=Job.status, status=target.value, updated_at=now, **(values or {}))
        .returning(*_TALLIED)
        .execution_options(synchronize_session=False)
    ).all()
    if len(changed) == 1:
        tallies.note_transitions(session, target, changed, now)
        logger.debug("job %s -> %s (attempt %s)", job_id, target.value, attempt)
        return changed[0]
    _raise_refusal(session, job_id, target, attempt, worker_id)


# What a transition returns for the campaign tallies.
_TALLIED = (Job.campaign_id, Job.previous_status, Job.num_images, Job.reserved_gpu_seconds)
_PAUSED_CAMPAIGNS = select(Campaign.id).where(Campaign.status == CampaignStatus.paused.value)


def _raise_refusal(session, job_id, target, attempt, worker_id) -> None:
    row = session.execute(select(Job.status, Job.attempt, Job.worker_id).where(Job.id == job_id)).one_or_none()
    if row is None:
        raise JobNotFoundError(f"job {job_id} does not exist")
    if attempt is not None and row.attempt != attempt:
        raise StaleAttemptError(f"job {job_id}: attempt {attempt} is stale, the job is on attempt {row.attempt}")
    if row.status not in sources_of(target):
        raise InvalidTransitionError(f"job {job_id} is {row.status}; it cannot become {target.value}")
    if target is S.assigned and session.execute(
            select(Job.id).where(Job.id == job_id, Job.campaign_id.in_(_PAUSED_CAMPAIGNS))).first() is not None:
        raise InvalidTransitionError(f"job {job_id}: its campaign is paused; none of its jobs starts until it is resumed")
    raise StaleAttemptError(f"job {job_id}: worker {worker_id} no longer holds it (held by {row.worker_id})")


def assign_job(session: Session, job_id: uuid.UUID, attempt: int, worker_id: str, lease_s: float) -> uuid.UUID | None:
    """Assign the attempt to the worker; returns the job's campaign (None outside campaigns). One row of
    ``assign_jobs``; a refusal raises the JobStateError that says why."""
    assigned, refused = assign_jobs(session, [(job_id, attempt, worker_id)], lease_s)
    if job_id in refused:
        raise refused[job_id]
    return assigned[job_id]


# Rows of one assign_jobs UPDATE: three bound values each, well under SQLite's and Postgres' limits.
ASSIGN_BATCH = 500


def assign_jobs(session: Session, assignments, lease_s: float) -> tuple[dict[uuid.UUID, uuid.UUID | None], dict[uuid.UUID, JobStateError]]:
    """Assign many attempts at once: ``assignments`` are (job id, attempt, worker id).

    One ``UPDATE ... FROM wanted`` per ASSIGN_BATCH rows (``wanted`` their VALUES), with the same
    conditions as ``assign_job`` row by row (queued, at that attempt, not in a paused campaign), so a
    scheduler's pass of 1,000 placements is two statements, not 1,000.
    Returns ({job id: its campaign or None} for the jobs assigned, {job id:
    the JobStateError that says why not} for the others).
    """
    now = utcnow()
    assigned: dict[uuid.UUID, uuid.UUID | None] = {}
    rows = list(assignments)
    for start in range(0, len(rows), ASSIGN_BATCH):
        chunk = rows[start:start + ASSIGN_BATCH]
        wanted = values(column("job_id", Job.id.type), column("attempt", Integer), column("worker", String),
                        name="wanted").data(chunk).cte("wanted")  # WITH wanted(...) AS (VALUES ...): SQLite and Postgres
        changed = session.execute(
            update(Job)
            .where(Job.id == wanted.c.job_id, Job.attempt == wanted.c.attempt, Job.status.in_(sources_of(S.assigned)),
                   # A pass that read the queue before a pause does not start the paused campaign's jobs.
                   or_(Job.campaign_id.is_(None), Job.campaign_id.not_in(_PAUSED_CAMPAIGNS)))
            .values(previous_status=Job.status, status=S.assigned.value, updated_at=now, worker_id=wanted.c.worker,
                    assigned_at=now, lease_expires_at=now + dt.timedelta(seconds=lease_s))
            .returning(Job.id, *_TALLIED)
            .execution_options(synchronize_session=False)
        ).all()
        tallies.note_transitions(session, S.assigned, [row[1:] for row in changed], now)
        assigned.update((row[0], row[1]) for row in changed)
    refused = {}
    for job_id, attempt, worker_id in rows:
        if job_id not in assigned:
            try:
                _raise_refusal(session, job_id, S.assigned, attempt, None)  # always raises: says why
            except JobStateError as exc:
                refused[job_id] = exc
    return assigned, refused


def start_job(session: Session, job_id: uuid.UUID, attempt: int, worker_id: str, lease_s: float,
              instance_id: str | None = None) -> None:
    """The worker process ``instance_id`` starts the attempt and owns its lease."""
    now = utcnow()
    _transition(
        session,
        job_id,
        S.running,
        attempt=attempt,
        worker_id=worker_id,
        values={"started_at": now, "lease_expires_at": now + dt.timedelta(seconds=lease_s), "worker_instance": instance_id},
    )


def record_progress(session: Session, job_id: uuid.UUID, attempt: int, step: int, total: int, eta_s: float | None) -> bool:
    """Write progress of a running attempt. False means stop: canceled or stale."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == S.running.value)
        # updated_at marks state changes (the kept queue and the janitor read it); a progress write, four a
        # second per render, leaves it, so that Postgres updates the row in place (HOT) and no index of the
        # jobs table grows (bench/progress_writes.py). It has onupdate=utcnow: leaving it takes saying so.
        .values(progress_step=step, progress_total=total, eta_s=eta_s, updated_at=Job.updated_at)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def request_preemption(session: Session, job_id: uuid.UUID, attempt: int, max_preemptions: int) -> bool:
    """Ask a running attempt to stop at its next step boundary and hand the
    job back with a checkpoint (``preempt_job``). False when the attempt is
    no longer running, was already asked, or was preempted ``max_preemptions``
    times already."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == S.running.value,
               Job.preempt_requested.is_(False), Job.preemptions < max_preemptions)
        .values(preempt_requested=True, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def preempt_requested(session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether the scheduler asked this running attempt to stop (read with its progress writes)."""
    return bool(session.execute(
        select(Job.preempt_requested).where(Job.id == job_id, Job.attempt == attempt, Job.status == S.running.value)
    ).scalar_one_or_none())


def preempt_job(session: Session, job_id: uuid.UUID, attempt: int, resume_key: str, reason: str, max_attempts: int) -> JobStatus:
    """A preempted attempt hands its job back (not charged) with the key of its
    checkpoint: the next attempt continues from there."""
    preemptions = session.execute(select(Job.preemptions).where(Job.id == job_id)).scalar_one_or_none() or 0
    return requeue_job(session, job_id, attempt, reason, max_attempts, charge=False,
                       values={"resume_key": resume_key, "preemptions": preemptions + 1})


def complete_job(session: Session, job_id: uuid.UUID, attempt: int, worker_id: str, gpu_seconds: float | None = None) -> None:
    _transition(
        session,
        job_id,
        S.succeeded,
        attempt=attempt,
        worker_id=worker_id,
        values={"finished_at": utcnow(), "lease_expires_at": None, "eta_s": 0.0, "error": None, "gpu_seconds": gpu_seconds,
                "preempt_requested": False, "resume_key": None},
    )
    _note_deadline_miss(session, job_id)
    if gpu_seconds is not None:
        from farm.services.quotas import record_settlement

        record_settlement(session, _accounting_row(session, job_id), gpu_seconds)


def _note_deadline_miss(session: Session, job_id: uuid.UUID) -> None:
    """A job that ended after its own deadline records by how much (issue 23); a campaign's is its campaign's."""
    row = session.execute(select(Job.deadline, Job.finished_at).where(Job.id == job_id)).one_or_none()
    if row is not None and row.deadline is not None and row.finished_at > row.deadline:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(deadline_missed_s=(row.finished_at - row.deadline).total_seconds())
                        .execution_options(synchronize_session=False))


def _accounting_row(session: Session, job_id: uuid.UUID):
    return session.execute(
        select(Job.id, Job.user_id, Job.campaign_id, Job.model_id, Job.num_images, Job.reserved_gpu_seconds).where(Job.id == job_id)
    ).one()


def _refund(session: Session, job_ids) -> None:
    from farm.services.quotas import record_refunds

    rows = session.execute(
        select(Job.id, Job.user_id, Job.campaign_id, Job.model_id, Job.num_images, Job.reserved_gpu_seconds).where(Job.id.in_(job_ids))
    ).all()
    if rows:
        record_refunds(session, rows)


def fail_job(session: Session, job_id: uuid.UUID, attempt: int | None, error: str) -> None:
    _transition(
        session,
        job_id,
        S.failed,
        attempt=attempt,
        values={"finished_at": utcnow(), "lease_expires_at": None, "error": error[:4000]},
    )
    _refund(session, [job_id])


def cancel_job(session: Session, job_id: uuid.UUID) -> None:
    """A user's cancel: no attempt check; a running render sees it at its next step."""
    _transition(session, job_id, S.canceled, values={"finished_at": utcnow(), "lease_expires_at": None})
    _refund(session, [job_id])


def cancel_campaign_jobs(session: Session, campaign_id: uuid.UUID) -> int:
    """Cancel every unfinished job of a campaign at once; running renders stop at their next step."""
    # RETURNING names exactly the jobs this statement canceled: one that
    # finished meanwhile is neither canceled nor refunded.
    now = utcnow()
    changed = session.execute(
        update(Job)
        .where(Job.campaign_id == campaign_id, Job.status.in_(sources_of(S.canceled)))
        .values(previous_status=Job.status, status=S.canceled.value, finished_at=now, lease_expires_at=None, updated_at=now)
        .returning(Job.id, *_TALLIED)
        .execution_options(synchronize_session=False)
    ).all()
    tallies.note_transitions(session, S.canceled, [row[1:] for row in changed], now)
    ids = [row[0] for row in changed]
    if ids:
        _refund(session, ids)
    return len(ids)


def requeue_job(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    reason: str,
    max_attempts: int,
    exclude_worker: str | None = None,
    charge: bool = True,
    values: dict[str, Any] | None = None,
) -> JobStatus:
    """Return an assigned or running attempt to the queue with attempt + 1.

    ``charge``: the attempt ended in an error or a lost worker and counts
    against ``max_attempts``; a job that has used them all fails with the
    reason instead. A hand-back (a worker stopping) is not charged.
    ``values``: more columns to set (a preemption's checkpoint key).
    A request to stop that the attempt did not act on ends with it.
    Returns the status the job ended in.
    """
    failures = session.execute(select(Job.failures).where(Job.id == job_id)).scalar_one_or_none() or 0
    if charge:
        failures += 1
        if failures >= max_attempts:
            fail_job(session, job_id, attempt, f"gave up after {failures} failed attempts: {reason}")
            return S.failed
    values: dict[str, Any] = {
        "attempt": attempt + 1,
        "failures": failures,
        "worker_id": None,
        "worker_instance": None,
        "lease_expires_at": None,
        "assigned_at": None,
        "started_at": None,
        "progress_step": 0,
        "progress_total": 0,
        "eta_s": None,
        "error": reason[:4000],
        "preempt_requested": False,
        **(values or {}),
    }
    if exclude_worker is not None:
        excluded = session.execute(select(Job.excluded_workers).where(Job.id == job_id)).scalar_one()
        values["excluded_workers"] = sorted(set(excluded or []) | {exclude_worker})
    _transition(session, job_id, S.queued, attempt=attempt, values=values)
    logger.info("job %s re-queued as attempt %d: %s", job_id, attempt + 1, reason)
    return S.queued


def retry_failed_jobs(session: Session, job_ids) -> int:
    """Queue failed jobs again, each as a new attempt (quota is reserved by the caller)."""
    now = utcnow()
    changed = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == S.failed.value)
        .values(previous_status=Job.status, status=S.queued.value, attempt=Job.attempt + 1, failures=0, worker_id=None,
                worker_instance=None, error=None, finished_at=None,
                assigned_at=None, started_at=None, progress_step=0, progress_total=0, eta_s=None, gpu_seconds=None,
                excluded_workers=[], updated_at=now)
        .returning(*_TALLIED)
        .execution_options(synchronize_session=False)
    ).all()
    tallies.note_transitions(session, S.queued, changed, now)
    return len(changed)


def renew_lease(session: Session, job_id: uuid.UUID, attempt: int, instance_id: str, lease_s: float) -> bool:
    """Extend the lease of the one attempt a worker process is running (its
    heartbeat). False: the attempt is no longer this process's to run.

    Only work in hand is renewed: a job whose task ended without a final
    state, or an assigned job whose Celery message was lost, keeps the lease
    it has and is re-queued when it expires.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == S.running.value, Job.worker_instance == instance_id)
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def requeue_predecessor_jobs(session: Session, worker_id: str, instance_id: str, max_attempts: int) -> int:
    """A worker process registering under ``worker_id`` hands back at once the
    jobs an earlier process of that name was running: that process is gone
    (or superseded), so their leases would only run out."""
    rows = session.execute(
        select(Job.id, Job.attempt).where(
            Job.worker_id == worker_id, Job.status == S.running.value,
            or_(Job.worker_instance.is_(None), Job.worker_instance != instance_id),
        )
    ).all()
    for row in rows:
        requeue_job(session, row.id, row.attempt, f"worker {worker_id} restarted while running it", max_attempts)
    return len(rows)


def is_final(status: str) -> bool:
    return JobStatus(status) in FINAL_STATUSES
