"""Placement policy: a pure function of a snapshot.

``place(snapshot)`` returns assignments and the jobs that no worker can ever
run. It reads nothing else (no clock, no database), so the live scheduler and
the simulator call the same function. This is the foundation's simple policy:
highest priority first, then oldest; each job goes to a free worker that can
run it, preferring one that already holds its model, then the one with the
most free VRAM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

logger = logging.getLogger(__name__)

# Working memory a render needs on top of the weights: activations grow with
# the latent size. Rough figures for fp16 UNets; the scheduler issue refines it.
BASE_WORKING_GB = 0.4
WORKING_GB_PER_MEGAPIXEL = 1.6


def working_memory_gb(width: int, height: int) -> float:
    return BASE_WORKING_GB + WORKING_GB_PER_MEGAPIXEL * (width * height) / 1e6


@dataclass(frozen=True)
class QueuedJob:
    id: Hashable
    attempt: int
    user_id: int
    model_id: str
    family: str
    model_gb: float
    width: int
    height: int
    priority: int
    queued_at: float  # seconds since the epoch (simulator: since the trace start)
    excluded_workers: frozenset[str] = frozenset()
    team_id: int | None = None
    # Expected render time on a speed-1.0 worker (steps x seconds per step).
    est_seconds: float = 5.0

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class WorkerState:
    id: str
    families: frozenset[str]
    max_pixels: int
    vram_total_gb: float
    vram_free_gb: float
    # model id -> GB it occupies, least recently used first.
    loaded_models: dict[str, float]
    serves_models: frozenset[str] | None  # None: any model
    busy: int  # jobs assigned or running
    capacity: int = 1
    draining: bool = False
    speed: float = 1.0  # 1.0 = reference GPU
    load_gbps: float = 2.0  # disk -> GPU
    # Models used by the jobs it runs now: they cannot be evicted.
    in_use: frozenset[str] = frozenset()

    def can_ever_run(self, job: QueuedJob) -> str | None:
        """None if this worker could run the job once free; else why not."""
        if job.family not in self.families:
            return f"runs {', '.join(sorted(self.families)) or 'no'} families, not {job.family}"
        if self.serves_models is not None and job.model_id not in self.serves_models:
            return f"does not serve model {job.model_id}"
        if job.pixels > self.max_pixels:
            return f"accepts at most {self.max_pixels} pixels"
        if job.model_gb + working_memory_gb(job.width, job.height) > self.vram_total_gb:
            return f"has {self.vram_total_gb:.1f} GB of VRAM; the job needs {job.model_gb + working_memory_gb(job.width, job.height):.1f} GB"
        return None


@dataclass(frozen=True)
class Share:
    """A user's claim on the farm: weight, and recent use (decayed GPU-seconds)."""

    weight: float = 1.0
    usage_s: float = 0.0
    running: int = 0


@dataclass(frozen=True)
class Snapshot:
    jobs: Sequence[QueuedJob]
    workers: Sequence[WorkerState]
    now: float
    shares: Mapping[int, Share] = field(default_factory=dict)  # by user id; absent = weight 1, no use


@dataclass(frozen=True)
class Assignment:
    job_id: Hashable
    attempt: int
    worker_id: str
    # Models the worker must drop first to make room (empty when it holds the
    # model or the model fits in its free VRAM).
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preload:
    worker_id: str
    model_id: str
    evict: tuple[str, ...] = ()


@dataclass
class Decisions:
    assignments: list[Assignment] = field(default_factory=list)
    preloads: list[Preload] = field(default_factory=list)
    unplaceable: dict[Hashable, str] = field(default_factory=dict)

    @property
    def evictions(self) -> list[tuple[str, str]]:
        return [(a.worker_id, m) for a in self.assignments for m in a.evict] + \
               [(p.worker_id, m) for p in self.preloads for m in p.evict]


def place(snapshot: Snapshot) -> Decisions:
    decisions = Decisions()
    free_slots = {w.id: w.capacity - w.busy for w in snapshot.workers if not w.draining}
    free_vram = {w.id: w.vram_free_gb for w in snapshot.workers}
    held = {w.id: dict(w.loaded_models) for w in snapshot.workers}
    order = sorted(snapshot.jobs, key=lambda j: (-j.priority, j.queued_at, str(j.id)))
    for job in order:
        if not any(slots > 0 for slots in free_slots.values()):
            break
        reasons = []
        candidates = []
        for worker in snapshot.workers:
            why_not = worker.can_ever_run(job)
            if why_not is None and job.id and worker.id in job.excluded_workers:
                why_not = "ran out of memory on it before"
            if why_not:
                reasons.append(f"{worker.id} {why_not}")
                continue
            candidates.append(worker)
        if not candidates:
            decisions.unplaceable[job.id] = "; ".join(reasons) if reasons else "no worker is online"
            continue
        best = None
        for worker in candidates:
            if worker.draining or free_slots[worker.id] <= 0:
                continue
            holds = job.model_id in held[worker.id]
            need = working_memory_gb(job.width, job.height) + (0.0 if holds else job.model_gb)
            # A worker that would have to evict still fits (the worker evicts
            # least recently used models); its total VRAM was checked above.
            rank = (holds, need <= free_vram[worker.id], free_vram[worker.id])
            if best is None or rank > best[0]:
                best = (rank, worker)
        if best is None:
            continue
        worker = best[1]
        decisions.assignments.append(Assignment(job.id, job.attempt, worker.id))
        free_slots[worker.id] -= 1
        if job.model_id not in held[worker.id]:
            held[worker.id][job.model_id] = job.model_gb
            free_vram[worker.id] -= job.model_gb
    return decisions
