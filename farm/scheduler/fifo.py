"""The baseline placement policy: first come, first served, LRU eviction.

``place_fifo`` has the same contract as ``farm.scheduler.policy.place`` (a pure
function of a snapshot) and exists so the scheduler benchmark can measure the
real policy against the obvious one in the same run. It knows nothing about
models beyond fitting them: jobs go in arrival order to the first free worker,
in the snapshot's worker order, that can run them, and a worker that lacks the
room drops its least recently used models. It never preloads.
"""

from __future__ import annotations

import logging

from farm.scheduler.policy import Assignment, Decisions, QueuedJob, Snapshot, WorkerState

logger = logging.getLogger(__name__)

# Float slack when comparing GB sums, so that 8.0 GB of need fits in 8.0 GB.
FIT_EPSILON_GB = 1e-9


def arrival_order(jobs) -> list[QueuedJob]:
    """Jobs sorted by arrival, ties by id (ids of mixed types compare as text)."""
    try:
        return sorted(jobs, key=lambda j: (j.queued_at, j.id))
    except TypeError:
        return sorted(jobs, key=lambda j: (j.queued_at, str(j.id)))


def lru_evictions(held: dict[str, float], in_use: frozenset[str], vram_total_gb: float, need_gb: float) -> tuple[str, ...] | None:
    """The least recently used models to drop so that need_gb fits, or None if it cannot fit.

    ``held`` is ordered least recently used first (the WorkerState contract).
    Models in use by running jobs are never dropped.
    """
    free = vram_total_gb - sum(held.values())
    if need_gb <= free + FIT_EPSILON_GB:
        return ()
    dropped = []
    for model_id, gb in held.items():
        if model_id in in_use:
            continue
        dropped.append(model_id)
        free += gb
        if need_gb <= free + FIT_EPSILON_GB:
            return tuple(dropped)
    return None


def _never_runnable_reason(job: QueuedJob, workers) -> str | None:
    """Why no worker in the snapshot could ever run the job, or None if one could."""
    reasons = []
    for worker in workers:
        why_not = worker.can_ever_run(job)
        if why_not is None and worker.id in job.excluded_workers:
            why_not = "failed this job before"
        if why_not is None:
            return None
        reasons.append(f"{worker.id} {why_not}")
    return "; ".join(reasons) if reasons else "no worker is online"


def place_fifo(snapshot: Snapshot) -> Decisions:
    decisions = Decisions()
    free_slots = {w.id: w.capacity - w.busy for w in snapshot.workers if not w.draining and w.busy < w.capacity}
    if not free_slots:
        # Nothing can be placed; unplaceable jobs get reported on a later call
        # that reaches them (the simulator drops jobs no worker can ever run).
        return decisions
    # Copied on first change, so an untouched worker costs nothing.
    held: dict[str, dict[str, float]] = {}
    in_use: dict[str, frozenset[str]] = {}
    # Jobs with the same shape are runnable on the same workers, and slots only
    # fill up during one call, so once every worker that could take a shape is
    # full, later jobs of that shape are skipped without a scan. This keeps a
    # call with 10,000 queued jobs linear in the queue.
    full_shapes: set = set()
    never_runnable: dict[tuple, str] = {}
    for job in arrival_order(snapshot.jobs):
        if not free_slots:
            break
        shape = (job.family, job.model_id, job.model_gb, job.width, job.height, job.excluded_workers)
        if shape in full_shapes:
            continue
        if shape in never_runnable:
            decisions.unplaceable[job.id] = never_runnable[shape]
            continue
        placed = False
        for worker in snapshot.workers:
            if free_slots.get(worker.id, 0) <= 0 or worker.id in job.excluded_workers:
                continue
            if worker.can_ever_run(job) is not None:
                continue
            evict = _make_room(worker, job, held, in_use)
            if evict is None:
                continue
            decisions.assignments.append(Assignment(job.id, job.attempt, worker.id, evict))
            free_slots[worker.id] -= 1
            if free_slots[worker.id] <= 0:
                del free_slots[worker.id]
            placed = True
            break
        if placed:
            continue
        reason = _never_runnable_reason(job, snapshot.workers)
        if reason is not None:
            never_runnable[shape] = decisions.unplaceable[job.id] = reason
        else:
            full_shapes.add(shape)
    return decisions


def _make_room(worker: WorkerState, job: QueuedJob, held: dict[str, dict[str, float]],
               in_use: dict[str, frozenset[str]]) -> tuple[str, ...] | None:
    """Plan the job on the worker: the models to evict, or None if it cannot fit now.

    Updates this call's view of the worker (held models in LRU order, models in
    use) as if the assignment had been made.
    """
    models = held.get(worker.id, worker.loaded_models)
    busy_models = in_use.get(worker.id, worker.in_use)
    working = job.working_gb
    if job.model_id in models:
        # Only the activations are new; with capacity 1 the worker is idle, so
        # they fit whenever the job can ever run there.
        evict = lru_evictions({m: gb for m, gb in models.items() if m != job.model_id},
                              busy_models | {job.model_id}, worker.vram_total_gb - models[job.model_id], working)
    else:
        evict = lru_evictions(models, busy_models, worker.vram_total_gb, job.model_gb + working)
    if evict is None:
        return None
    gb = models.get(job.model_id, job.model_gb)
    models = {m: g for m, g in models.items() if m not in evict and m != job.model_id}
    models[job.model_id] = gb  # most recently used now
    held[worker.id] = models
    in_use[worker.id] = busy_models | {job.model_id}
    return evict
