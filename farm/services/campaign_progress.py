"""A campaign's progress figures: counts, percent, images per minute and ETA.

Issue 19 found all three numbers wrong: images per minute divided the last five
minutes' outputs by five however young (or long finished) the campaign was, and
the ETA followed from it. Here:

- images per minute = the campaign's images / its own running time, from its
  first job's start to its last job's finish (or to now while jobs remain);
- ETA = remaining work / recent throughput. Work is each job's estimated GPU
  seconds (``Job.reserved_gpu_seconds``, from ``farm.costs``), so a campaign
  mixing sizes or models weighs its jobs by their cost; a running job's
  remaining work is its share of steps still to go. Throughput is the work
  finished (jobs that succeeded or failed) per second over a recent window
  that grows with the campaign's running time: the shortest of ``WINDOWS_S``
  holding half of it (at least 30 s, at most 30 min), so the start-up of a
  young campaign weighs less and an old one follows changes in the farm
  (workers joining or leaving); a window holding the whole run also counts
  the running jobs' steps done;
- while nothing finished within the window (before the first job finished,
  say), the workers' per-job ETAs of the running jobs (``Job.eta_s``) give the
  throughput; with none of them either, or while the campaign is paused, the
  ETA is None ("unknown"), never a guess.

Everything comes from the campaign tallies (farm.tallies: a row per status,
finished work per 10-second bucket) and the campaign's running jobs: three
small queries per page, whatever the campaign size.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from farm import tallies
from farm.models import Campaign, CampaignStatus, CampaignTally, CampaignThroughput, Job, JobStatus

logger = logging.getLogger(__name__)

# The throughput windows a campaign's running time picks from (seconds): fixed
# steps, so one query serves any number of campaigns.
WINDOWS_S = (30, 60, 120, 300, 600, 900, 1800)

UNFINISHED = (JobStatus.queued.value, JobStatus.assigned.value, JobStatus.running.value)
WORKED = tallies.WORKED  # finished jobs that took a worker's time


@dataclass
class StatusStats:
    """One campaign's jobs in one status, summed."""

    count: int = 0
    images: int = 0
    work: float = 0.0  # estimated GPU seconds
    first_start: dt.datetime | None = None
    last_finish: dt.datetime | None = None
    # Work (succeeded or failed) finished within the campaign's ETA window
    # (_window); kept on the succeeded entry.
    recent: float = 0.0
    progressed: float = 0.0  # work done so far by running jobs (their share of steps)
    worker_rate: float = 0.0  # work per second the running jobs' worker ETAs imply


def progress_stats(session: Session, campaign_ids: list[uuid.UUID], now: dt.datetime) -> dict[uuid.UUID, dict[str, StatusStats]]:
    """Per campaign and status, the sums progress() needs, from the tallies."""
    out: dict[uuid.UUID, dict[str, StatusStats]] = {cid: {} for cid in campaign_ids}
    if not campaign_ids:
        return out
    for tally in session.execute(select(CampaignTally).where(CampaignTally.campaign_id.in_(campaign_ids))).scalars():
        out[tally.campaign_id][tally.status] = StatusStats(tally.jobs, tally.images, tally.work, first_start=tally.first_at,
                                                           last_finish=tally.last_at)
    # Work finished within the window each campaign's ETA uses (see _window:
    # while jobs remain, its running time is now - its first start), from the
    # buckets; the oldest bucket counts by the share of its seconds inside.
    cutoffs: dict[int, list[uuid.UUID]] = {}
    for cid, by_status in out.items():
        first = by_status.get(JobStatus.running.value, StatusStats()).first_start
        if first is not None:
            cutoffs.setdefault(_window((now - first).total_seconds()), []).append(cid)
    if cutoffs:
        where = or_(*(and_(CampaignThroughput.campaign_id.in_(cids),
                           CampaignThroughput.bucket >= now - dt.timedelta(seconds=WINDOWS_S[index] + tallies.BUCKET_S))
                      for index, cids in cutoffs.items()))
        recent = {cid: 0.0 for cids in cutoffs.values() for cid in cids}
        index_of = {cid: index for index, cids in cutoffs.items() for cid in cids}
        for cid, bucket, work in session.execute(
                select(CampaignThroughput.campaign_id, CampaignThroughput.bucket, CampaignThroughput.work).where(where)):
            started_s = (now - bucket).total_seconds()  # how long ago the bucket started
            recent[cid] += work * min(max((WINDOWS_S[index_of[cid]] - started_s) / tallies.BUCKET_S + 1.0, 0.0), 1.0)
        for cid, work in recent.items():
            out[cid].setdefault(JobStatus.succeeded.value, StatusStats()).recent = work
    # The running jobs (as many as there are workers on the campaign): their steps done and their own ETAs.
    work = case((Job.reserved_gpu_seconds > 0, Job.reserved_gpu_seconds), else_=1.0)
    done_share = case((Job.progress_total > 0, work * Job.progress_step / Job.progress_total), else_=0.0)
    # A worker's eta_s covers the steps still to go: work x (steps to go / steps) per eta_s seconds.
    worker_rate = case((and_(Job.eta_s > 0, Job.progress_total > Job.progress_step),
                        work * (Job.progress_total - Job.progress_step) / Job.progress_total / Job.eta_s), else_=0.0)
    for cid, progressed, rate in session.execute(
            select(Job.campaign_id, func.sum(done_share), func.sum(worker_rate))
            .where(Job.campaign_id.in_(campaign_ids), Job.status == JobStatus.running.value).group_by(Job.campaign_id)):
        stats = out[cid].setdefault(JobStatus.running.value, StatusStats())
        stats.progressed, stats.worker_rate = float(progressed or 0.0), float(rate or 0.0)
    return out


def _window(running_s: float) -> int:
    """The index of the throughput window for a campaign that has run running_s seconds."""
    target = min(max(running_s / 2, WINDOWS_S[0]), WINDOWS_S[-1])
    return next(i for i, window in enumerate(WINDOWS_S) if window >= target)


def progress(campaign: Campaign, stats: dict[str, StatusStats], now: dt.datetime) -> dict[str, Any]:
    """Counts, percent done, images per minute and ETA (see the module's docstring)."""
    def total(attr: str, statuses) -> float:
        return sum(getattr(stats[s], attr) for s in statuses if s in stats)

    unfinished = int(total("count", UNFINISHED))
    done = int(total("count", [s.value for s in JobStatus]) - unfinished)
    starts = [s.first_start for s in stats.values() if s.first_start is not None]
    first_start = min(starts) if starts else campaign.created_at
    finishes = [stats[s].last_finish for s in WORKED if s in stats and stats[s].last_finish is not None]
    end = max(finishes) if not unfinished and finishes else now
    running_s = max((end - first_start).total_seconds(), 0.0)
    images = stats[JobStatus.succeeded.value].images if JobStatus.succeeded.value in stats else 0
    return {
        "counts": {s.value: stats[s.value].count if s.value in stats else 0 for s in JobStatus},
        "percent": round(100.0 * done / campaign.job_count, 1) if campaign.job_count else 100.0,
        # At least a second, so the first image does not read as thousands per minute.
        "images_per_minute": round(images * 60.0 / max(running_s, 1.0), 2) if images else 0.0,
        "eta_s": _eta_s(campaign, stats, unfinished, running_s),
    }


def _eta_s(campaign: Campaign, stats: dict[str, StatusStats], unfinished: int, running_s: float) -> float | None:
    if not unfinished:
        return 0.0
    if campaign.status != CampaignStatus.active.value:
        return None  # paused: nothing new starts until it is resumed
    running = stats.get(JobStatus.running.value, StatusStats())
    remaining = sum(stats[s].work for s in UNFINISHED if s in stats) - running.progressed
    index = _window(running_s)
    finished = stats[JobStatus.succeeded.value].recent if JobStatus.succeeded.value in stats else 0.0
    length = min(WINDOWS_S[index], running_s)
    if finished > 0 and length > 0:
        if WINDOWS_S[index] >= running_s:
            # The window holds the whole run: the running jobs' steps done are all
            # inside it too. (In a shorter window they are left out: they would count
            # the window's end twice, as a job straddling its start counts whole.)
            finished += running.progressed
        return round(remaining / (finished / length), 1)
    # Nothing finished within the window (or at all yet): the running jobs' own
    # ETAs, if any; else the farm is not working on it and any figure would be a guess.
    return round(remaining / running.worker_rate, 1) if running.worker_rate > 0 else None
