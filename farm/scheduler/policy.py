"""Placement policy: a pure function of a snapshot.

``place(snapshot)`` returns assignments (with the evictions each needs),
preloads for idle workers, and the jobs no worker can ever run, with the
reason. It reads nothing else (no clock, no database), so the live scheduler
and the simulator (``farm bench scheduler``) call the same function.

How it decides, for each free worker slot in turn:

1. Fair share picks whose turn it is: users are ranked by priority class
   (a waiting job climbs one class per ``CLASS_AGE_S``), then by recent GPU
   use divided by their weight minus ``AGE_WEIGHT`` times how long their
   oldest job has waited (so waiting always wins eventually: no starvation).
   A user at their ``max_concurrent_jobs`` (``Share.max_running``), or in a
   team at the team's, gets nothing more in this call, on any path below.
2. That user's oldest job goes to a free worker that already holds its model
   (no load).
3. Otherwise, while the job is still within its patience (a few load-times),
   free workers are given jobs for models they already hold: grouping
   same-model work on the same worker is what saves loads.
4. Otherwise the job's model is loaded on a free worker. One where it fits
   without evicting anything comes first, the smallest such GPU first (best
   fit: the big GPUs stay free for the big models and for the copies a burst
   needs), then the shortest load. Where every choice must evict, the cost
   is the load time plus the loss of what is evicted, weighted by the queued
   demand for it. A job never goes where its model plus its
   resolution-dependent working memory cannot fit. When some busy worker
   already holds the model, another copy is loaded only when the holders
   would need at least ``MIN_COPY_BACKLOG_S`` for the model's queue and the
   copy would take at least ``REPLICATE_GAIN_S`` off that time, net of its
   load, and, unless the holders' backlog is a burst (``BURST_BACKLOG_S``),
   the work that arrived for the model in the last ``COPY_RATE_WINDOW_S``
   asks for at least ``COPY_DEMAND_SHARE`` of the holders' speed (the tail
   of a spent burst drains on its holders; a copy made for it is a load that
   is not used again). All three shrink to nothing as the job's patience runs
   out (delay scheduling), and until then a copy evicts nothing. A GPU
   that loads a model in this call counts as its holder for the rest of the
   call. A snapshot may carry a copy plan, the (worker, model) pairs where
   copies may go (an experiment's, see bench/scheduler_plan.py; the live
   scheduler sends none).

Before that, a free worker whose own models have only short queues takes a
copy of a model whose holders are far behind (``REBALANCE_FACTOR``,
``REBALANCE_MARGIN_S``): a GPU that holds a popular model is otherwise never
free to help with a burst for a model few GPUs can run.

Idle workers left over preload the model with the most waiting demand that
nobody holds. ``Snapshot.jobs`` is expected in queue order (priority, then
age), as the scheduler's query returns it; the policy does not re-sort.
"""

from __future__ import annotations

import heapq
import logging
import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from farm.families import find_family

logger = logging.getLogger(__name__)

# Working memory a render needs on top of the weights: activations grow with
# the latent size. Each family declares its figures (farm/families); these
# are for a family the registry does not know (a simulator trace's own).
BASE_WORKING_GB = 0.4
WORKING_GB_PER_MEGAPIXEL = 1.6


def _working_coefficients(family: str | None) -> tuple[float, float]:
    """(base GB, GB per megapixel) of ``family``'s working memory."""
    found = find_family(family)
    if found is None:
        return BASE_WORKING_GB, WORKING_GB_PER_MEGAPIXEL
    return found.working_gb_base, found.working_gb_per_megapixel


def working_memory_gb(width: int, height: int, family: str | None = None) -> float:
    base, per_megapixel = _working_coefficients(family)
    return base + per_megapixel * (width * height) / 1e6


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
        if job.model_gb + working_memory_gb(job.width, job.height, job.family) > self.vram_total_gb:
            return (f"has {self.vram_total_gb:.1f} GB of VRAM; the job needs "
                    f"{job.model_gb + working_memory_gb(job.width, job.height, job.family):.1f} GB")
        return None


@dataclass(frozen=True)
class Share:
    """A user's or a team's claim on the farm: weight, recent use (decayed GPU-seconds) and concurrency."""

    weight: float = 1.0
    usage_s: float = 0.0
    running: int = 0  # jobs assigned or running now (a team's: all its members')
    max_running: int | None = None  # the max_concurrent_jobs quota


@dataclass(frozen=True)
class Snapshot:
    jobs: Sequence[QueuedJob]
    workers: Sequence[WorkerState]
    now: float
    shares: Mapping[int, Share] = field(default_factory=dict)  # by user id; absent = weight 1, no use
    # By team id; absent = the team is not weighed and has no concurrency limit.
    team_shares: Mapping[int, Share] = field(default_factory=dict)
    # (worker id, model id) pairs where another copy of a model may be loaded;
    # None: anywhere the copy rule allows. The live scheduler leaves it None;
    # bench/scheduler_plan.py (an experiment, docs/benchmarks.md) fills it.
    copy_plan: frozenset[tuple[str, str]] | None = None


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


# Tunables, chosen by replaying the shipped traces and two sets generated
# with other seeds (bench/scheduler_targets.py, docs/benchmarks.md): shorter
# patience loads more and, on a busy farm, makes everyone wait longer behind
# the loads; longer patience saves loads but makes light users wait for
# holders.
CLASS_AGE_S = 600.0  # a waiting job climbs one priority class per 10 minutes
# One second of waiting offsets 30 GPU-seconds of recent use: a light user's
# image still goes ahead of a campaign, but a campaign's oldest job is not held
# back for as long as its owner's usage alone would say.
AGE_WEIGHT = 30.0
MIN_PATIENCE_S = 450.0  # a job may wait this long for affinity before a load is made for it
PATIENCE_LOADS = 3.0  # ... or this many times its own model's load time, whichever is longer
REFERENCE_LOAD_GBPS = 2.0
# Another copy of a model that some GPU already holds is loaded only if it
# takes at least this many seconds off the holders' time for the model's
# queue, net of its own load time (delay scheduling: waiting a little for a
# worker that has the data beats moving it; Zaharia et al., EuroSys 2010).
REPLICATE_GAIN_S = 10.0
# ... and only if the holders would need at least this long for the model's
# queued work: a short queue drains on its holders before a copy pays off.
MIN_COPY_BACKLOG_S = 45.0
# A free worker with queued work for its own models still takes a copy of
# another model when that model's holders need at least this many times as
# long for its queue, plus this many seconds (see _Placement.rebalance).
REBALANCE_FACTOR = 3.0
REBALANCE_MARGIN_S = 60.0
REBALANCE_SAMPLE = 32  # the next jobs whose mean size stands for a model's queued jobs there
# ... and only if the work that arrived for the model in the last
# COPY_RATE_WINDOW_S seconds asks for at least COPY_DEMAND_SHARE of its
# holders' speed, unless their backlog is a burst (BURST_BACKLOG_S or more):
# a queue that is the tail of a spent burst drains on its holders, and a copy
# made for it is a load that is never used again. These three were chosen on
# the shipped traces at four worker orders and make_traces seeds 1-10, then
# checked once on seeds 11-15 (docs/benchmarks.md, fourth session).
COPY_RATE_WINDOW_S = 60.0
COPY_DEMAND_SHARE = 0.9
BURST_BACKLOG_S = 90.0


def patience_s(job: QueuedJob) -> float:
    return max(MIN_PATIENCE_S, PATIENCE_LOADS * job.model_gb / REFERENCE_LOAD_GBPS)


class _Queue:
    """Jobs in queue order with a cursor past the ones already taken."""

    __slots__ = ("jobs", "cursor")

    def __init__(self, jobs: list[QueuedJob]) -> None:
        self.jobs = jobs
        self.cursor = 0

    def head(self, taken: set) -> QueuedJob | None:
        jobs, i = self.jobs, self.cursor
        while i < len(jobs) and jobs[i].id in taken:
            i += 1
        self.cursor = i
        return jobs[i] if i < len(jobs) else None

    def first_runnable_on(self, worker: WorkerState, taken: set, held_back=None, limit: int = 8) -> QueuedJob | None:
        """The oldest untaken job that can run on ``worker`` (looks a few deep); ``held_back(job)``: skip it."""
        jobs = self.jobs
        seen = 0
        for i in range(self.cursor, len(jobs)):
            job = jobs[i]
            if job.id in taken:
                continue
            if worker.id not in job.excluded_workers and job.pixels <= worker.max_pixels \
                    and (held_back is None or not held_back(job)):
                return job
            seen += 1
            if seen >= limit:
                return None
        return None


class _Placement:
    """Mutable working state of one ``place`` call."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.now = snapshot.now
        self.shares = snapshot.shares
        self.copy_plan = snapshot.copy_plan
        self.team_shares = snapshot.team_shares
        self.added_team_usage: dict[int, float] = {}
        self.workers = {w.id: w for w in snapshot.workers}
        self.held = {w.id: dict(w.loaded_models) for w in snapshot.workers}
        self.free_gb = {
            w.id: min(w.vram_free_gb, w.vram_total_gb - sum(w.loaded_models.values())) for w in snapshot.workers
        }
        self.slots = {w.id: w.capacity - w.busy for w in snapshot.workers if not w.draining and w.busy < w.capacity}
        self.by_model: dict[str, _Queue] = {}
        self.by_user: dict[int, _Queue] = {}
        self.demand: dict[str, int] = {}
        self.pixel_limits: dict[str, int] = {}
        self.work_s: dict[str, float] = {}  # queued work per model, seconds at speed 1 (summed when first asked)
        self.placed_work_s: dict[str, float] = {}  # ... of it placed in this call
        self.holders: dict[str, list[WorkerState]] = {}  # model -> workers holding it (not draining)
        self.holder_speed: dict[str, float] = {}  # model -> those workers' total speed x slots
        self.arrival_rate: dict[str, float] = {}  # model -> recent work per second (recent_rate)
        self.taken: set = set()
        self.no_target: set = set()  # (model, pixels, exclusions, patient) with no free worker; see runnable_later_job
        self.placed: dict[str, int] = {}
        self.started_users: dict[int, int] = {}  # jobs assigned in this call, per user
        self.started_teams: dict[int, int] = {}  # ... per team
        self.added_usage: dict[int, float] = {}
        self.decisions = Decisions()

    # ------------------------------------------------------------------ index

    def index(self, jobs: Sequence[QueuedJob]) -> None:
        """One pass over the queue (the only O(jobs) work in a decision).

        Whether a job can run anywhere depends only on its model and its
        pixel count, so each model gets one pixel limit (the largest image
        some worker could ever take). A model no worker can hold makes all
        its jobs unplaceable at once; a job too large for its model's limit is
        reported when it reaches the front of its user's queue.
        """
        models: defaultdict[str, list[QueuedJob]] = defaultdict(list)
        users: defaultdict[int, list[QueuedJob]] = defaultdict(list)
        for job in jobs:
            models[job.model_id].append(job)
            users[job.user_id].append(job)
        workers = list(self.workers.values())
        by_family = _workers_by_family(workers)
        limits: dict[tuple, int] = {}
        refused: set = set()
        for model_id, model_jobs in models.items():
            first = model_jobs[0]
            family_workers, restricted = by_family.get(first.family, ((), False))
            # Without per-model serving lists, the limit depends on size alone.
            key = (first.family, first.model_gb, model_id if restricted else None)
            limit = limits.get(key)
            if limit is None:
                limit = limits[key] = _largest_runnable_pixels(first, family_workers)
            self.pixel_limits[model_id] = limit
            if limit == 0:
                reason = _why_unrunnable(model_jobs[0], workers) or "no worker can run it"
                for job in model_jobs:
                    self.decisions.unplaceable[job.id] = reason
                    refused.add(job.id)
                continue
            self.by_model[model_id] = _Queue(model_jobs)
            self.demand[model_id] = len(model_jobs)
        for worker in workers:
            if worker.draining:
                continue
            for model_id in worker.loaded_models:
                if model_id in self.by_model:
                    self.holders.setdefault(model_id, []).append(worker)
                    self.holder_speed[model_id] = self.holder_speed.get(model_id, 0.0) + worker.speed * worker.capacity
        for user_id, user_jobs in users.items():
            if refused:
                user_jobs = [job for job in user_jobs if job.id not in refused]
            if user_jobs:
                self.by_user[user_id] = _Queue(user_jobs)

    def refuse_if_too_large(self, job: QueuedJob) -> bool:
        if job.width * job.height <= self.pixel_limits[job.model_id]:
            return False
        self.decisions.unplaceable[job.id] = _why_unrunnable(job, list(self.workers.values())) or "no worker can run it"
        self.taken.add(job.id)
        self.placed[job.model_id] = self.placed.get(job.model_id, 0) + 1
        return True

    def refuse_if_excluded_everywhere(self, job: QueuedJob) -> bool:
        """A job whose out-of-memory history rules out every worker is unplaceable."""
        if not job.excluded_workers:
            return False
        others = [w for w in self.workers.values() if w.id not in job.excluded_workers]
        reason = _why_unrunnable(job, others, "ran out of memory on " + ", ".join(sorted(job.excluded_workers)))
        if reason is None:
            return False
        self.decisions.unplaceable[job.id] = reason
        self.taken.add(job.id)  # out of this call's way, but not assigned
        self.placed[job.model_id] = self.placed.get(job.model_id, 0) + 1
        return True

    # ------------------------------------------------------------------ fair share

    def user_rank(self, user_id: int, head: QueuedJob) -> tuple:
        share = self.shares.get(user_id, _DEFAULT_SHARE)
        waited = max(self.now - head.queued_at, 0.0)
        klass = head.priority + math.floor(waited / CLASS_AGE_S)
        usage = share.usage_s + self.added_usage.get(user_id, 0.0)
        score = usage / max(share.weight, 1e-9) - AGE_WEIGHT * waited
        team = self.team_shares.get(head.team_id) if head.team_id is not None else None
        if team is not None:
            # Members share their team's weight: a big team's many users do
            # not add up to more than the team's share.
            team_usage = team.usage_s + self.added_team_usage.get(head.team_id, 0.0)
            score += team_usage / max(team.weight, 1e-9)
        return (-klass, score, head.queued_at)

    def ranked_users(self) -> list[tuple[tuple, int]]:
        """A heap of (rank, user); only the served user's rank changes per slot."""
        heap = []
        for user_id, queue in self.by_user.items():
            head = queue.head(self.taken)
            if head is not None:
                heap.append((self.user_rank(user_id, head), user_id))
        heapq.heapify(heap)
        return heap

    # ------------------------------------------------------------------ placing

    def free_workers(self) -> list[WorkerState]:
        return [self.workers[wid] for wid, slots in self.slots.items() if slots > 0]

    def plan(self, worker: WorkerState, job: QueuedJob) -> tuple[float, tuple[str, ...]] | None:
        """What running ``job`` on ``worker`` costs now: (seconds, models to evict), or None if it cannot fit.

        The cost is the load time (nothing if the worker holds the model) plus
        the loss of each evicted model: its load time times the jobs waiting
        for it. Even a held model needs room for the job's working memory.
        """
        held = self.held[worker.id]
        holds = job.model_id in held
        need = (0.0 if holds else job.model_gb) + working_memory_gb(job.width, job.height, job.family) - self.free_gb[worker.id]
        cost = 0.0 if holds else job.model_gb / worker.load_gbps
        if need <= 1e-9:
            return cost, ()
        order = list(held)
        # Least demanded first, then least recently used (held is LRU-ordered).
        candidates = sorted(
            (m for m in held if m not in worker.in_use and m != job.model_id),
            key=lambda m: (self.waiting(m), order.index(m)),
        )
        plan = []
        for model_id in candidates:
            plan.append(model_id)
            cost += self.waiting(model_id) * held[model_id] / worker.load_gbps
            need -= held[model_id]
            if need <= 1e-9:
                return cost, tuple(plan)
        return None

    def waiting(self, model_id: str) -> int:
        """Queued jobs for a model not yet placed in this call."""
        return self.demand.get(model_id, 0) - self.placed.get(model_id, 0)

    def assign(self, job: QueuedJob, worker: WorkerState, evict: tuple[str, ...] = ()) -> None:
        self.no_target.clear()
        held = self.held[worker.id]
        for model_id in evict:
            self.free_gb[worker.id] += held.pop(model_id)
        if job.model_id in held:
            held[job.model_id] = held.pop(job.model_id)  # most recently used now
        else:
            held[job.model_id] = job.model_gb
            self.free_gb[worker.id] -= job.model_gb
            # The new copy holds the model for the rest of this call too: the
            # next job of a burst weighs another copy against it instead of
            # seeing no holder and loading the model on every free GPU.
            self.holders.setdefault(job.model_id, []).append(worker)
            self.holder_speed[job.model_id] = self.holder_speed.get(job.model_id, 0.0) + worker.speed * worker.capacity
        self.slots[worker.id] -= 1
        self.taken.add(job.id)
        self.placed[job.model_id] = self.placed.get(job.model_id, 0) + 1
        self.placed_work_s[job.model_id] = self.placed_work_s.get(job.model_id, 0.0) + job.est_seconds
        self.added_usage[job.user_id] = self.added_usage.get(job.user_id, 0.0) + job.est_seconds / worker.speed
        self.started_users[job.user_id] = self.started_users.get(job.user_id, 0) + 1
        if job.team_id is not None:
            self.added_team_usage[job.team_id] = self.added_team_usage.get(job.team_id, 0.0) + job.est_seconds / worker.speed
            self.started_teams[job.team_id] = self.started_teams.get(job.team_id, 0) + 1
        self.decisions.assignments.append(Assignment(job.id, job.attempt, worker.id, evict))

    def holder_for(self, job: QueuedJob) -> tuple[WorkerState, tuple[str, ...]] | None:
        """The best free worker that already holds the job's model."""
        best = None
        for worker in self.free_workers():
            if job.model_id not in self.held[worker.id] or not _can_run_here(job, worker):
                continue
            priced = self.plan(worker, job)
            if priced is None:
                continue
            rank = (priced[0], -worker.speed, -self.free_gb[worker.id])
            if best is None or rank < best[0]:
                best = (rank, worker, priced[1])
        return (best[1], best[2]) if best else None

    def affinity_pair(self) -> tuple[QueuedJob, WorkerState, tuple[str, ...]] | None:
        """The oldest waiting job for a model some free worker already holds."""
        best = None
        for worker in self.free_workers():
            for model_id in self.held[worker.id]:
                queue = self.by_model.get(model_id)
                if queue is None:
                    continue
                # Another user's job is taken out of turn here, so its
                # owner's limits are checked here too.
                job = queue.first_runnable_on(worker, self.taken, self.at_quota)
                if job is None or (best is not None and (-job.priority, job.queued_at) >= (-best[0].priority, best[0].queued_at)):
                    continue
                priced = self.plan(worker, job)
                if priced is not None and priced[0] == 0.0:
                    best = (job, worker, priced[1])
        return best

    def unplaced_work_s(self, model_id: str) -> float:
        work = self.work_s.get(model_id)
        if work is None:
            work = self.work_s[model_id] = sum(map(_EST_SECONDS, self.by_model[model_id].jobs))
        return work - self.placed_work_s.get(model_id, 0.0)

    def holders_backlog_s(self, job: QueuedJob) -> tuple[float, float]:
        """(B, H): the seconds the job's model's holders need for its queued work, and their total speed.

        Only holders that could take this very job count (size, exclusions);
        with none, B is infinite.
        """
        holders = sum(w.speed * w.capacity for w in self.holders.get(job.model_id, ()) if _can_run_here(job, w))
        if holders <= 0:
            return math.inf, 0.0
        return self.unplaced_work_s(job.model_id) / holders, holders

    def should_wait_for_holder(self, job: QueuedJob, worker: WorkerState, evicts: bool) -> bool:
        """Leave the job for the GPUs that hold its model rather than load another copy on ``worker``.

        An out-of-memory retry never waits: it goes where it fits. Otherwise,
        until the job's patience runs out, a copy that would evict waits (the
        evicted model's next job would cost a load of its own), and one that
        would not must pass the copy rule (module docstring), whose
        thresholds shrink as the job waits.
        """
        if job.excluded_workers:
            return False
        if not self.copy_allowed(worker.id, job.model_id):
            return True
        left = 1.0 - (self.now - job.queued_at) / patience_s(job)
        if left <= 0:
            return False
        if evicts and self.holders.get(job.model_id):
            return True
        backlog, holders = self.holders_backlog_s(job)
        if backlog < MIN_COPY_BACKLOG_S * left:
            return True
        if _copy_gain_s(backlog, holders, job, worker) < REPLICATE_GAIN_S * left:
            return True
        return backlog < BURST_BACKLOG_S * left and self.recent_rate(job.model_id) < COPY_DEMAND_SHARE * holders

    def recent_rate(self, model_id: str) -> float:
        """Speed-1 seconds of work per second that arrived for a model in the last COPY_RATE_WINDOW_S.

        Counted from the queue, so it misses jobs already placed: a lower
        bound, exact while the model is backlogged, which is when the copy
        rule asks.
        """
        rate = self.arrival_rate.get(model_id)
        if rate is None:
            since = self.now - COPY_RATE_WINDOW_S
            work = sum(job.est_seconds for job in self.by_model[model_id].jobs if job.queued_at >= since)
            rate = self.arrival_rate[model_id] = work / COPY_RATE_WINDOW_S
        return rate

    def copy_allowed(self, worker_id: str, model_id: str) -> bool:
        """Whether the snapshot's copy plan, if any, lets ``worker_id`` load another copy of a model others hold."""
        return self.copy_plan is None or not self.holders.get(model_id) or (worker_id, model_id) in self.copy_plan

    def cheapest_worker(self, job: QueuedJob) -> tuple[WorkerState, tuple[str, ...]] | None:
        best = None
        for worker in self.free_workers():
            if not _can_run_here(job, worker):
                continue
            priced = self.plan(worker, job)
            if priced is None:
                continue
            cost, evict = priced
            if job.model_id not in self.held[worker.id] and self.should_wait_for_holder(job, worker, bool(evict)):
                continue
            # After an out-of-memory failure the most free VRAM matters most;
            # otherwise no eviction first, then best fit (the smallest GPU)
            # keeps the big GPUs free for big models and for copies; where
            # every choice evicts, the least demand-weighted loss comes first.
            if job.excluded_workers:
                rank = (-self.free_gb[worker.id], cost)
            else:
                rank = (bool(evict), cost if evict else 0.0, worker.vram_total_gb, cost, -worker.speed)
            if best is None or rank < best[0]:
                best = (rank, worker, evict)
        return (best[1], best[2]) if best else None

    def runnable_later_job(self, user_id: int, lookahead: int = 32):
        """A later job of this user that a free worker can take, when the oldest cannot."""
        queue = self.by_user[user_id]
        looked = 0
        for i in range(queue.cursor, len(queue.jobs)):
            job = queue.jobs[i]
            if job.id in self.taken:
                continue
            looked += 1
            if looked > lookahead:
                return None
            # Whether a job has a target depends only on these, until the
            # next assignment changes the workers (which clears the memo).
            key = (job.model_id, job.pixels, job.excluded_workers, job.queued_at >= self.now - patience_s(job))
            if key in self.no_target:
                continue
            target = self.holder_for(job) or self.cheapest_worker(job)
            if target is not None:
                return job, target[0], target[1]
            self.no_target.add(key)
        return None

    def rebalance(self) -> None:
        """A free worker whose own models' queues are short takes a copy of a model whose holders are swamped.

        Without this a GPU that holds a popular model is never free of work
        for it, so a burst for a model only a few GPUs can run (FLUX on the
        big cards) waits on its one holder while the other big cards render
        SDXL images that small GPUs could take. The move is made when the
        swamped model's holders need at least REBALANCE_FACTOR times as long
        for its queue as this worker's own models' holders need for theirs,
        plus REBALANCE_MARGIN_S, the copy gains REPLICATE_GAIN_S net of its
        load, and it fits without evicting anything.
        """
        rough: dict[str, float] = {}  # model -> its queued work, estimated

        def backlog_s(model_id: str) -> float:
            """Seconds the model's holders (all of them) need for its queue, roughly.

            Summing every queued job of every model would cost more than the
            rest of a decision, so the waiting count is multiplied by the
            mean size of the next few jobs.
            """
            speed = self.holder_speed.get(model_id, 0.0)
            if speed <= 0:
                return math.inf
            work = rough.get(model_id)
            if work is None:
                queue = self.by_model[model_id]
                queue.head(self.taken)
                sample = queue.jobs[queue.cursor:queue.cursor + REBALANCE_SAMPLE]
                work = rough[model_id] = self.waiting(model_id) * sum(map(_EST_SECONDS, sample)) / max(len(sample), 1)
            return work / speed

        for worker in self.free_workers():
            held = [m for m in self.held[worker.id] if m in self.by_model and self.by_model[m].head(self.taken) is not None]
            if not held:
                continue  # nothing of its own to leave: the copy rule in cheapest_worker decides
            need = REBALANCE_FACTOR * max(map(backlog_s, held)) + REBALANCE_MARGIN_S
            candidates = sorted(((backlog_s(m), m) for m in self.holders if m not in self.held[worker.id]), reverse=True)
            for backlog, model_id in candidates:
                if backlog < need:
                    break
                job = self.by_model[model_id].first_runnable_on(worker, self.taken, self.at_quota)
                if job is None or not _can_run_here(job, worker) or not self.copy_allowed(worker.id, model_id):
                    continue
                if _copy_gain_s(backlog, self.holder_speed[model_id], job, worker) < REPLICATE_GAIN_S:
                    continue
                priced = self.plan(worker, job)
                if priced is None or priced[1]:
                    continue
                self.assign(job, worker, ())
                rough.pop(model_id, None)  # one job fewer waiting for it
                break

    def at_quota(self, job: QueuedJob) -> bool:
        """Whether starting ``job`` would pass its owner's or their team's max_concurrent_jobs.

        Both limits hold at once: a team's running jobs (all members') never
        pass the team's limit, nor a member's their own.
        """
        share = self.shares.get(job.user_id, _DEFAULT_SHARE)
        if share.max_running is not None and share.running + self.started_users.get(job.user_id, 0) >= share.max_running:
            return True
        team = self.team_shares.get(job.team_id) if job.team_id is not None else None
        return team is not None and team.max_running is not None \
            and team.running + self.started_teams.get(job.team_id, 0) >= team.max_running

    def run(self) -> None:
        self.rebalance()
        heap = self.ranked_users()
        while heap and any(slots > 0 for slots in self.slots.values()):
            _, user_id = heapq.heappop(heap)
            job = self.by_user[user_id].head(self.taken)
            if job is None:
                continue
            if self.at_quota(job):
                continue  # at their (or their team's) concurrency quota: done for this call
            if self.refuse_if_too_large(job) or self.refuse_if_excluded_everywhere(job):
                self._requeue_user(heap, user_id)
                continue
            target = self.holder_for(job)
            if target is None and self.now - job.queued_at < patience_s(job):
                pair = self.affinity_pair()
                if pair is not None:
                    self.assign(*pair)
                    # Another user's job was served: this user keeps its turn.
                    heapq.heappush(heap, (self.user_rank(user_id, job), user_id))
                    self._rerank(heap, pair[0].user_id, skip=user_id)
                    continue
            if target is None:
                target = self.cheapest_worker(job)
            if target is None:
                # Nothing free can take this user's oldest job now; a later
                # job of theirs may fit (no head-of-line blocking).
                later = self.runnable_later_job(user_id)
                if later is None:
                    continue  # this user is done for this call
                job, target = later[0], later[1:]
            self.assign(job, target[0], target[1])
            self._requeue_user(heap, user_id)
        self.preload_idle()

    def _requeue_user(self, heap, user_id: int) -> None:
        head = self.by_user[user_id].head(self.taken)
        if head is not None:
            heapq.heappush(heap, (self.user_rank(user_id, head), user_id))

    def _rerank(self, heap, user_id: int, skip: int) -> None:
        """After serving ``user_id`` out of turn, refresh its place in the heap."""
        if user_id == skip:
            return
        for i, (_, uid) in enumerate(heap):
            if uid == user_id:
                heap[i] = heap[-1]
                heap.pop()
                heapq.heapify(heap)
                break
        self._requeue_user(heap, user_id)

    def preload_idle(self) -> None:
        idle = [w for w in self.free_workers() if self.slots[w.id] == w.capacity]
        if not idle:
            return
        held_anywhere = {m for models in self.held.values() for m in models}
        waiting = sorted(((self.waiting(m), m) for m in self.by_model if m not in held_anywhere), reverse=True)
        for count, model_id in waiting:
            if count <= 0 or not idle:
                break
            sample = self.by_model[model_id].head(self.taken)
            if sample is None:
                continue
            for worker in idle:
                if not _can_run_here(sample, worker):
                    continue
                priced = self.plan(worker, sample)
                # Preloading never pushes out a model somebody is waiting for.
                if priced is None or any(self.waiting(m) > 0 for m in priced[1]):
                    continue
                plan = priced[1]
                for evicted in plan:
                    self.free_gb[worker.id] += self.held[worker.id].pop(evicted)
                self.held[worker.id][model_id] = sample.model_gb
                self.free_gb[worker.id] -= sample.model_gb
                self.decisions.preloads.append(Preload(worker.id, model_id, plan))
                idle.remove(worker)
                break


_UNKNOWN = object()
_EST_SECONDS = operator.attrgetter("est_seconds")
_DEFAULT_SHARE = Share()


def _copy_gain_s(backlog_s: float, holders_speed: float, job: QueuedJob, worker: WorkerState) -> float:
    """Seconds a copy on ``worker`` takes off a queue its holders (total speed H) need B seconds for, less the load.

    With the copy (speed s) the queue takes B·H/(H+s); no holders: infinite.
    """
    if holders_speed <= 0:
        return math.inf
    speed = worker.speed * worker.capacity
    return backlog_s * speed / (holders_speed + speed) - job.model_gb / worker.load_gbps


def _can_run_here(job: QueuedJob, worker: WorkerState) -> bool:
    return (
        worker.id not in job.excluded_workers
        and job.family in worker.families
        and (worker.serves_models is None or job.model_id in worker.serves_models)
        and job.pixels <= worker.max_pixels
        and job.model_gb + working_memory_gb(job.width, job.height, job.family) <= worker.vram_total_gb
    )


def _workers_by_family(workers: Sequence[WorkerState]) -> dict[str, tuple[list[tuple], bool]]:
    """family -> ([(vram_total_gb, max_pixels, serves_models)], whether any serves only some models)."""
    groups: dict[str, tuple[list[tuple], bool]] = {}
    for worker in workers:
        for family in worker.families:
            members, restricted = groups.get(family, ([], False))
            members.append((worker.vram_total_gb, worker.max_pixels, worker.serves_models))
            groups[family] = (members, restricted or worker.serves_models is not None)
    return groups


def _largest_runnable_pixels(job: QueuedJob, family_workers: Sequence[tuple]) -> int:
    """The largest width x height of this job's model that one of its family's workers could ever run."""
    best = 0
    model_id, model_gb = job.model_id, job.model_gb
    base_gb, gb_per_megapixel = _working_coefficients(job.family)
    for vram_total_gb, max_pixels, serves in family_workers:
        if serves is not None and model_id not in serves:
            continue
        room_gb = vram_total_gb - model_gb - base_gb
        if room_gb < 0:
            continue
        limit = int(room_gb / gb_per_megapixel * 1e6)
        if limit > max_pixels:
            limit = max_pixels
        if limit > best:
            best = limit
    return best


def _why_unrunnable(job: QueuedJob, workers: Sequence[WorkerState], prefix: str | None = None) -> str | None:
    reasons = []
    for worker in workers:
        why_not = worker.can_ever_run(job)
        if why_not is None:
            return None
        reasons.append(f"{worker.id} {why_not}")
    if not workers:
        reasons.append("no worker is online")
    return "; ".join(([prefix] if prefix else []) + reasons[:5]) + (f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else "")


def place(snapshot: Snapshot) -> Decisions:
    placement = _Placement(snapshot)
    placement.index(snapshot.jobs)
    if placement.slots:
        placement.run()
    return placement.decisions
