"""Quotas and the usage ledger.

Exact under concurrency: a submission locks the submitter's quota rows (user
and team, ``SELECT … FOR UPDATE``), sums the ledger for the current period,
and inserts its reservation in the same transaction that creates its jobs.
Submissions against the same quota therefore run one after another at that
point, and a limit can never be passed. Completion settles the difference
between measured and reserved GPU seconds; failure and cancellation refund
the reservation. Those two entries are written by the job state machine in
the transaction that changes the job, so the ledger cannot drift from the
jobs.

``max_queued_jobs`` counts the owner's jobs that wait to start: queued and
assigned (a worker has them but has not started), paused campaigns' queued
jobs included. It is checked under the same row locks, after them, so the
count includes every submission that committed before; running jobs are left
to ``max_concurrent_jobs``, which the scheduler enforces.

Refusals carry ``retry_after_s`` (the API's and the dashboard's
``Retry-After``): until the day or month resets for the images and GPU-second
limits, ``QUEUE_RETRY_AFTER_S`` for the queue limit, and
``NOT_BY_WAITING_RETRY_AFTER_S`` where waiting alone cannot lift the refusal
(a per-image limit, or a submission larger than the limit by itself).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session

from farm.models import INTEGER_MAX, Job, JobStatus, Quota, UsageEntry, User, utcnow

logger = logging.getLogger(__name__)

LIMIT_FIELDS = ("images_per_day", "gpu_seconds_per_month", "max_concurrent_jobs", "max_queued_jobs", "max_pixels", "max_steps")
# Jobs that count against max_queued_jobs: waiting to start.
WAITING_STATUSES = (JobStatus.queued.value, JobStatus.assigned.value)
# Retry-After for a full queue: a worker takes a job within seconds of a free
# slot (the scheduler polls every FARM_SCHEDULER_POLL_S and is woken on completion).
QUEUE_RETRY_AFTER_S = 10
# Retry-After where waiting lifts nothing (only a smaller request or an admin
# can): a day, so that clients retrying on their own back off instead of
# hammering; the message says what to change.
NOT_BY_WAITING_RETRY_AFTER_S = 86400


@dataclass(frozen=True)
class Cost:
    """What a submission asks for."""

    jobs: int
    images: int
    gpu_seconds: float
    largest_pixels: int
    most_steps: int

    def as_dict(self) -> dict:
        return {"jobs": self.jobs, "images": self.images, "gpu_seconds": round(self.gpu_seconds, 2)}


class QuotaExceededError(Exception):
    """A submission over a limit (answered with 429)."""

    def __init__(self, limit: str, owner: str, message: str, details: dict, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.owner = owner
        self.details = details
        self.retry_after_s = retry_after_s  # whole seconds before the same request can pass (module docstring)


def day_start(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: dt.datetime) -> dt.datetime:
    return day_start(now).replace(day=1)


def next_month(now: dt.datetime) -> dt.datetime:
    start = month_start(now)
    return (start + dt.timedelta(days=32)).replace(day=1)


def seconds_until(moment: dt.datetime, now: dt.datetime) -> int:
    """Whole seconds from ``now`` to ``moment``, at least 1 (a Retry-After value)."""
    return max(1, math.ceil((moment - now).total_seconds()))


def quotas_for(session: Session, user: User, lock: bool = False) -> list[tuple[str, Quota]]:
    """The user's own quota and their team's, locked for the transaction if asked."""
    query = select(Quota).where((Quota.user_id == user.id) | ((Quota.team_id == user.team_id) if user.team_id else False))
    if lock and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = session.execute(query.order_by(Quota.id)).scalars().all()
    return [("user" if q.user_id is not None else "team", q) for q in rows]


def usage_since(session: Session, since: dt.datetime, *, user_id: int | None = None, team_id: int | None = None) -> tuple[int, float]:
    query = select(func.coalesce(func.sum(UsageEntry.images), 0), func.coalesce(func.sum(UsageEntry.gpu_seconds), 0.0))
    query = query.where(UsageEntry.created_at >= since)
    query = query.where(UsageEntry.user_id == user_id) if user_id is not None else query.where(UsageEntry.team_id == team_id)
    images, gpu_seconds = session.execute(query).one()
    return int(images), float(gpu_seconds)


def waiting_jobs(session: Session, *, user_id: int | None = None, team_id: int | None = None) -> int:
    """The user's (or the team members') jobs that wait to start: queued or assigned."""
    query = select(func.count()).select_from(Job).where(Job.status.in_(WAITING_STATUSES))
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    else:
        query = query.where(Job.user_id.in_(select(User.id).where(User.team_id == team_id)))
    return int(session.execute(query).scalar_one())


def reserve(session: Session, user: User, cost: Cost, *, campaign_id: uuid.UUID | None = None,
            job_id: uuid.UUID | None = None, model_id: str | None = None,
            by_model: dict[str, tuple[int, float]] | None = None) -> None:
    """Check every limit of the user and their team, then record the reservation.

    Must run in the transaction that creates the jobs; raises
    QuotaExceededError (nothing is written) when a limit would be passed.
    ``by_model`` (model -> images, GPU seconds) splits the entry so usage per
    model adds up; without it the whole cost is booked to ``model_id``.
    """
    now = utcnow()
    for owner, quota in quotas_for(session, user, lock=True):
        who = {"user": user.name, "team": user.team.name if user.team else "team"}[owner]
        scope = {"user_id": user.id} if owner == "user" else {"team_id": quota.team_id}
        if quota.max_pixels is not None and cost.largest_pixels > quota.max_pixels:
            raise QuotaExceededError("max_pixels", owner, f"{owner} {who} may render at most {quota.max_pixels} pixels per image; "
                                     f"this asks for {cost.largest_pixels}", {"allowed": quota.max_pixels, "requested": cost.largest_pixels},
                                     retry_after_s=NOT_BY_WAITING_RETRY_AFTER_S)
        if quota.max_steps is not None and cost.most_steps > quota.max_steps:
            raise QuotaExceededError("max_steps", owner, f"{owner} {who} may use at most {quota.max_steps} steps; this asks for {cost.most_steps}",
                                     {"allowed": quota.max_steps, "requested": cost.most_steps}, retry_after_s=NOT_BY_WAITING_RETRY_AFTER_S)
        if quota.max_queued_jobs is not None:
            waiting = waiting_jobs(session, **scope)
            if waiting + cost.jobs > quota.max_queued_jobs:
                alone = cost.jobs > quota.max_queued_jobs
                advice = (f"submit it in parts of at most {quota.max_queued_jobs} jobs" if alone else
                          "submit again when some have started, or cancel jobs that wait")
                raise QuotaExceededError(
                    "max_queued_jobs", owner,
                    f"{owner} {who} is at the max_queued_jobs limit: at most {quota.max_queued_jobs} jobs may wait to start "
                    f"(queued or assigned); {waiting} wait now and this submission adds {cost.jobs}; {advice}",
                    {"allowed": quota.max_queued_jobs, "waiting": waiting, "requested": cost.jobs},
                    retry_after_s=NOT_BY_WAITING_RETRY_AFTER_S if alone else QUEUE_RETRY_AFTER_S)
        if quota.images_per_day is not None:
            used, _ = usage_since(session, day_start(now), **scope)
            if used + cost.images > quota.images_per_day:
                resets = day_start(now) + dt.timedelta(days=1)
                raise QuotaExceededError(
                    "images_per_day", owner,
                    f"{owner} {who} has used {used} of {quota.images_per_day} images today; this submission needs "
                    f"{cost.images} more; the count resets at {resets.isoformat()}",
                    {"allowed": quota.images_per_day, "used": used, "requested": cost.images, "resets_at": resets.isoformat()},
                    retry_after_s=seconds_until(resets, now) if cost.images <= quota.images_per_day else NOT_BY_WAITING_RETRY_AFTER_S)
        if quota.gpu_seconds_per_month is not None:
            _, used_s = usage_since(session, month_start(now), **scope)
            if used_s + cost.gpu_seconds > quota.gpu_seconds_per_month:
                resets = next_month(now)
                raise QuotaExceededError(
                    "gpu_seconds_per_month", owner,
                    f"{owner} {who} has used {used_s:.0f} of {quota.gpu_seconds_per_month:.0f} GPU-seconds this month; this "
                    f"submission needs about {cost.gpu_seconds:.0f} more; the count resets at {resets.isoformat()}",
                    {"allowed": quota.gpu_seconds_per_month, "used": round(used_s, 2), "requested": round(cost.gpu_seconds, 2),
                     "resets_at": resets.isoformat()},
                    retry_after_s=seconds_until(resets, now) if cost.gpu_seconds <= quota.gpu_seconds_per_month
                    else NOT_BY_WAITING_RETRY_AFTER_S)
    parts = by_model or {model_id: (cost.images, cost.gpu_seconds)}
    session.add_all([
        UsageEntry(kind="reserve", user_id=user.id, team_id=user.team_id, job_id=job_id, campaign_id=campaign_id,
                   model_id=model, images=images, gpu_seconds=gpu_seconds)
        for model, (images, gpu_seconds) in parts.items()
    ])


def record_settlement(session: Session, job, measured_s: float) -> None:
    """The job finished: replace its GPU-second estimate by what was measured."""
    team_id = session.execute(select(User.team_id).where(User.id == job.user_id)).scalar_one()
    session.add(UsageEntry(kind="settle", user_id=job.user_id, team_id=team_id, job_id=job.id, campaign_id=job.campaign_id,
                           model_id=job.model_id, images=0, gpu_seconds=measured_s - job.reserved_gpu_seconds))


def record_refunds(session: Session, jobs) -> None:
    """Jobs that will make no image give back what they reserved (one entry per user, campaign and model)."""
    by_owner: dict[tuple, list] = {}
    for job in jobs:
        by_owner.setdefault((job.user_id, job.campaign_id, job.model_id), []).append(job)
    teams = dict(session.execute(select(User.id, User.team_id).where(User.id.in_({k[0] for k in by_owner}))).all())
    for (user_id, campaign_id, model_id), owned in by_owner.items():
        session.add(UsageEntry(
            kind="refund", user_id=user_id, team_id=teams.get(user_id), campaign_id=campaign_id, model_id=model_id,
            job_id=owned[0].id if len(owned) == 1 else None,
            images=-sum(j.num_images for j in owned), gpu_seconds=-sum(j.reserved_gpu_seconds for j in owned),
        ))


def quota_view(quota: Quota | None) -> dict | None:
    if quota is None:
        return None
    return {name: getattr(quota, name) for name in LIMIT_FIELDS}


def me_report(session: Session, user: User) -> dict:
    """Limits, usage and what remains, for GET /me."""
    now = utcnow()
    images_today, _ = usage_since(session, day_start(now), user_id=user.id)
    _, gpu_month = usage_since(session, month_start(now), user_id=user.id)
    queued = waiting_jobs(session, user_id=user.id)
    usage = {"images_today": images_today, "gpu_seconds_this_month": round(gpu_month, 2), "queued_jobs": queued,
             "day_resets_at": (day_start(now) + dt.timedelta(days=1)).isoformat(), "month_resets_at": next_month(now).isoformat()}
    quotas = dict((owner, q) for owner, q in quotas_for(session, user))
    remaining: dict = {}

    def leaves(key: str, left) -> None:
        """The tighter of the user's and the team's limits is what remains."""
        remaining[key] = min(left, remaining.get(key, left))

    for owner, quota in quotas.items():
        if owner == "team":
            scope = {"team_id": quota.team_id}
            team_images, _ = usage_since(session, day_start(now), **scope)
            _, team_gpu = usage_since(session, month_start(now), **scope)
            team_queued = waiting_jobs(session, **scope)
            usage["team_images_today"], usage["team_gpu_seconds_this_month"] = team_images, round(team_gpu, 2)
            usage["team_queued_jobs"] = team_queued
        else:
            team_images, team_gpu, team_queued = images_today, gpu_month, queued
        if quota.images_per_day is not None:
            leaves("images_today", quota.images_per_day - team_images)
        if quota.gpu_seconds_per_month is not None:
            leaves("gpu_seconds_this_month", round(quota.gpu_seconds_per_month - team_gpu, 2))
        if quota.max_queued_jobs is not None:
            leaves("queued_jobs", quota.max_queued_jobs - team_queued)
    return {"user": quota_view(quotas.get("user")), "team": quota_view(quotas.get("team")), "usage": usage, "remaining": remaining}


def limit_problem(name: str, value) -> str | None:
    """Why ``value`` cannot be stored as the limit ``name``; None if it can (None is unlimited).

    Refused: booleans (JSON true is not 1), text, NaN and infinities (which
    GET /me could not write back as JSON), negatives, fractions of a whole
    count, and anything past what the column holds (a database error
    otherwise): INTEGER_MAX, or for gpu_seconds_per_month (a double) any finite float.
    """
    if value is None:
        return None
    whole = isinstance(Quota.__table__.c[name].type, Integer)
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {kind} >= 0, or null for unlimited; got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value}"
    if value < 0:
        return f"must be >= 0 (null is unlimited), not {value}"
    if whole:
        if isinstance(value, float) and not value.is_integer():
            return f"must be a whole number, not {value}"
        if value > INTEGER_MAX:
            return f"must be at most {INTEGER_MAX}"
    else:
        try:
            float(value)
        except OverflowError:  # an integer past the largest double
            return "must be at most about 1.8e308"
    return None


def set_quota(ctx, owner: str, owner_id: int, payload) -> Quota:
    """Replace a user's or team's limits (admin); null or absent = unlimited."""
    from farm.models import Team
    from farm.services.jobs import NotFoundError
    from farm.spec import FieldProblem, RequestError

    if not isinstance(payload, dict):
        raise RequestError([FieldProblem("body", "send a JSON object of limits")])
    problems = [FieldProblem(str(k), "unknown limit; use " + ", ".join(LIMIT_FIELDS)) for k in payload if k not in LIMIT_FIELDS]
    for name in LIMIT_FIELDS:
        why = limit_problem(name, payload.get(name))
        if why is not None:
            problems.append(FieldProblem(name, why))
    if problems:
        raise RequestError(problems)
    with ctx.db.transaction() as session:
        if session.get(User if owner == "user" else Team, owner_id) is None:
            raise NotFoundError(f"no {owner} {owner_id}")
        column = Quota.user_id if owner == "user" else Quota.team_id
        quota = session.execute(select(Quota).where(column == owner_id)).scalar_one_or_none()
        if quota is None:
            quota = Quota(**{("user_id" if owner == "user" else "team_id"): owner_id})
            session.add(quota)
        for name in LIMIT_FIELDS:
            value = payload.get(name)
            setattr(quota, name, None if value is None else (float(value) if name == "gpu_seconds_per_month" else int(value)))
    logger.info("%s %s quota set: %s", owner, owner_id, quota_view(quota))
    return quota


USAGE_GROUPS = ("user", "team", "model", "day")


def usage_report(ctx, group_by: list[str], since: dt.datetime, until: dt.datetime) -> list[dict]:
    """Ledger sums (images, GPU seconds) grouped by user, team, model and/or day (admins)."""
    from farm.models import Team
    from farm.spec import FieldProblem, RequestError

    unknown = [g for g in group_by if g not in USAGE_GROUPS]
    if unknown or not group_by:
        raise RequestError([FieldProblem("group_by", f"group by one or more of {', '.join(USAGE_GROUPS)}")], status=400)
    columns, names = [], []
    if "user" in group_by:
        columns.append(User.name.label("user"))
        names.append("user")
    if "team" in group_by:
        columns.append(Team.name.label("team"))
        names.append("team")
    if "model" in group_by:
        columns.append(UsageEntry.model_id.label("model"))
        names.append("model")
    if "day" in group_by:
        columns.append(func.date(UsageEntry.created_at).label("day"))
        names.append("day")
    query = (select(*columns, func.sum(UsageEntry.images).label("images"), func.sum(UsageEntry.gpu_seconds).label("gpu_seconds"))
             .select_from(UsageEntry).join(User, User.id == UsageEntry.user_id).outerjoin(Team, Team.id == UsageEntry.team_id)
             .where(UsageEntry.created_at >= since, UsageEntry.created_at < until)
             .group_by(*columns).order_by(*columns))
    with ctx.db.session() as session:
        rows = session.execute(query).all()
    return [{**{name: (str(getattr(row, name)) if getattr(row, name) is not None else None) for name in names},
             "images": int(row.images or 0), "gpu_seconds": round(float(row.gpu_seconds or 0.0), 2)} for row in rows]
