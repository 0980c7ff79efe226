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
   same-model work on the same worker is what saves loads. A job whose model
   no GPU holds skips this wait when a free worker can load the model
   without evicting anything: it needs a load wherever it goes, so waiting
   would save none. So does a job that an idle GPU with no queued work of
   its own can take without evicting anything: that GPU would stay idle
   while the job waited, and its load costs only time it would spend idle
   (``_Placement.idle_without_work``). So, too, does a job whose model's
   holders need at least ``BURST_BACKLOG_S`` for its queue, a bar that
   shrinks with the job's patience as step 4's thresholds do, where the
   copy rule of step 4 allows a copy (``_Placement.behind_by_a_burst``):
   left to this step, a burst waits on its holders while every GPU that
   frees takes other work. Throughout, evicting a model that no queued job waits for
   counts as evicting nothing (``COLD_COPY``).
4. Otherwise the job's model is loaded on a free worker. One where it fits
   without evicting anything comes first, the smallest such GPU first (best
   fit: the big GPUs stay free for the big models and for the copies a burst
   needs), then the shortest load. Where every choice must evict, the cost
   is the load time plus the loss of what is evicted, weighted by the queued
   demand for it. A job never goes where its model plus its
   resolution-dependent working memory cannot fit. When some busy worker
   already holds the model, another copy on a worker that renders
   something or would have to evict is loaded only when the holders
   would need at least ``MIN_COPY_BACKLOG_S`` for the model's queue and the
   copy would take at least ``REPLICATE_GAIN_S`` off that time, net of its
   load, and, unless the holders' backlog is a burst (``BURST_BACKLOG_S``),
   the work that arrived for the model in the last ``COPY_RATE_WINDOW_S``
   asks for at least ``COPY_DEMAND_SHARE`` of the holders' speed (the tail
   of a spent burst drains on its holders; a copy made for it is a load that
   is not used again). All three shrink to nothing as the job's patience runs
   out (delay scheduling), and until then a copy evicts no model that
   queued work waits for. A GPU that loads a model in this call counts as
   its holder for the rest of the call. A snapshot may carry a copy plan,
   the (worker, model) pairs where copies may go (an experiment's, see
   bench/scheduler_plan.py; the live scheduler sends none).

Before that, a free worker whose own models have only short queues takes a
copy of a model whose holders are far behind (``REBALANCE_FACTOR``,
``REBALANCE_MARGIN_S``): a GPU that holds a popular model is otherwise never
free to help with a burst for a model few GPUs can run.

A user whose oldest job has a deadline that its campaign can only just meet
gets a bounded lift in step 1 (see DEADLINE_BOOST_S) and its job skips step 3.

On a deep queue (DEEP_QUEUE_S of work for the whole farm) a free worker
first takes work that only its class of workers can run when that class is
the bottleneck (``_Placement.serve_scarce_work``), and an idle worker left
over takes a copy of the model whose holders are furthest behind
(``_Placement.fill_idle``). Idle workers left over preload the model with
the most waiting demand that nobody holds. ``Snapshot.jobs`` is expected in queue order (priority, then
age), as the scheduler's query returns it; the policy does not re-sort.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from farm.families import find_family
from farm.scheduler.jobqueue import JobQueue, Lane, as_job_queue

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


def working_memory_gb(width: int, height: int, family: str | None = None, reference_pixels: int = 0) -> float:
    """GB a render needs beside the weights: grows with the latent tokens, the
    image's and those of its reference images (FLUX.2 attends over both)."""
    base, per_megapixel = _working_coefficients(family)
    return base + per_megapixel * (width * height + reference_pixels) / 1e6


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
    # When it is due (same clock as queued_at), its own or its campaign's; None: no deadline.
    deadline: float | None = None
    # The campaign whose remaining work counts against the deadline (Snapshot.campaign_work_s).
    campaign_id: Hashable | None = None
    # Its model only loads on a CUDA GPU (a bitsandbytes-quantized variant, farm/quantization.py).
    needs_cuda: bool = False
    # Pixels of its reference images as the model sees them (params["reference_pixels"]).
    reference_pixels: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @functools.cached_property
    def working_gb(self) -> float:
        # Asked of each job many times a call (every worker it is weighed for): computed once per job.
        return working_memory_gb(self.width, self.height, self.family, self.reference_pixels)


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
    # The host-memory tier: models evicted from the GPU and kept in RAM, which
    # come back at h2d_gbps instead of load_gbps, and the tier's size (what an
    # eviction can move there instead of dropping).
    host_models: frozenset[str] = frozenset()
    h2d_gbps: float = 12.0
    ram_cache_gb: float = 0.0
    cuda: bool = True  # its device is a CUDA GPU (the worker row's device); False for a CPU worker

    def load_s(self, model_id: str, model_gb: float) -> float:
        """Seconds to bring a model it does not hold onto the GPU: from host memory if it is there, else from disk."""
        return model_gb / (self.h2d_gbps if model_id in self.host_models else self.load_gbps)

    def reload_s(self, model_gb: float) -> float:
        """Seconds to bring back a model evicted now: it waits in host memory when the tier can take it."""
        return model_gb / (self.h2d_gbps if model_gb <= self.ram_cache_gb else self.load_gbps)

    def takes_device_of(self, job: QueuedJob) -> bool:
        return self.cuda or not job.needs_cuda

    def can_ever_run(self, job: QueuedJob) -> str | None:
        """None if this worker could run the job once free; else why not."""
        if job.family not in self.families:
            return f"runs {', '.join(sorted(self.families)) or 'no'} families, not {job.family}"
        if self.serves_models is not None and job.model_id not in self.serves_models:
            return f"does not serve model {job.model_id}"
        if not self.takes_device_of(job):
            return f"has no CUDA GPU, which model {job.model_id} needs (quantized for CUDA kernels only)"
        if job.pixels > self.max_pixels:
            return f"accepts at most {self.max_pixels} pixels"
        if job.model_gb + job.working_gb > self.vram_total_gb:
            return (f"has {self.vram_total_gb:.1f} GB of VRAM; the job needs "
                    f"{job.model_gb + job.working_gb:.1f} GB")
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
    # In queue order. A JobQueue (farm/scheduler/jobqueue.py) that the caller
    # keeps between calls costs a call nothing per queued job; a plain
    # sequence is indexed once per call. A JobQueue is the caller's and may
    # change after the call: a policy that keeps what it saw copies it.
    jobs: Sequence[QueuedJob] | JobQueue
    workers: Sequence[WorkerState]
    now: float
    shares: Mapping[int, Share] = field(default_factory=dict)  # by user id; absent = weight 1, no use
    # By team id; absent = the team is not weighed and has no concurrency limit.
    team_shares: Mapping[int, Share] = field(default_factory=dict)
    # (worker id, model id) pairs where another copy of a model may be loaded;
    # None: anywhere the copy rule allows. The live scheduler leaves it None;
    # bench/scheduler_plan.py (an experiment, docs/benchmarks.md) fills it.
    copy_plan: frozenset[tuple[str, str]] | None = None
    # Campaign id -> its queued work (seconds at speed 1), for campaigns with a
    # deadline: the slack of a campaign's job counts all of it, not only the
    # jobs in this snapshot. A job whose campaign is absent counts its own.
    campaign_work_s: Mapping[Hashable, float] = field(default_factory=dict)


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
# ... and only if the work that arrived for the model in the last
# COPY_RATE_WINDOW_S seconds asks for at least COPY_DEMAND_SHARE of its
# holders' speed, unless their backlog is a burst (BURST_BACKLOG_S or more):
# a queue that is the tail of a spent burst drains on its holders, and a copy
# made for it is a load that is never used again. These three were chosen on
# the shipped traces at four worker orders and make_traces seeds 1-10, then
# checked once on seeds 11-15 (docs/benchmarks.md, fourth session).
COPY_RATE_WINDOW_S = 60.0
# An idle worker takes a copy of the model whose holders are furthest behind
# when the farm's queued work needs at least DEEP_QUEUE_S of all its GPUs,
# and the copy would render at least IDLE_COPY_LOADS times its own load time
# (see _Placement.fill_idle): on a deep queue an idle GPU is capacity lost
# for good, not a load saved. 90 s, not the 120 s first chosen when the
# policy saw at most 5,000 queued jobs: shown the whole queue, 120 s left
# two all-at-once traces over 1.15 x the makespan bound (docs/benchmarks.md).
DEEP_QUEUE_S = 90.0
IDLE_COPY_LOADS = 10.0
# Below a deep queue, a GPU that renders nothing and holds no model with
# queued work takes a job it can load without evicting, rather than leave it
# to the model's busy holders (_Placement.idle_without_work). 0 turns that
# off, as the policy was before 2026-12-07, to measure one against the other
# (scheduler_sweep.py --set IDLE_COPY=0): it trades issue 3's load bound for
# waits, makespan and deadlines (docs/benchmarks.md).
IDLE_COPY = 1
# A copy that evicts only models no queued job waits for is weighed by the
# copy rule like one that evicts nothing (a model with queued work is still
# never pushed out while the job can wait); and a user's head job whose
# model's holders are a burst behind (BURST_BACKLOG_S, less as the job waits)
# is weighed for a copy before the affinity step gives the free workers other
# users' jobs of the models they hold. 0 turns both off, as the policy was before the fifth
# session of 2026-12-07: they cut the mixed-deadline runs over 1.1 x fifo's
# p95 from 9 of 44 to 4, and the mixed ones from 10 to 0, for more loads
# (docs/benchmarks.md, "Cold evictions and burst copies").
COLD_COPY = 1
# On a queue of at least SCARCE_QUEUE_S, work that only some workers can run
# is scarce when it needs them SCARCE_FACTOR times as long as the whole queue
# needs the whole farm; they take it before work others could do (see
# _Placement.serve_scarce_work). The rule passes fair share by, so it waits
# for a deeper queue than the idle copy: at 120 s it raised the p95 wait of
# make_traces seed 2's deadlines trace from 136 to 188 s; at 180 s it leaves
# every spread-out trace as it was (docs/benchmarks.md).
SCARCE_FACTOR = 1.0
SCARCE_QUEUE_S = 180.0
COPY_DEMAND_SHARE = 0.9
BURST_BACKLOG_S = 90.0


# Deadlines (issue 23): a campaign (or a lone job) with a deadline needs its
# queued work rendered in the time left: so many render slots at the mean
# speed of the slots that can run it. While its owner runs fewer jobs than
# that, times DEADLINE_MARGIN, the owner's fair-share score drops by
# DEADLINE_BOOST_S seconds of waiting and the job stops waiting for a worker
# that holds its model. The boost is bounded twice: it lasts only while the
# campaign is behind the rate its deadline needs (just in time, not first in
# line: a campaign with hours to spare needs few slots and gets no more), and
# a user without deadlines who has waited DEADLINE_BOOST_S longer still goes
# first; the ageing of priority classes is untouched, so nobody starves.
# 45 s, not the 120 s first chosen: on make_traces seeds 1-50 (200 runs) the
# lift's price, the waits of a campaign without a deadline that yields to
# lifted ones, put 22 runs over 1.1 x fifo's p95 at 120 s and 7 at 45 s,
# while each run still misses fewer deadlines than fifo (one tie, at 3);
# chosen on seeds 1-30, held on 31-50 (docs/benchmarks.md, seventh session).
DEADLINE_BOOST_S = 45.0
DEADLINE_HORIZON_S = 90.0
DEADLINE_MARGIN = 1.25


def mean_slot_speed(job: QueuedJob, workers) -> float:
    """The mean speed of the render slots that could run ``job`` (0: none could)."""
    speed = slots = 0.0
    for worker in workers:
        if not worker.draining and _can_run_here(job, worker):
            speed += worker.speed * worker.capacity
            slots += worker.capacity
    return speed / slots if slots else 0.0


def patience_s(job: QueuedJob) -> float:
    return max(MIN_PATIENCE_S, PATIENCE_LOADS * job.model_gb / REFERENCE_LOAD_GBPS)


class _Queue:
    """One lane of the job queue as one ``place`` call reads it: a cursor past the jobs the call has taken.

    The lane is read lazily: ``jobs`` holds only the jobs read so far, so a
    call pays for the heads and the few jobs behind them that it looks at,
    never for the length of the queue.
    """

    __slots__ = ("jobs", "cursor", "_rest")

    def __init__(self, lane: Lane) -> None:
        self.jobs: list[QueuedJob] = []
        self.cursor = 0
        self._rest = iter(lane)

    def has(self, i: int) -> bool:
        """Whether the lane has an i-th job (read up to it if need be)."""
        jobs = self.jobs
        while len(jobs) <= i:
            job = next(self._rest, None)
            if job is None:
                return False
            jobs.append(job)
        return True

    def head(self, taken: set) -> QueuedJob | None:
        i = self.cursor
        while self.has(i) and self.jobs[i].id in taken:
            i += 1
        self.cursor = i
        return self.jobs[i] if i < len(self.jobs) else None

    def upcoming(self, count: int) -> list[QueuedJob]:
        """The next ``count`` jobs from the cursor on (taken ones included)."""
        self.has(self.cursor + count - 1)
        return self.jobs[self.cursor:self.cursor + count]

    def first_runnable_on(self, worker: WorkerState, taken: set, held_back=None, limit: int = 8) -> QueuedJob | None:
        """The oldest untaken job that can run on ``worker`` (looks a few deep); ``held_back(job)``: skip it."""
        jobs = self.jobs
        seen = 0
        i = self.cursor
        while self.has(i):
            job = jobs[i]
            i += 1
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
        self.campaign_work_s = snapshot.campaign_work_s
        self.slot_speed: dict[tuple, float] = {}  # (model, pixels, exclusions) -> mean speed of a slot that can run it
        self.slot_count: dict[tuple, int] = {}  # ... and how many such slots there are
        self.needs: dict[Hashable, float] = {}  # job id -> slots_needed (jobs with a deadline only)
        self.team_shares = snapshot.team_shares
        self.added_team_usage: dict[int, float] = {}
        self.workers = {w.id: w for w in snapshot.workers}
        self.held = {w.id: dict(w.loaded_models) for w in snapshot.workers}
        self.free_gb = {
            w.id: min(w.vram_free_gb, w.vram_total_gb - sum(w.loaded_models.values())) for w in snapshot.workers
        }
        self.slots = {w.id: w.capacity - w.busy for w in snapshot.workers if not w.draining and w.busy < w.capacity}
        # The workers with a free slot, in snapshot order; a worker leaves when its last slot is taken.
        self.free = {wid: self.workers[wid] for wid in self.slots}
        self.by_model: dict[str, _Queue] = {}
        self.by_user: dict[int, _Queue] = {}
        self.demand: dict[str, int] = {}
        self.pixel_limits: dict[str, int] = {}
        self.placed_work_s: dict[str, float] = {}  # ... of it placed in this call
        self.holders: dict[str, list[WorkerState]] = {}  # model -> workers holding it (not draining)
        self.holder_speed: dict[str, float] = {}  # model -> those workers' total speed x slots
        # (model, pixels, reference pixels, exclusions) -> (holders counted, their speed x slots); see holders_backlog_s
        self.holder_speed_for: dict[tuple, tuple[int, float]] = {}
        # model -> [recent work counted so far, the rest of its recent jobs] (recent_rate_below)
        self.arrival_rate: dict[str, list] = {}
        self.taken: set = set()
        # target_key() -> the oldest queued_at of a job of that shape no free worker takes now (see without_target)
        self.no_target: dict[tuple, float] = {}
        self.placed: dict[str, int] = {}
        self.started_users: dict[int, int] = {}  # jobs assigned in this call, per user
        self.started_teams: dict[int, int] = {}  # ... per team
        self.added_usage: dict[int, float] = {}
        self.decisions = Decisions()
        # Workers that can run the same jobs are alike: grouped by what _can_run_here reads (and whether
        # they drain). A farm has a few kinds of GPU, so what depends only on the kind is worked out per kind.
        self.kinds: dict[tuple, list[WorkerState]] = {}
        for worker in snapshot.workers:
            self.kinds.setdefault((worker.families, worker.serves_models, worker.cuda, worker.max_pixels,
                                   worker.vram_total_gb, worker.draining), []).append(worker)
        self.deep = _UNKNOWN  # deep_queue() as the call found it, once asked (idle_without_work)

    # ------------------------------------------------------------------ index

    def index(self, queue: JobQueue) -> None:
        """Read the queue's per-model and per-user lanes (no work per job; see farm/scheduler/jobqueue.py).

        Whether a job can run anywhere depends only on its model and its
        pixel count, so each model gets one pixel limit (the largest image
        some worker could ever take). A model no worker can hold makes all
        its jobs unplaceable at once; a job too large for its model's limit is
        reported when it reaches the front of its user's queue.
        """
        self.queue = queue
        workers = list(self.workers.values())
        by_family = _workers_by_family(self.kinds)
        limits: dict[tuple, int] = {}
        for model_id, lane in queue.models.items():
            first = lane.first()
            family_workers, restricted = by_family.get(first.family, ((), False))
            # Without per-model serving lists, the limit depends on size alone.
            key = (first.family, first.model_gb, first.needs_cuda, model_id if restricted else None)
            limit = limits.get(key)
            if limit is None:
                limit = limits[key] = _largest_runnable_pixels(first, family_workers)
            self.pixel_limits[model_id] = limit
            if limit == 0:
                reason = _why_unrunnable(first, workers) or "no worker can run it"
                for job in lane:
                    self.decisions.unplaceable[job.id] = reason
                    # Out of this call's way: the users' queues skip them.
                    self.taken.add(job.id)
                continue
            self.by_model[model_id] = _Queue(lane)
            self.demand[model_id] = lane.count
        for worker in workers:
            if worker.draining:
                continue
            for model_id in worker.loaded_models:
                if model_id in self.by_model:
                    self.holders.setdefault(model_id, []).append(worker)
                    self.holder_speed[model_id] = self.holder_speed.get(model_id, 0.0) + worker.speed * worker.capacity
        for user_id, lane in queue.users.items():
            self.by_user[user_id] = _Queue(lane)

    def refuse_if_too_large(self, job: QueuedJob) -> bool:
        # The per-model pixel limit counts the render alone; a job with
        # reference images (rare) is checked worker by worker with them.
        why_not = _why_unrunnable(job, list(self.workers.values())) if job.reference_pixels else None
        if job.width * job.height <= self.pixel_limits[job.model_id] and why_not is None:
            return False
        self.decisions.unplaceable[job.id] = why_not or _why_unrunnable(job, list(self.workers.values())) or "no worker can run it"
        self.set_aside(job)
        return True

    def set_aside(self, job: QueuedJob) -> None:
        """Take a refused job out of this call: it no longer waits for its model."""
        self.taken.add(job.id)
        self.placed[job.model_id] = self.placed.get(job.model_id, 0) + 1
        # Fewer waiting for a model can leave its holder idle without work (idle_without_work).
        self.no_target.clear()

    def refuse_if_excluded_everywhere(self, job: QueuedJob) -> bool:
        """A job whose out-of-memory history rules out every worker is unplaceable."""
        if not job.excluded_workers:
            return False
        others = [w for w in self.workers.values() if w.id not in job.excluded_workers]
        reason = _why_unrunnable(job, others, "ran out of memory on " + ", ".join(sorted(job.excluded_workers)))
        if reason is None:
            return False
        self.decisions.unplaceable[job.id] = reason
        self.set_aside(job)
        return True

    # ------------------------------------------------------------------ fair share

    def user_rank(self, user_id: int, head: QueuedJob) -> tuple:
        share = self.shares.get(user_id, _DEFAULT_SHARE)
        waited = max(self.now - head.queued_at, 0.0)
        klass = head.priority + math.floor(waited / CLASS_AGE_S)
        usage = share.usage_s + self.added_usage.get(user_id, 0.0)
        score = usage / max(share.weight, 1e-9) - AGE_WEIGHT * waited
        if self.behind(user_id, head):
            score -= AGE_WEIGHT * DEADLINE_BOOST_S
        team = self.team_shares.get(head.team_id) if head.team_id is not None else None
        if team is not None:
            # Members share their team's weight: a big team's many users do
            # not add up to more than the team's share.
            team_usage = team.usage_s + self.added_team_usage.get(head.team_id, 0.0)
            score += team_usage / max(team.weight, 1e-9)
        return (-klass, score, head.queued_at)

    def slots_needed(self, job: QueuedJob) -> float:
        """Render slots the job's campaign (or the job alone) needs from now on to meet its deadline; 0: none.

        Its queued work over the time left, at the mean speed of a slot that
        could run it; infinite once the deadline has passed or when nothing
        can run it.
        """
        if job.deadline is None:
            return 0.0
        known = self.needs.get(job.id)
        if known is None:
            key = (job.model_id, job.pixels, job.excluded_workers)
            speed = self.slot_speed.get(key)
            if speed is None:
                speed = self.slot_speed[key] = mean_slot_speed(job, self.workers.values())
            work = self.campaign_work_s.get(job.campaign_id, job.est_seconds) if job.campaign_id is not None \
                else job.est_seconds
            left = job.deadline - self.now
            slots = self.slot_count.get(key)
            if slots is None:
                slots = self.slot_count[key] = sum(w.capacity for w in self.workers.values()
                                                   if not w.draining and _can_run_here(job, w))
            if left <= 0 or speed <= 0:
                known = math.inf
            elif left - work / (speed * slots) > DEADLINE_HORIZON_S:
                known = 0.0  # time enough even at the last moment: no boost yet
            else:
                known = work / (left * speed)
            self.needs[job.id] = known
        return known

    def behind(self, user_id: int, head: QueuedJob) -> bool:
        """Whether the user runs fewer jobs than its head job's deadline needs (DEADLINE_MARGIN to spare)."""
        if head.deadline is None:
            return False
        running = self.shares.get(user_id, _DEFAULT_SHARE).running + self.started_users.get(user_id, 0)
        return running < DEADLINE_MARGIN * self.slots_needed(head)

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
        return list(self.free.values())

    def plan(self, worker: WorkerState, job: QueuedJob) -> tuple[float, tuple[str, ...]] | None:
        """What running ``job`` on ``worker`` costs now: (seconds, models to evict), or None if it cannot fit.

        The cost is the load time (nothing if the worker holds the model) plus
        the loss of each evicted model: its load time back (from the host tier
        when the worker has room there) times the jobs waiting for it. A model
        the worker keeps in host memory loads at its host-to-GPU rate. Even a
        held model needs room for the job's working memory.
        """
        held = self.held[worker.id]
        holds = job.model_id in held
        need = (0.0 if holds else job.model_gb) + job.working_gb - self.free_gb[worker.id]
        cost = 0.0 if holds else worker.load_s(job.model_id, job.model_gb)
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
            cost += self.waiting(model_id) * worker.reload_s(held[model_id])
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
        if not self.slots[worker.id]:
            del self.free[worker.id]
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
        return self.queue.models[model_id].work_s - self.placed_work_s.get(model_id, 0.0)

    def model_backlog_s(self, model_id: str) -> float:
        """Seconds all of a model's holders need for its unplaced queued work (the queue keeps its sum); a
        model nobody holds needs practically forever."""
        return self.unplaced_work_s(model_id) / max(self.holder_speed.get(model_id, 0.0), 1e-9)

    def holders_backlog_s(self, job: QueuedJob) -> tuple[float, float]:
        """(B, H): the seconds the job's model's holders need for its queued work, and their total speed.

        Only holders that could take this very job count (size, exclusions);
        with none, B is infinite.
        """
        # Which holders can take a job depends on its model, size (with its
        # references) and exclusions only, and a call only adds holders: each shape's sum is
        # kept and extended by the holders added since (else this is
        # free workers x holders per job on a deep queue).
        members = self.holders.get(job.model_id, ())
        key = (job.model_id, job.pixels, job.reference_pixels, job.excluded_workers)
        counted, holders = self.holder_speed_for.get(key, (0, 0.0))
        if counted < len(members):
            holders += sum(w.speed * w.capacity for w in members[counted:] if _can_run_here(job, w))
            self.holder_speed_for[key] = (len(members), holders)
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
        if IDLE_COPY and not evicts and self.idle_without_work(worker):
            return False
        left = self.patience_left(job)
        if left <= 0 or self.behind(job.user_id, job):
            return False
        if evicts and self.holders.get(job.model_id):
            return True
        backlog, holders = self.holders_backlog_s(job)
        if backlog < MIN_COPY_BACKLOG_S * left:
            return True
        if _copy_gain_s(backlog, holders, job, worker) < REPLICATE_GAIN_S * left:
            return True
        return backlog < BURST_BACKLOG_S * left and self.recent_rate_below(job.model_id, COPY_DEMAND_SHARE * holders)

    def patience_left(self, job: QueuedJob) -> float:
        """The share of ``job``'s patience still to run: 1 when it arrives, 0 or less once spent."""
        patience = patience_s(job)
        return 1.0 - (self.now - job.queued_at) / patience if patience > 0 else 0.0

    def behind_by_a_burst(self, job: QueuedJob) -> bool:
        """Whether the holders of ``job``'s model need at least BURST_BACKLOG_S for its queued work (COLD_COPY),
        a bar that shrinks with the job's patience, as the copy rule's thresholds do.

        Such a backlog is what the copy rule loads a copy for. Left to the
        affinity step, the job waits while every GPU that frees takes a job
        of a model it holds: on make_traces seed 4's deadlines trace at
        worker order 1, the 250 images of a campaign that arrived at once
        waited so. The p95 wait of all jobs there is 204.2 s with a fixed bar
        and 214.5 s with ``COLD_COPY=0`` (fifo: 186.9 s; scheduler_sweep.py's
        row, docs/benchmarks.md). With a fixed bar, a backlog just under it
        still drained on its holder while its jobs waited out their
        patience: on seed 2's deadlines trace `backgrounds`' 126 sdxl-turbo
        images rendered on one GPU from 336 s to 446 s, and the p95 there
        was 1.23-1.27 x fifo's at every worker order (1.08-1.12 x with the
        bar shrinking).
        """
        return bool(COLD_COPY) and self.holders_backlog_s(job)[0] >= BURST_BACKLOG_S * max(self.patience_left(job), 0.0)

    def idle_without_work(self, worker: WorkerState) -> bool:
        """Whether ``worker`` renders nothing and holds no model with queued work (or none at all).

        Such a GPU stays idle until work for its own models arrives, so a
        copy that evicts nothing costs it only its load time, which it would
        have spent idle: waiting for the holders saves no GPU time, and the
        time it stays idle is lost to the whole queue. On the deadlines
        traces GPUs that never loaded a model sat idle for 271-586
        speed-seconds while jobs waited for busy holders (docs/benchmarks.md).
        On a deep queue the answer is no: there ``fill_idle`` gives such a
        GPU the model furthest behind, which ends the queue sooner than the
        next job fair share picks.
        """
        if self.deep is _UNKNOWN:
            self.deep = self.deep_queue()
        return self.deep is None and self.idle(worker) and not any(self.waiting(m) > 0 for m in self.held[worker.id])

    def idle(self, worker: WorkerState) -> bool:
        """Whether every slot of ``worker`` is free: nothing runs there and this call gave it nothing
        (``slots`` counts capacity less busy, less this call's assignments)."""
        return self.slots.get(worker.id) == worker.capacity

    def recent_rate_below(self, model_id: str, rate: float) -> bool:
        """Whether the speed-1 seconds of work per second that arrived for a model in the last COPY_RATE_WINDOW_S stay below ``rate``.

        Counted from the queue, so it misses jobs already placed: a lower
        bound, exact while the model is backlogged, which is when the copy
        rule asks. The newest jobs are read first and the count stops as
        soon as it reaches ``rate`` (kept for the next question), so a deep
        queue of recent arrivals costs a few jobs, not all of them.
        """
        seen = self.arrival_rate.get(model_id)
        if seen is None:
            lane = self.queue.models[model_id]
            seen = self.arrival_rate[model_id] = [0.0, lane.newer_than(self.now - COPY_RATE_WINDOW_S)]
        wanted = rate * COPY_RATE_WINDOW_S
        while seen[0] < wanted and seen[1] is not None:
            job = next(seen[1], None)
            if job is None:
                seen[1] = None
            else:
                seen[0] += job.est_seconds
        return seen[0] < wanted

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
            # An eviction counts against a copy only when it pushes out a model with queued work.
            evicts = any(self.waiting(m) > 0 for m in evict) if COLD_COPY else bool(evict)
            if job.model_id not in self.held[worker.id] and self.should_wait_for_holder(job, worker, evicts):
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

    def cheapest_target(self, job: QueuedJob) -> tuple[WorkerState, tuple[str, ...]] | None:
        """``cheapest_worker(job)``, or None at once when the no-target memo already knows no free worker takes it."""
        if self.known_without_target(job):
            return None
        target = self.cheapest_worker(job)
        if target is None:
            self.note_without_target(job)
        return target

    def runnable_later_job(self, user_id: int, lookahead: int = 32):
        """A later job of this user that a free worker can take, when the oldest cannot."""
        queue = self.by_user[user_id]
        looked = 0
        i = queue.cursor
        while queue.has(i):
            job = queue.jobs[i]
            i += 1
            if job.id in self.taken:
                continue
            looked += 1
            if looked > lookahead:
                return None
            if self.known_without_target(job):
                continue
            target = self.holder_for(job) or self.cheapest_worker(job)
            if target is not None:
                return job, target[0], target[1]
            self.note_without_target(job)
        return None

    def target_key(self, job: QueuedJob) -> tuple:
        """What besides its age decides whether a free worker takes ``job`` now, until the next assignment
        changes the workers (which clears ``no_target``): its model, size, exclusions and deadline lift."""
        return (job.model_id, job.pixels, job.reference_pixels, job.excluded_workers, self.behind(job.user_id, job))

    def known_without_target(self, job: QueuedJob) -> bool:
        """Whether no free worker takes ``job``, known from a job of its shape at least as old.

        Exact, not a guess: a younger job of the same shape (model, so the
        same patience) has more patience left, and the copy rule's thresholds
        only grow with it (should_wait_for_holder): it waits wherever the
        older one waited. Users' heads are mostly alike; without this a call
        prices every free worker once per user.
        """
        oldest = self.no_target.get(self.target_key(job))
        return oldest is not None and job.queued_at >= oldest

    def note_without_target(self, job: QueuedJob) -> None:
        key = self.target_key(job)
        self.no_target[key] = min(self.no_target.get(key, math.inf), job.queued_at)

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
        ranked = None  # every held model by backlog, longest first; only an assignment changes it
        for worker in self.free_workers():
            held = [m for m in self.held[worker.id] if m in self.by_model and self.by_model[m].head(self.taken) is not None]
            if not held:
                continue  # nothing of its own to leave: the copy rule in cheapest_worker decides
            need = REBALANCE_FACTOR * max(map(self.model_backlog_s, held)) + REBALANCE_MARGIN_S
            if ranked is None:
                ranked = sorted(((self.model_backlog_s(m), m) for m in self.holders), reverse=True)
            for backlog, model_id in ranked:
                if backlog < need:
                    break
                if model_id in self.held[worker.id]:
                    continue
                job = self.by_model[model_id].first_runnable_on(worker, self.taken, self.at_quota)
                if job is None or not _can_run_here(job, worker) or not self.copy_allowed(worker.id, model_id):
                    continue
                if _copy_gain_s(backlog, self.holder_speed[model_id], job, worker) < REPLICATE_GAIN_S:
                    continue
                priced = self.plan(worker, job)
                if priced is None or priced[1]:
                    continue
                self.assign(job, worker, ())
                ranked = None
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

    def deep_queue(self) -> tuple[float, float] | None:
        """(queued work, total speed) when the farm's queued work needs at least DEEP_QUEUE_S of all its GPUs."""
        speed = sum(w.speed * w.capacity for w in self.workers.values() if not w.draining)
        work = sum(self.unplaced_work_s(m) for m in self.by_model)
        if speed <= 0 or work / speed < DEEP_QUEUE_S:
            return None
        return work, speed

    def serve_scarce_work(self) -> None:
        """On a deep queue, a free worker that can run work few others can (FLUX on the big cards) takes it first.

        The makespan of a deep queue is bounded by each eligibility class's
        work over its speed (simulator.makespan_lower_bound_s): when the work
        only a class of workers can run needs them longer than the whole
        queue needs the whole farm (SCARCE_FACTOR), every job those workers
        take that others could run (an SDXL image on a FLUX card) pushes the
        end of the queue back. So such a worker takes a job of the scarce
        work first: one of a model it holds, else of the scarce model whose
        holders are furthest behind, evicting nothing anybody waits for.
        """
        free = [w for w in self.free.values() if not w.draining]
        if not free:
            return
        deep = self.deep_queue()
        if deep is None or deep[0] / deep[1] < SCARCE_QUEUE_S:
            return
        work, speed = deep
        kinds = {kind: members for kind, members in self.kinds.items() if not kind[-1]}  # not draining
        classes: dict[frozenset, list] = {}  # kinds that can run a model -> [work, models]
        for model_id, queue in self.by_model.items():
            first = queue.head(self.taken)
            if first is None:
                continue
            able = frozenset(kind for kind, members in kinds.items() if _can_run_here(first, members[0]))
            entry = classes.setdefault(able, [0.0, []])
            entry[0] += self.unplaced_work_s(model_id)
            entry[1].append(model_id)
        scarce: dict[str, float] = {}  # model -> its class's backlog
        for able, (class_work, models) in classes.items():
            class_speed = sum(w.speed * w.capacity for kind in able for w in kinds[kind])
            if 0 < class_speed < speed and class_work / class_speed > SCARCE_FACTOR * work / speed:
                for model_id in models:
                    scarce[model_id] = class_work / class_speed
        if not scarce:
            return
        for worker in free:
            if self.slots.get(worker.id, 0) <= 0:
                continue
            held = [m for m in self.held[worker.id] if m in scarce]
            ranked = held + sorted((m for m in scarce if m not in held),
                                   key=lambda m: -self.model_backlog_s(m))
            for model_id in ranked:
                job = self.next_job_for(model_id, worker)
                if job is not None and self.assign_sparing_waited(job, worker):
                    break

    def next_job_for(self, model_id: str, worker: WorkerState) -> QueuedJob | None:
        """The oldest queued job of a model that ``worker`` can run and its owner may start."""
        job = self.by_model[model_id].first_runnable_on(worker, self.taken, self.at_quota)
        return job if job is not None and _can_run_here(job, worker) else None

    def assign_sparing_waited(self, job: QueuedJob, worker: WorkerState) -> bool:
        """Assign ``job`` to ``worker`` unless that evicts a model somebody waits for; whether it did."""
        priced = self.plan(worker, job)
        if priced is None or any(self.waiting(m) > 0 for m in priced[1]):
            return False
        self.assign(job, worker, priced[1])
        return True

    def run(self) -> None:
        self.rebalance()
        self.serve_scarce_work()
        heap = self.ranked_users()
        while heap and self.free:
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
            priced = _UNKNOWN  # cheapest_target(job), once asked
            if target is None and not self.holders.get(job.model_id):
                # No GPU holds its model: it needs a load wherever it goes, so
                # it waits for nobody where a load evicts nothing (step 3).
                priced = self.cheapest_target(job)
                if priced is not None and not priced[1]:
                    target = priced
            if target is None and priced is _UNKNOWN and self.behind_by_a_burst(job):
                # The affinity step below would serve the free workers their own
                # models' jobs while this one's holders are a burst behind: the
                # copy rule decides first.
                priced = target = self.cheapest_target(job)
            if target is None and self.patience_left(job) > 0 and not self.behind(user_id, job):
                pair = self.affinity_pair()
                if pair is not None:
                    self.assign(*pair)
                    # Another user's job was served: this user keeps its turn.
                    heapq.heappush(heap, (self.user_rank(user_id, job), user_id))
                    self._rerank(heap, pair[0].user_id, skip=user_id)
                    continue
            if target is None:
                # Nothing was placed since it was priced (affinity would have continued).
                target = self.cheapest_target(job) if priced is _UNKNOWN else priced
            if target is None:
                # Nothing free can take this user's oldest job now; a later
                # job of theirs may fit (no head-of-line blocking).
                later = self.runnable_later_job(user_id)
                if later is None:
                    continue  # this user is done for this call
                job, target = later[0], later[1:]
            self.assign(job, target[0], target[1])
            self._requeue_user(heap, user_id)
        self.fill_idle()
        self.preload_idle()

    def fill_idle(self) -> None:
        """On a deep queue, an idle worker that fair share left without work takes a copy of the most behind model.

        The copy rule weighs a copy against its one model's queue, which is
        right while the holders' backlog is short or the farm has room: the
        holders drain it and the load is saved. When every GPU has work for
        minutes to come (the farm's queued work over its speed is at least
        DEEP_QUEUE_S, as when a large campaign or many arrive at once), an
        idle GPU left waiting stays idle until the end, and the whole queue
        ends later by what it could have rendered. So such a worker takes
        the model whose holders need longest for their queue, when it would
        render at least IDLE_COPY_LOADS times its load time of that model's
        work before the holders and it drain it, without evicting anything
        somebody waits for.
        """
        idle = [w for w in self.free.values() if self.idle(w)]
        if not idle or self.deep_queue() is None:
            return
        for worker in idle:
            own = worker.speed * worker.capacity
            ranked = sorted(((self.model_backlog_s(m), m)
                             for m in self.by_model if self.waiting(m) > 0 and m not in self.held[worker.id]),
                            reverse=True)
            for backlog, model_id in ranked:
                job = self.next_job_for(model_id, worker)
                if job is None or not self.copy_allowed(worker.id, model_id):
                    continue
                holders = self.holder_speed.get(model_id, 0.0)
                # Work it takes over while it and the holders drain the queue together.
                share = backlog * holders / (holders + own) * own if holders > 0 else self.unplaced_work_s(model_id)
                if share >= IDLE_COPY_LOADS * job.model_gb / worker.load_gbps and self.assign_sparing_waited(job, worker):
                    break

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
        idle = [w for w in self.free_workers() if self.idle(w)]
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
_DEFAULT_SHARE = Share()


def _copy_gain_s(backlog_s: float, holders_speed: float, job: QueuedJob, worker: WorkerState) -> float:
    """Seconds a copy on ``worker`` takes off a queue its holders (total speed H) need B seconds for, less the load.

    With the copy (speed s) the queue takes B·H/(H+s); no holders: infinite.
    """
    if holders_speed <= 0:
        return math.inf
    speed = worker.speed * worker.capacity
    return backlog_s * speed / (holders_speed + speed) - worker.load_s(job.model_id, job.model_gb)


def _can_run_here(job: QueuedJob, worker: WorkerState) -> bool:
    # The hottest test of a call (jobs x free workers): WorkerState.takes_device_of and QueuedJob.pixels inlined.
    return (
        job.family in worker.families
        and worker.id not in job.excluded_workers
        and (worker.serves_models is None or job.model_id in worker.serves_models)
        and (worker.cuda or not job.needs_cuda)
        and job.width * job.height <= worker.max_pixels
        and job.model_gb + job.working_gb <= worker.vram_total_gb
    )


def _workers_by_family(kinds: Mapping[tuple, Sequence[WorkerState]]) -> dict[str, tuple[list[tuple], bool]]:
    """family -> ([(vram_total_gb, max_pixels, serves_models, cuda)], whether any serves only some models), one
    entry per kind of worker (_Placement.kinds) that runs the family."""
    groups: dict[str, tuple[list[tuple], bool]] = {}
    for families, serves_models, cuda, max_pixels, vram_total_gb, _ in kinds:
        for family in families:
            members, restricted = groups.get(family, ([], False))
            members.append((vram_total_gb, max_pixels, serves_models, cuda))
            groups[family] = (members, restricted or serves_models is not None)
    return groups


def _largest_runnable_pixels(job: QueuedJob, family_workers: Sequence[tuple]) -> int:
    """The largest width x height of this job's model that one of its family's workers could ever run."""
    best = 0
    model_id, model_gb = job.model_id, job.model_gb
    base_gb, gb_per_megapixel = _working_coefficients(job.family)
    for vram_total_gb, max_pixels, serves, cuda in family_workers:
        if serves is not None and model_id not in serves:
            continue
        if job.needs_cuda and not cuda:
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
    placement.index(as_job_queue(snapshot.jobs))
    if placement.slots:
        placement.run()
    return placement.decisions
