"""The dashboard's reads, each a fixed number of queries whatever the size of
a campaign: counts are grouped in the database, a gallery page is one join,
and nothing is queried per job in a loop."""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, cast, func, literal_column, or_, select, tuple_
from sqlalchemy.orm import Session

from farm.models import Campaign, CampaignTally, Job, ModelEntry, Output, Team, UsageEntry, User, Worker, utcnow
from farm.services.campaign_progress import progress, progress_stats
from farm.services.jobs import visible_jobs

logger = logging.getLogger(__name__)

UNPLACEABLE_PREFIX = "waiting: no worker can run this job"  # what the scheduler writes into a queued job's error when it cannot place it
GALLERY_PAGE = 48
CAMPAIGN_PAGE = 25


def visible_campaigns(user: User):
    """The campaigns a user may see, as a where clause (the rule of farm.services.campaigns.visible_campaign)."""
    if user.is_admin:
        return True
    if user.team_id is None:
        return Campaign.user_id == user.id
    return or_(Campaign.user_id == user.id, Campaign.team_id == user.team_id)


def campaign_summaries(session: Session, user: User, page: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the campaigns a user may see, newest first, with progress: three queries."""
    visible = visible_campaigns(user)
    total = session.execute(select(func.count()).select_from(Campaign).where(visible)).scalar_one()
    campaigns = session.execute(select(Campaign, User.name).join(User, User.id == Campaign.user_id).where(visible)
                                .order_by(Campaign.created_at.desc(), Campaign.id.desc())
                                .offset((page - 1) * CAMPAIGN_PAGE).limit(CAMPAIGN_PAGE)).all()
    now = utcnow()
    stats = progress_stats(session, [c.id for c, _ in campaigns], now)
    rows = [{"campaign": c, "owner": owner, **progress(c, stats[c.id], now)} for c, owner in campaigns]
    return rows, total


@dataclass
class GalleryItem:
    job_id: uuid.UUID
    status: str
    model_id: str
    prompt: str
    styles: list[str]
    seed: int
    step: int
    total: int
    error: str | None
    output_id: uuid.UUID | None
    outputs: int  # images of the job (a job can make several)
    axes: dict[str, Any] | None = None  # the job's campaign axis values (Job.campaign_axes)

    @property
    def percent(self) -> float:
        if self.status == "succeeded":
            return 100.0
        return round(100.0 * self.step / self.total, 1) if self.total else 0.0


def _style_clause(session: Session, style: str):
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        return cast(Job.params, JSONB)["styles"].contains([style])  # JSONB containment (@>), exact
    styles = Job.params["styles"]
    # SQLite: match the quoted name inside the JSON text of the list.
    quoted = '"' + style.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return cast(styles, String).contains(quoted, autoescape=True)


def gallery_page(session: Session, campaign_id: uuid.UUID, *, status: str | None, style: str | None, model: str | None,
                 page: int) -> tuple[list[GalleryItem], int]:
    """A page of a campaign's jobs in expansion order (matrix, then rows) with the
    first image of each: two queries (count, from the tallies unless filtered by
    model or style; page). Unfiltered, a page is a range
    of Job.campaign_index, read from the index without skipping the pages before."""
    where = [Job.campaign_id == campaign_id]
    if status:
        where.append(Job.status == status)
    if model:
        where.append(Job.model_id == model)
    if style:
        where.append(_style_clause(session, style))
    if model or style:
        total = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    else:  # the campaign's tallies (farm.tallies) already count it, per status
        counted = select(func.coalesce(func.sum(CampaignTally.jobs), 0)).where(CampaignTally.campaign_id == campaign_id)
        total = session.execute(counted.where(CampaignTally.status == status) if status else counted).scalar_one()
    image_count = (select(func.count()).where(Output.job_id == Job.id).correlate(Job).scalar_subquery())
    query = (select(Job.id, Job.status, Job.model_id, Job.params, Job.seed, Job.progress_step, Job.progress_total,
                    Job.steps, Job.error, Job.campaign_axes, Output.id.label("output_id"), image_count.label("outputs"))
             .outerjoin(Output, and_(Output.job_id == Job.id, Output.index == 0))
             .order_by(Job.campaign_index, Job.id).limit(GALLERY_PAGE))
    start = (page - 1) * GALLERY_PAGE
    rows = []
    if len(where) == 1:  # campaign_index runs 0..job_count-1 with no gaps
        rows = session.execute(query.where(*where, Job.campaign_index >= start)).all()
    if not rows:  # filtered, or a campaign from before campaign_index (all NULL)
        # A deferred join: the offset skips narrow (campaign_index, id) rows, and
        # only this page's jobs are joined with their outputs and counted. Joined
        # first, page 1,042 of a 100,000-job campaign filtered by status sorted
        # 50,000 wide rows on disk (0.65 s; bench/dashboard_pages.py).
        page_ids = (select(Job.id).where(*where).order_by(Job.campaign_index, Job.id)
                    .offset(start).limit(GALLERY_PAGE).scalar_subquery())
        rows = session.execute(query.where(Job.id.in_(page_ids))).all()
    items = [GalleryItem(job_id=row.id, status=row.status, model_id=row.model_id,  # the prompt as written, not styled
                         prompt=row.params.get("prompt") or row.params.get("final_prompt") or "",
                         styles=list(row.params.get("styles") or []), seed=row.seed, step=row.progress_step,
                         total=row.progress_total or row.steps, error=row.error, output_id=row.output_id,
                         outputs=row.outputs, axes=row.campaign_axes) for row in rows]
    return items, total


def campaign_filters(session: Session, campaign: Campaign) -> dict[str, list[str]]:
    """What a campaign's gallery can be filtered by: its models and styles, from its definition (no scan of the jobs)."""
    models = {campaign.base.get("model")} | set((campaign.matrix or {}).get("model", []))
    models.discard(None)
    if not models or campaign.row_count:  # rows may name any model: ask the database (grouped, indexed)
        models |= set(session.execute(select(Job.model_id).where(Job.campaign_id == campaign.id).distinct()).scalars())
    styles = set(campaign.base.get("styles") or [])
    for entry in (campaign.matrix or {}).get("styles", []):
        styles |= set(entry if isinstance(entry, list) else [entry])
    return {"models": sorted(models), "styles": sorted(styles)}


def worker_overview(session: Session, now: dt.datetime) -> dict[str, Any]:
    """Workers with their running jobs and throughput, queue depth per model, and unplaceable jobs."""
    workers = session.execute(select(Worker).order_by(Worker.id)).scalars().all()
    running = session.execute(select(Job.id, Job.worker_id, Job.model_id, Job.status, Job.progress_step, Job.progress_total,
                                     Job.steps, Job.eta_s, Job.started_at)
                              .where(Job.status.in_(("assigned", "running")))).all()
    window = now - dt.timedelta(minutes=10)
    finished = {row.worker_id: row for row in session.execute(
        select(Job.worker_id, func.sum(Job.steps * Job.num_images).label("steps"),
               func.sum(Job.num_images).label("images"), func.sum(Job.gpu_seconds).label("gpu_seconds"))
        .where(Job.status == "succeeded", Job.finished_at >= window).group_by(Job.worker_id))}
    queue = session.execute(select(Job.model_id, func.count()).where(Job.status == "queued")
                            .group_by(Job.model_id).order_by(func.count().desc())).all()
    unplaceable = session.execute(
        select(Job.error, Job.model_id, func.count()).where(Job.status == "queued", Job.error.like(UNPLACEABLE_PREFIX + "%"))
        .group_by(Job.error, Job.model_id).order_by(func.count().desc())).all()
    model_sizes = dict(session.execute(select(ModelEntry.id, ModelEntry.vram_gb)).all())
    by_worker: dict[str, list] = {}
    for job in running:
        by_worker.setdefault(job.worker_id, []).append(job)
    rows = []
    for worker in workers:
        stats = finished.get(worker.id)
        held = [{"id": m["id"], "vram_gb": float(m.get("vram_gb") or model_sizes.get(m["id"], 0.0))} for m in worker.loaded_models]
        rows.append({
            "worker": worker, "held": held, "jobs": by_worker.get(worker.id, []),
            "heartbeat_age_s": (now - worker.last_heartbeat_at).total_seconds(),
            "it_per_s": round(stats.steps / stats.gpu_seconds, 2) if stats and stats.gpu_seconds else None,
            "images_per_minute": round(stats.images / 10.0, 2) if stats else 0.0,
        })
    return {"workers": rows, "queue": queue, "unplaceable": unplaceable}


def usage_per_day(session: Session, since: dt.datetime, *, user_id: int | None = None) -> list[tuple[str, int, float]]:
    """(day, images, GPU seconds) from the ledger, oldest first, every day in the window present."""
    query = (select(func.date(UsageEntry.created_at).label("day"), func.sum(UsageEntry.images), func.sum(UsageEntry.gpu_seconds))
             .where(UsageEntry.created_at >= since).group_by(func.date(UsageEntry.created_at)))
    if user_id is not None:
        query = query.where(UsageEntry.user_id == user_id)
    found = {str(day): (int(images or 0), float(gpu or 0.0)) for day, images, gpu in session.execute(query)}
    days = []
    day = since.date()
    while day <= utcnow().date():
        images, gpu = found.get(day.isoformat(), (0, 0.0))
        days.append((day.isoformat(), images, gpu))
        day += dt.timedelta(days=1)
    return days


def people(session: Session) -> dict[str, Any]:
    """Users and teams with their quotas (admins): two queries and one for quotas."""
    from farm.models import Quota

    users = session.execute(select(User).order_by(User.name)).scalars().all()
    teams = session.execute(select(Team).order_by(Team.name)).scalars().all()
    quotas = session.execute(select(Quota)).scalars().all()
    return {"users": users, "teams": teams,
            "user_quotas": {q.user_id: q for q in quotas if q.user_id is not None},
            "team_quotas": {q.team_id: q for q in quotas if q.team_id is not None}}


HISTORY_PAGE = 50  # jobs per history page unless ?limit= asks for fewer or more (bounded in dashboard/history.py)
SEARCH_WORDS = re.compile(r"[^\W_]+")  # letters and digits: what Postgres' 'simple' parser makes words of


@dataclass
class HistoryFilters:
    statuses: tuple[str, ...] = ()  # any of these
    model: str | None = None
    campaign: uuid.UUID | None = None
    since: dt.datetime | None = None  # inclusive
    before: dt.datetime | None = None  # exclusive
    words: tuple[str, ...] = ()  # every word must be in the prompt (a whole word on Postgres, a substring on SQLite)


@dataclass
class HistoryRow:
    id: uuid.UUID  # the job's
    status: str
    model_id: str
    prompt: str
    created_at: dt.datetime
    campaign_id: uuid.UUID | None
    campaign_name: str | None
    output_id: uuid.UUID | None
    outputs: int


def prompt_vector():
    """The prompt's text-search vector: the very expression of the GIN index of migration 0010, so Postgres uses it."""
    prompt = Job.params.op("->>")(literal_column("'prompt'"))
    return func.to_tsvector(literal_column("'simple'::regconfig"), prompt)


def _prompt_search(session: Session, words: tuple[str, ...]):
    if session.bind.dialect.name == "postgresql":
        # Whole words, all of them required. Not prefixes ("light:*"): Postgres
        # estimates a prefix match at a fixed 2 % of rows, so for a rare prefix it
        # walked the whole (created_at, id) index (0.4 s at 100,000 jobs) instead
        # of the GIN index; a whole word is estimated from the index statistics.
        # The words are letters and digits only (SEARCH_WORDS): no tsquery syntax.
        query = " & ".join(words)
        return prompt_vector().bool_op("@@")(func.to_tsquery(literal_column("'simple'::regconfig"), query))
    # SQLite has no index for this: LIKE per word (case-blind for ASCII), a scan of the user's jobs.
    prompt = Job.params["prompt"].as_string()
    return and_(*(prompt.contains(word, autoescape=True) for word in words))


def history_query(session: Session, user: User, filters: HistoryFilters, after: tuple[dt.datetime, uuid.UUID] | None,
                  limit: int):
    """The statement of a history page: one more row than ``limit`` tells whether older jobs follow."""
    where = [visible_jobs(user)]
    if filters.statuses:
        where.append(Job.status.in_(filters.statuses))
    if filters.model:
        where.append(Job.model_id == filters.model)
    if filters.campaign:
        where.append(Job.campaign_id == filters.campaign)
    if filters.since:
        where.append(Job.created_at >= filters.since)
    if filters.before:
        where.append(Job.created_at < filters.before)
    if filters.words:
        where.append(_prompt_search(session, filters.words))
    if after:
        where.append(tuple_(Job.created_at, Job.id) < tuple_(*after))
    image_count = select(func.count()).where(Output.job_id == Job.id).correlate(Job).scalar_subquery()
    query = (select(Job.id, Job.status, Job.model_id, Job.params["prompt"].as_string().label("prompt"), Job.created_at,
                    Job.campaign_id, Campaign.name.label("campaign_name"), Output.id.label("output_id"),
                    image_count.label("outputs"))
             .outerjoin(Campaign, Campaign.id == Job.campaign_id)
             .outerjoin(Output, and_(Output.job_id == Job.id, Output.index == 0))
             .where(*where).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    return query


def job_history(session: Session, user: User, filters: HistoryFilters, after: tuple[dt.datetime, uuid.UUID] | None,
                limit: int) -> tuple[list[HistoryRow], bool]:
    """One page of the jobs a user may see (the API's rule), newest first, from a (created_at, id) cursor: one query.

    Returns the rows and whether there are older ones. Keyset, not OFFSET, and no
    total count: the cost of a page does not grow with the number of jobs."""
    query = history_query(session, user, filters, after, limit)
    rows = [HistoryRow(id=row.id, status=row.status, model_id=row.model_id, prompt=row.prompt or "",
                       created_at=row.created_at, campaign_id=row.campaign_id, campaign_name=row.campaign_name,
                       output_id=row.output_id, outputs=row.outputs) for row in session.execute(query)]
    return rows[:limit], len(rows) > limit


def history_choices(session: Session, user: User) -> dict[str, Any]:
    """What the history can be filtered by: the models, and the user's newest campaigns (bounded)."""
    models = session.execute(select(ModelEntry.id).order_by(ModelEntry.id)).scalars().all()
    campaigns = session.execute(select(Campaign.id, Campaign.name).where(visible_campaigns(user))
                                .order_by(Campaign.created_at.desc(), Campaign.id.desc()).limit(100)).all()
    return {"models": models, "campaigns": campaigns}
