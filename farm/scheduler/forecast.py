"""Queue position and predicted start of every queued job, from one scheduler pass (issue 23).

``forecast(snapshot, placed)`` is pure, like the policy. Jobs compete for the
same workers when the same set of online workers could run their model (its
family, its size in VRAM, a worker's serving list): one eligibility class; a
job's position is its rank among the queued jobs of its class, from 1, in
queue order (priority, then age). The predicted start comes from playing the
queue onto the render slots in that order (list scheduling), each job
taking a slot as the policy would ("affinity", shipped):

- the eligible slot that frees first, plus the model's load time on that
  worker when it does not hold the model (a copy the play loaded counts as
  held from then on);
- unless a worker holding the model frees a slot no later than that, or
  before the job's patience runs out (``patience_s``), and the copy rule
  would not pay (the holders' slot frees at least ``MIN_COPY_BACKLOG_S``
  from now and ``REPLICATE_GAIN_S`` after the copy's start): then the
  holder's slot. A job with a deadline does not wait for a holder (the
  policy lifts it when it falls behind), nor one whose slot is free now on
  a worker that renders nothing and holds no model with queued work (the
  policy loads a copy there rather than leave it idle).

It ignores fair share's reordering and deadline lifts' ranking, and guesses
that a busy slot frees after half a mean render. bench/scheduler_forecast.py
measures its error against the simulator's actual starts, beside the same
play without affinity or loads ("drain") and work over speed ("class")
(docs/benchmarks.md): the wait for a holder is what set a light user's start.

The leader writes the result per model (farm.models.QueueForecast, one row
each) and GET /jobs/{id} reads one row.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping

from farm.scheduler import policy
from farm.scheduler.policy import (MIN_COPY_BACKLOG_S, REPLICATE_GAIN_S, QueuedJob, Snapshot, WorkerState, patience_s,
                                   working_memory_gb)

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


def forecast(snapshot: Snapshot, placed: Mapping[Hashable, str] | None = None, method: str = "affinity") -> Forecast:
    """Per model, its queued jobs' positions and predicted starts.

    ``placed``: job id -> worker id, what this pass assigned: those jobs leave
    the queue and take a slot of their worker for their render time.

    ``method``: "affinity" (shipped) plays the queue, in queue order, onto
    the render slots, each job waiting for a holder of its model or paying
    a load as the module docstring says (a busy slot frees after half a mean
    render). Two baselines bench/scheduler_forecast.py measures against:
    "drain", the same play where each job takes the eligible slot that
    frees first and loads cost nothing; "class", the work ahead in the
    job's eligibility class over the class's speed.
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
    if method in ("drain", "affinity"):
        taken = [(placed[job.id], job.est_seconds) for job in snapshot.jobs if job.id in placed]
        _drain(queued, classes, workers, record, finish, taken,
               affinity_at=snapshot.now if method == "affinity" else None)
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


def _drain(queued, classes, workers, record, finish: dict, taken: list[tuple[str, float]],
           affinity_at: float | None = None) -> None:
    """List scheduling in queue order onto the slots; positions count the jobs ahead in the same class.

    Each class keeps a heap of its slots' free times; a slot that a job of
    another class took is pushed again with its new time, and the stale entry
    is dropped when it surfaces, so a job costs O(classes x log slots), not a
    scan of the workers. With ``affinity_at`` (the snapshot's time) each
    model also keeps a heap of its holders' slots, the same way, and a job
    waits for a holder or pays a load (module docstring).
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
    holders: dict[str, set[str]] = defaultdict(set)  # workers holding each model, as the play loads copies
    held_heaps: dict[str, list[tuple[float, tuple[str, int]]]] = defaultdict(list)  # their slots, by free time
    models_of: defaultdict[str, list[str]] = defaultdict(list)

    def hold(worker_id: str, model_id: str) -> None:
        holders[model_id].add(worker_id)
        models_of[worker_id].append(model_id)
        for slot in ((worker_id, k) for k in range(workers[worker_id].capacity)):
            if slot in free_at:
                heapq.heappush(held_heaps[model_id], (free_at[slot], slot))

    # Workers that render nothing and hold no model with queued work: the
    # policy loads a copy there rather than leave them idle (idle_without_work).
    # (The policy does so below a deep queue only; the play does not tell.)
    wanted = {job.model_id for job in queued}
    idle = {w.id for w in workers.values() if w.busy == 0 and not wanted.intersection(w.loaded_models)} \
        if policy.IDLE_COPY else set()
    if affinity_at is not None:
        for w in workers.values():
            for model_id in w.loaded_models:
                hold(w.id, model_id)
    for job, cls in zip(queued, classes):
        counts[cls] += 1
        heap = heaps[cls]
        while heap and free_at[heap[0][1]] != heap[0][0]:
            heapq.heappop(heap)  # the slot was taken since this entry was pushed
        if not heap:
            record(job, counts[cls], None)  # no worker online can run it
            continue
        start, slot = heap[0]
        if affinity_at is not None:
            held = held_heaps[job.model_id]
            while held and (free_at[held[0][1]] != held[0][0] or held[0][1][0] not in cls):
                heapq.heappop(held)  # taken since it was pushed (or a holder that cannot run this size)
            load = workers[slot[0]].load_s(job.model_id, job.model_gb) if slot[0] not in holders[job.model_id] else 0.0
            if held:
                h_start, h_slot = held[0]
                patience_left = job.queued_at + patience_s(job) - affinity_at
                copy_pays = h_start >= MIN_COPY_BACKLOG_S and h_start - (start + load) >= REPLICATE_GAIN_S
                idle_now = start <= 0.0 and slot[0] in idle
                if (h_slot != slot and job.deadline is None and not copy_pays and not idle_now
                        and h_start <= max(start + load, patience_left)):
                    start, slot, load = h_start, h_slot, 0.0
            start += load
        free_at[slot] = start + job.est_seconds / workers[slot[0]].speed
        if affinity_at is not None:
            if slot[0] not in holders[job.model_id]:
                hold(slot[0], job.model_id)
            for model_id in models_of[slot[0]]:
                heapq.heappush(held_heaps[model_id], (free_at[slot], slot))
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
