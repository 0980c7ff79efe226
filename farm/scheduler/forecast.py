"""Queue position and predicted start of every queued job, from one scheduler pass (issue 23).

``forecast(snapshot, placed)`` is pure, like the policy. Jobs compete for the
same workers when the same set of online workers could run their model (its
family, its size in VRAM, a worker's serving list): one eligibility class; a
job's position is its rank among the queued jobs of its class, from 1, in
queue order (priority, then age). The predicted start comes from playing the
queue onto the render slots in that order, each job taking the eligible slot
that frees first at its render time on that worker (list scheduling). It
ignores model loads and fair share's reordering, and guesses that a busy slot
frees after half a mean render; bench/scheduler_forecast.py measures its
error against the simulator's actual starts (docs/benchmarks.md).

The leader writes the result per model (farm.models.QueueForecast, one row
each) and GET /jobs/{id} reads one row.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping

from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState, working_memory_gb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelForecast:
    job_ids: list[Hashable]  # the model's queued jobs, in queue order
    positions: list[int]  # each one's position in its class, from 1
    starts_s: list[float]  # each one's predicted start, seconds after the snapshot's time


def _class_of(job: QueuedJob, workers: Iterable[WorkerState]) -> frozenset[str]:
    """The workers that could ever run the job's model at its family's smallest working memory."""
    need = job.model_gb + working_memory_gb(0, 0, job.family)
    return frozenset(w.id for w in workers if not w.draining and job.family in w.families
                     and (w.serves_models is None or job.model_id in w.serves_models) and need <= w.vram_total_gb)


@dataclass(frozen=True)
class Forecast:
    models: dict[str, ModelForecast]
    # Campaign id -> its last job's predicted end, seconds after the
    # snapshot's time (campaigns with a deadline, "drain" only): its queued
    # jobs in the snapshot played onto the slots, plus its work beyond the
    # snapshot (Snapshot.campaign_work_s) at the full speed of its class.
    campaign_finish_s: dict[Hashable, float]


def forecast(snapshot: Snapshot, placed: Mapping[Hashable, str] | None = None, method: str = "drain") -> Forecast:
    """Per model, its queued jobs' positions and predicted starts.

    ``placed``: job id -> worker id, what this pass assigned: those jobs leave
    the queue and take a slot of their worker for their render time.

    ``method``: "drain" (shipped) plays the queue, in queue order, onto the
    render slots: each job takes the eligible slot that frees first (a busy
    slot frees after half a mean render). "class" divides the work ahead in
    the job's eligibility class by the class's speed (the baseline
    bench/scheduler_forecast.py measures against).
    """
    placed = placed or {}
    workers = {w.id: w for w in snapshot.workers}
    class_by_model: dict[str, frozenset[str]] = {}
    queued = [job for job in snapshot.jobs if job.id not in placed]
    classes = []
    for job in queued:
        cls = class_by_model.get(job.model_id)
        if cls is None:
            cls = class_by_model[job.model_id] = _class_of(job, workers.values())
        classes.append(cls)
    result: dict[str, ModelForecast] = {}

    def record(job: QueuedJob, position: int, start: float | None) -> None:
        model = result.get(job.model_id)
        if model is None:
            model = result[job.model_id] = ModelForecast([], [], [])
        model.job_ids.append(job.id)
        model.positions.append(position)
        model.starts_s.append(None if start is None else round(start, 1))

    finish: dict[Hashable, float] = {}
    if method == "drain":
        taken = [(placed[job.id], job.est_seconds) for job in snapshot.jobs if job.id in placed]
        _drain(queued, classes, workers, record, finish, taken)
    else:
        _by_class(queued, classes, workers, record)
    if finish:
        seen: dict[Hashable, float] = defaultdict(float)
        speed: dict[Hashable, float] = {}
        for job, cls in zip(queued, classes):
            if job.campaign_id in finish:
                seen[job.campaign_id] += job.est_seconds
                speed[job.campaign_id] = sum(workers[w].speed * workers[w].capacity for w in cls)
        for campaign_id, unseen in ((c, snapshot.campaign_work_s.get(c, 0.0) - seen[c]) for c in list(finish)):
            if unseen > 1e-6 and speed[campaign_id] > 0:
                finish[campaign_id] += unseen / speed[campaign_id]
    return Forecast(result, finish)


def _drain(queued, classes, workers, record, finish: dict, taken: list[tuple[str, float]]) -> None:
    """List scheduling in queue order onto the slots; positions count the jobs ahead in the same class.

    Each class keeps a heap of its slots' free times; a slot that a job of
    another class took is pushed again with its new time, and the stale entry
    is dropped when it surfaces, so a job costs O(classes x log slots), not a
    scan of the workers.
    """
    mean_s = sum(job.est_seconds for job in queued) / len(queued) if queued else 0.0
    free_at: dict[tuple[str, int], float] = {}
    for w in workers.values():
        if not w.draining:
            for k in range(w.capacity):
                free_at[(w.id, k)] = mean_s / 2 / w.speed if k < w.busy else 0.0
    for worker_id, est_s in taken:  # this pass's assignments render first
        slots = [slot for slot in free_at if slot[0] == worker_id and free_at[slot] == 0.0]
        if slots:
            free_at[slots[0]] = est_s / workers[worker_id].speed
    heaps: dict[frozenset[str], list[tuple[float, tuple[str, int]]]] = {}
    classes_of: defaultdict[str, list[frozenset[str]]] = defaultdict(list)
    for cls in set(classes):
        heap = heaps[cls] = [(t, slot) for slot, t in free_at.items() if slot[0] in cls]
        heapq.heapify(heap)
        for wid in cls:
            classes_of[wid].append(cls)
    counts: defaultdict[frozenset[str], int] = defaultdict(int)
    for job, cls in zip(queued, classes):
        counts[cls] += 1
        heap = heaps[cls]
        while heap and free_at[heap[0][1]] != heap[0][0]:
            heapq.heappop(heap)  # the slot was taken since this entry was pushed
        if not heap:
            record(job, counts[cls], None)  # no worker online can run it
            continue
        start, slot = heap[0]
        free_at[slot] = start + job.est_seconds / workers[slot[0]].speed
        if job.deadline is not None and job.campaign_id is not None:
            finish[job.campaign_id] = max(finish.get(job.campaign_id, 0.0), free_at[slot])
        for other in classes_of[slot[0]]:
            heapq.heappush(heaps[other], (free_at[slot], slot))
        record(job, counts[cls], start)


def _by_class(queued, classes, workers, record) -> None:
    """The work ahead in the job's class over the class's speed (the baseline)."""
    members: defaultdict[frozenset[str], list[QueuedJob]] = defaultdict(list)
    for job, cls in zip(queued, classes):
        members[cls].append(job)
    for cls, jobs in members.items():
        speed = sum(workers[w].speed * workers[w].capacity for w in cls)
        free = sum(max(workers[w].capacity - workers[w].busy, 0) for w in cls)
        ahead_s = 0.0
        for position, job in enumerate(jobs, start=1):
            if not cls:
                record(job, position, None)
            else:
                record(job, position, 0.0 if position <= free else ahead_s / speed)
            ahead_s += job.est_seconds
