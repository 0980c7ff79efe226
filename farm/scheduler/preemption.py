"""Preemption: which running renders to stop for a waiting job of a higher class.

A pass of its own after placement (``choose_preemptions``), a pure function
like ``policy.place``: the live scheduler and the simulator call it with the
same snapshot and the placement's decisions, plus the renders running now.

A queued job that placement left waiting may have a running render stopped
for it when all of these hold:

- its priority is at least ``CLASS_GAP`` above the running render's
  (an interactive image over a campaign's);
- the render runs on a worker that already holds the waiting job's model and
  could run it (family, size, VRAM, not excluded): the freed slot serves it
  without a load;
- no slot that could serve it frees soon: every such worker's earliest
  predicted finish is more than ``wait_s`` away (waiting a little beats
  stopping someone);
- the render can be continued exactly (its sampler is resumable, see
  farm/workers/resume.py) and has been preempted fewer than
  ``max_preemptions`` times (a campaign's image is never starved by a stream
  of interactive work).

A render already asked to stop counts as a slot about to free: it serves the
first waiting job that could use it, and no second render is stopped for
that job. Each waiting job stops at most one render per pass, each render is
stopped for one job. Of the candidates, the render of the lowest class goes
first, then the one with the most work left (it would keep its slot longest).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from farm.families import sampler_resumable
from farm.scheduler.policy import Decisions, QueuedJob, Snapshot, WorkerState

logger = logging.getLogger(__name__)

#: A waiting job preempts only renders at least this many priority levels below it.
CLASS_GAP = 1
#: A slot predicted to free within this many seconds is waited for instead.
PREEMPT_WAIT_S = 10.0
#: A render is preempted at most this many times.
MAX_PREEMPTIONS = 2


@dataclass(frozen=True)
class RunningJob:
    id: Hashable
    attempt: int
    worker_id: str
    model_id: str
    priority: int
    remaining_s: float  # predicted seconds until it finishes on its worker
    resumable: bool  # can stop at a step and continue to the same bytes
    preemptions: int = 0  # times it was preempted already
    stopping: bool = False  # already asked to stop


@dataclass(frozen=True)
class Preemption:
    job_id: Hashable  # the running render to stop
    attempt: int
    worker_id: str
    for_job: Hashable  # the waiting job it makes room for


def job_resumable(family: str | None, params: Mapping) -> bool:
    """Whether a job's render may be preempted: a text-to-image render of one
    pipeline (no image-to-image inputs, no refiner) with a resumable sampler."""
    return (not params.get("image_task") and not params.get("refiner")
            and sampler_resumable(family, params.get("sampler")))


def _could_serve(worker: WorkerState, job: QueuedJob) -> bool:
    return (job.model_id in worker.loaded_models and not worker.draining
            and worker.id not in job.excluded_workers and worker.can_ever_run(job) is None)


def _at_quota(snapshot: Snapshot, job: QueuedJob) -> bool:
    share = snapshot.shares.get(job.user_id)
    team = snapshot.team_shares.get(job.team_id) if job.team_id is not None else None
    return any(s is not None and s.max_running is not None and s.running >= s.max_running for s in (share, team))


def choose_preemptions(snapshot: Snapshot, decisions: Decisions, running: Sequence[RunningJob], *,
                       wait_s: float = PREEMPT_WAIT_S, max_preemptions: int = MAX_PREEMPTIONS,
                       class_gap: int = CLASS_GAP) -> list[Preemption]:
    """The renders to stop now, each for one waiting job (see the module's doc)."""
    if not running:
        return []
    lowest = min(r.priority for r in running)
    placed = {a.job_id for a in decisions.assignments}
    by_worker: dict[str, list[RunningJob]] = defaultdict(list)
    for render in running:
        by_worker[render.worker_id].append(render)
    # Renders already stopping, per worker, not yet promised to a waiting job.
    freeing = {worker_id: sum(r.stopping for r in renders) for worker_id, renders in by_worker.items()}
    chosen: list[Preemption] = []
    taken: set[Hashable] = set()
    for job in snapshot.jobs:  # queue order: highest priority first
        if job.priority < lowest + class_gap:
            break  # no running render is far enough below this job, nor below any after it
        if job.id in placed or job.id in decisions.unplaceable:
            continue
        if _at_quota(snapshot, job):
            continue  # a freed slot could not go to it either
        holders = [w for w in snapshot.workers if _could_serve(w, job)]
        if not holders or any(w.busy < w.capacity for w in holders):
            continue  # none holds its model, or one is free and placement chose to wait
        holders = [w for w in holders if w.id in by_worker]
        if not holders:
            continue
        promised = next((w.id for w in holders if freeing.get(w.id)), None)
        if promised is not None:
            freeing[promised] -= 1
            continue
        soonest = min(min(r.remaining_s for r in by_worker[w.id]) for w in holders)
        if soonest <= wait_s:
            continue
        candidates = [r for w in holders for r in by_worker[w.id]
                      if r.resumable and not r.stopping and r.id not in taken and r.preemptions < max_preemptions
                      and r.priority + class_gap <= job.priority]
        if not candidates:
            continue
        victim = min(candidates, key=lambda r: (r.priority, -r.remaining_s))
        taken.add(victim.id)
        chosen.append(Preemption(victim.id, victim.attempt, victim.worker_id, job.id))
    return chosen
