"""A virtual GPU cluster that replays a workload trace against a placement policy.

The simulator is event driven: time jumps from one event (a job arrives, a
render finishes, a preload finishes) to the next. At each event time it builds
the same ``Snapshot`` the live scheduler builds, calls the policy once, and
applies the decisions the way a worker would: evict the listed models (into
the worker's host-memory tier when it has one, ``ram_cache_gb``, least
recently evicted out first; else they are dropped), load the model if it is
not held (``model_gb / h2d_gbps`` seconds from the host tier,
``model_gb / load_gbps`` from disk), then render for ``steps * step_s / speed``
seconds. It checks every decision against the
physics of the cluster (VRAM, slots, what a worker can run) and counts what a
policy got wrong instead of trusting it.

With a ``PreemptionModel`` the preemption pass (farm/scheduler/preemption.py)
runs after each placement, as in the live scheduler: a render it picks goes
on to its next step boundary, spends ``checkpoint_s`` writing its
checkpoint, frees its slot and goes back to the queue with the work it has
left; when it starts again it pays ``restore_s`` and ``lost_steps`` steps
(an upper bound: the farm's resume is exact and repeats none).

Formats and metric definitions: docs/scheduler-bench.md.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import Decisions, QueuedJob, Share, Snapshot, WorkerState, working_memory_gb
from farm.scheduler.preemption import MAX_PREEMPTIONS, PREEMPT_WAIT_S, RunningJob, choose_preemptions

logger = logging.getLogger(__name__)

# Half-life of the GPU-seconds a user consumed, as shown to the policy in
# Share.usage_s: five minutes keeps a campaign that just ended visible to a
# fair-share policy without punishing its owner for the whole day.
USAGE_HALF_LIFE_S = 300.0
# A worker file that gives no max_pixels accepts anything a GPU could hold.
DEFAULT_MAX_PIXELS = 4096 * 4096
# The live scheduler shows the policy the whole queue, highest priority then
# oldest first (it keeps it across passes, farm/scheduler/livequeue.py); a
# replay may show fewer (snapshot_limit) to see what a cap would cost.
MAX_JOBS_PER_SNAPSHOT = math.inf
# The live scheduler also runs a pass at least this often when nothing wakes
# it (the default FARM_SCHEDULER_POLL_S), so a policy that waits on purpose
# (patience, ageing) is asked again; the simulator polls the same way while
# jobs are queued and a worker has a free slot.
DEFAULT_POLL_S = 1.0
# Polling an idle cluster with nothing in flight or to come stops after this
# long without a placement: the policy is not going to place those jobs.
STALL_AFTER_S = 600.0
# Float slack when comparing GB sums (0.1 + 0.2 GB of models must fit in 0.3 GB).
VRAM_EPSILON_GB = 1e-6
# Host-to-GPU rate of a worker whose file gives none: pinned copies over
# PCIe 4.0 x16 (about 25 GB/s in theory, 20 in practice), halved for the
# unpinned staging and allocation a pipeline's many tensors cost.
DEFAULT_H2D_GBPS = 12.0

Policy = Callable[[Snapshot], Decisions]


@dataclass(frozen=True)
class PreemptionModel:
    """What a preemption costs in the simulator, and the pass's limits."""

    wait_s: float = PREEMPT_WAIT_S
    max_preemptions: int = MAX_PREEMPTIONS
    checkpoint_s: float = 0.5  # writing the checkpoint to the store, after the step in flight
    restore_s: float = 0.5  # reading it back before the continued render's first step
    lost_steps: int = 1  # steps the continued render pays again (at most one; the farm's resume repeats none)


class TraceError(ValueError):
    """A workers file or trace that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class WorkerSpec:
    id: str
    vram_gb: float
    load_gbps: float  # disk -> GPU, GB per second
    speed: float  # 1.0 = the reference GPU that step_s is measured on
    families: frozenset[str]
    max_pixels: int = DEFAULT_MAX_PIXELS
    capacity: int = 1
    serves_models: frozenset[str] | None = None  # None: any model
    ram_cache_gb: float = 0.0  # host memory that keeps evicted models (0: none)
    h2d_gbps: float = DEFAULT_H2D_GBPS  # host -> GPU, GB per second
    cuda: bool = True  # a CUDA GPU; false: a CPU worker, never given a CUDA-only (bitsandbytes) model


@dataclass(frozen=True)
class TraceJob:
    t: float  # arrival, seconds since the trace start
    user: str
    model: str
    model_gb: float
    family: str
    width: int
    height: int
    steps: int
    step_s: float  # seconds per step on a speed-1.0 worker at this size
    priority: int = 0
    team: str | None = None
    deadline_s: float | None = None  # due this long after arrival
    campaign: str | None = None  # jobs of one campaign share its remaining work against their deadline

    @property
    def due(self) -> float | None:
        """When the job is due, seconds since the trace start; None: no deadline."""
        return None if self.deadline_s is None else self.t + self.deadline_s
    needs_cuda: bool = False  # its model is quantized for CUDA kernels only (farm/quantization.py)

    @property
    def work_s(self) -> float:
        """Render time on a speed-1.0 worker."""
        return self.steps * self.step_s


# --- reading the files -------------------------------------------------------


def _field(record: dict, key: str, where: str, kind: str, *, required: bool = True, default=None):
    """One validated field of a JSON record; raises TraceError naming where it is."""
    if key not in record or record[key] is None:
        if required:
            raise TraceError(f"{where}: missing field '{key}'")
        return default
    value = record[key]
    # bool is an int in Python; true as a size or a speed is a mistake in the file.
    if kind in ("number", "positive", "count") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TraceError(f"{where}: field '{key}' must be a number, not {json.dumps(value)}")
    if kind == "number" and (not math.isfinite(value) or value < 0):
        raise TraceError(f"{where}: field '{key}' must be a finite number >= 0, not {value}")
    if kind == "positive" and (not math.isfinite(value) or value <= 0):
        raise TraceError(f"{where}: field '{key}' must be a number > 0, not {value}")
    if kind == "count":
        if not math.isfinite(value) or value != int(value) or value < 1:
            raise TraceError(f"{where}: field '{key}' must be a whole number >= 1, not {value}")
        value = int(value)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TraceError(f"{where}: field '{key}' must be an integer, not {json.dumps(value)}")
    if kind == "name":
        # Users and ids may be numbers in a file; they are names here.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise TraceError(f"{where}: field '{key}' must be a non-empty string, not {json.dumps(value)}")
        value = str(value)
    if kind == "bool" and not isinstance(value, bool):
        raise TraceError(f"{where}: field '{key}' must be true or false, not {json.dumps(value)}")
    if kind == "names":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TraceError(f"{where}: field '{key}' must be a list of strings, not {json.dumps(value)}")
        value = frozenset(value)
    return value


def _read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read {path}: {exc}") from None


def load_workers(path: str | Path) -> list[WorkerSpec]:
    """Workers from a JSON list of {"id", "vram_gb", "load_gbps", "speed", "families", ...}.

    Optional: "max_pixels", "capacity", "serves", and the host tier's
    "ram_cache_gb" (0) and "h2d_gbps" (DEFAULT_H2D_GBPS).
    """
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise TraceError(f"{path}: expected a JSON list of workers")
    workers, seen = [], set()
    for number, record in enumerate(records, start=1):
        where = f"{path}: worker {number}"
        if not isinstance(record, dict):
            raise TraceError(f"{where}: expected an object, not {json.dumps(record)}")
        spec = WorkerSpec(
            id=_field(record, "id", where, "name"),
            vram_gb=_field(record, "vram_gb", where, "positive"),
            load_gbps=_field(record, "load_gbps", where, "positive"),
            speed=_field(record, "speed", where, "positive"),
            families=_field(record, "families", where, "names"),
            max_pixels=_field(record, "max_pixels", where, "count", required=False, default=DEFAULT_MAX_PIXELS),
            capacity=_field(record, "capacity", where, "count", required=False, default=1),
            serves_models=_field(record, "serves", where, "names", required=False),
            ram_cache_gb=float(_field(record, "ram_cache_gb", where, "number", required=False, default=0.0)),
            h2d_gbps=float(_field(record, "h2d_gbps", where, "positive", required=False, default=DEFAULT_H2D_GBPS)),
            cuda=_field(record, "cuda", where, "bool", required=False, default=True),
        )
        if spec.id in seen:
            raise TraceError(f"{where}: duplicate worker id {spec.id!r}")
        seen.add(spec.id)
        workers.append(spec)
    return workers


def load_trace(path: str | Path) -> list[TraceJob]:
    """Jobs from JSON lines of {"t", "user", "model", "model_gb", "family", "width", "height", "steps", "step_s", ...}."""
    jobs = []
    models: dict[str, tuple[float, str, int]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TraceError(f"{where}: expected a JSON object")
        job = TraceJob(
            t=float(_field(record, "t", where, "number")),
            user=_field(record, "user", where, "name"),
            model=_field(record, "model", where, "name"),
            model_gb=float(_field(record, "model_gb", where, "positive")),
            family=_field(record, "family", where, "name"),
            width=_field(record, "width", where, "count"),
            height=_field(record, "height", where, "count"),
            steps=_field(record, "steps", where, "count"),
            step_s=float(_field(record, "step_s", where, "positive")),
            priority=_field(record, "priority", where, "integer", required=False, default=0),
            team=_field(record, "team", where, "name", required=False),
            deadline_s=_field(record, "deadline_s", where, "positive", required=False),
            campaign=_field(record, "campaign", where, "name", required=False),
            needs_cuda=_field(record, "needs_cuda", where, "bool", required=False, default=False),
        )
        # A model has one size and one family; the simulator loads it by id.
        known = models.setdefault(job.model, (job.model_gb, job.family, number))
        if (known[0], known[1]) != (job.model_gb, job.family):
            raise TraceError(f"{where}: model {job.model!r} is {job.model_gb} GB/{job.family} here "
                             f"but {known[0]} GB/{known[1]} on line {known[2]}")
        jobs.append(job)
    return jobs


# --- the clairvoyant lower bound on model loads ------------------------------


def _template_states(workers: Sequence[WorkerSpec]) -> list[WorkerState]:
    return [WorkerState(id=w.id, families=w.families, max_pixels=w.max_pixels, vram_total_gb=w.vram_gb,
                        vram_free_gb=w.vram_gb, loaded_models={}, serves_models=w.serves_models, busy=0,
                        capacity=w.capacity, speed=w.speed, load_gbps=w.load_gbps, cuda=w.cuda) for w in workers]


def _queued_job(job: TraceJob, job_id: int, user_id: int, team_id: int | None) -> QueuedJob:
    return QueuedJob(id=job_id, attempt=1, user_id=user_id, model_id=job.model, family=job.family,
                     model_gb=job.model_gb, width=job.width, height=job.height, priority=job.priority,
                     queued_at=job.t, team_id=team_id, est_seconds=job.work_s, deadline=job.due,
                     campaign_id=job.campaign, needs_cuda=job.needs_cuda)


def eligible_masks(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob]) -> list[int]:
    """For each job, a bit mask of the workers that could ever run it (0: none)."""
    states = _template_states(workers)
    by_shape: dict[tuple, int] = {}
    masks = []
    for job in trace:
        shape = (job.model, job.family, job.model_gb, job.width, job.height)
        mask = by_shape.get(shape)
        if mask is None:
            probe = _queued_job(job, 1, 1, None)
            mask = sum(1 << i for i, state in enumerate(states) if state.can_ever_run(probe) is None)
            by_shape[shape] = mask
        masks.append(mask)
    return masks


def _window_bound(arrivals: np.ndarray, works: np.ndarray, max_wait_s: float, eligible: Sequence[WorkerSpec]) -> int:
    """Workers that must load a model for its jobs to start within max_wait_s of arriving.

    Jobs arriving in [a_i, a_j] must start rendering in [a_i, a_j + D]; call
    the length of that interval L. One render slot of a worker of speed s
    runs them one after another, so all but the last it starts end before
    the last starts: the work (seconds at speed 1) it takes from the window
    is at most s * L plus the largest job. A worker with c slots takes at
    most c times that. The fewest workers whose total reaches the window's
    work, taking the fastest first, is a lower bound on the workers that hold
    the model during the window, and every one of them loaded it at least
    once (workers start empty). Any window gives a valid bound; for each
    first arrival the window is picked with the fastest worker's speed, then
    counted exactly over the real workers.
    """
    prefix = np.concatenate(([0.0], np.cumsum(works)))
    largest = float(works.max())
    fastest = sorted(eligible, key=lambda w: w.speed * w.capacity, reverse=True)
    top_speed = max(w.speed for w in eligible)
    window_work = np.empty(len(arrivals))
    window_length = np.empty(len(arrivals))
    for i in range(len(arrivals)):
        work = prefix[i + 1:] - prefix[i]
        length = arrivals[i:] - arrivals[i] + max_wait_s
        j = int(np.argmax(work / (top_speed * length + largest)))
        window_work[i], window_length[i] = work[j], length[j]
    # Any k workers take at most (the k largest c*s) * L + (the k largest c) *
    # largest from a window; the two are summed separately so that the bound
    # holds when capacities differ.
    speed_sum = np.cumsum([w.capacity * w.speed for w in fastest])
    slot_sum = np.cumsum(sorted((w.capacity for w in fastest), reverse=True))
    need = np.ones(len(arrivals), dtype=int)
    for k in range(len(fastest)):
        # Windows that k + 1 workers cannot cover need at least k + 2.
        short = speed_sum[k] * window_length + slot_sum[k] * largest < window_work * (1 - 1e-9)
        if not short.any():
            break
        need[short] = k + 2
    return int(min(need.max(), len(fastest)))


# Eligibility classes beyond this many distinct worker sets are not combined
# two by two in makespan_lower_bound_s (2^k unions); each still counts alone.
MAX_CLASSES_COMBINED = 12


def makespan_lower_bound_s(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob],
                           masks: Sequence[int] | None = None) -> float:
    """A lower bound on any schedule's makespan (first arrival to last finish), in seconds.

    The largest of three bounds, each true of every schedule:

    - per eligibility class: jobs that only a set S of workers can run (their
      eligible workers are a subset of S) need at least their total work
      over S's total speed (speed x slots); S runs over the unions of the
      jobs' eligible sets, so FLUX work that only the big cards can take is
      weighed against the big cards alone, and S = every worker gives the
      overall work / capacity bound. With arrivals spread out, the work that
      arrives at or after time a cannot start before a, so for each class
      the bound is the largest (a - first arrival) + work arriving from a on,
      over S's speed;
    - the longest single job: its render on the best worker for it,
      starting after both its arrival and a load of its model begun at
      the first arrival (workers start empty).

    Jobs no worker can run are left out. ``masks``: ``eligible_masks(workers,
    trace)`` when the caller has them.
    """
    if masks is None:
        masks = eligible_masks(workers, trace)
    runnable = [(job, mask) for job, mask in zip(trace, masks) if mask]
    if not runnable:
        return 0.0
    first = min(job.t for job, _ in runnable)
    speeds = [w.speed * w.capacity for w in workers]
    single = 0.0
    # (mask, GB, work, arrival) -> the soonest that job can end on one of those workers.
    soonest: dict[tuple, float] = {}
    for job, mask in runnable:
        shape = (mask, job.model_gb, job.work_s, job.t)
        if shape not in soonest:
            # Its render starts after it arrives, and after its model's load,
            # which may have begun at the first arrival (a preload) but no sooner.
            soonest[shape] = min(max(job.t - first, job.model_gb / w.load_gbps) + job.work_s / w.speed
                                 for bit, w in enumerate(workers) if mask >> bit & 1)
            single = max(single, soonest[shape])
    classes = sorted({mask for _, mask in runnable})
    unions = set(classes)
    if len(classes) <= MAX_CLASSES_COMBINED:
        for chosen in range(1, 1 << len(classes)):
            union = 0
            for i, mask in enumerate(classes):
                if chosen >> i & 1:
                    union |= mask
            unions.add(union)
    arrivals = np.array([job.t for job, _ in runnable])
    works = np.array([job.work_s for job, _ in runnable])
    job_masks = np.array([mask for _, mask in runnable], dtype=object)
    by_class = {mask: job_masks == mask for mask in classes}
    bound = single
    for union in unions:
        inside = np.zeros(len(runnable), dtype=bool)
        for mask in classes:
            if mask & ~union == 0:
                inside |= by_class[mask]
        speed = sum(v for bit, v in enumerate(speeds) if union >> bit & 1)
        order = np.argsort(arrivals[inside], kind="stable")
        t = arrivals[inside][order]
        # Work arriving at or after each arrival time: a suffix sum.
        after = np.cumsum(works[inside][order][::-1])[::-1]
        bound = max(bound, float(np.max(t - first + after / speed)))
    return bound


def lower_bound_loads(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], max_wait_s: float | None = None) -> int:
    """A lower bound on the model loads any schedule of the trace needs (see docs/scheduler-bench.md).

    Without max_wait_s it holds for every schedule, however long jobs wait:
    every worker starts empty, so each model that some worker can run costs
    at least one load. (Which workers can run a job of a given model depends
    only on its pixel count, through max_pixels and working memory, so one
    worker can always run all of a model's jobs and no tighter count follows
    from eligibility alone.) With max_wait_s it holds for every schedule in
    which no job waits longer, and adds the workers a model needs at once to
    start its jobs in time (``_window_bound``).
    """
    return sum(window_bounds_by_model(workers, trace, max_wait_s).values())


def window_bounds_by_model(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], max_wait_s: float | None,
                           masks: Sequence[int] | None = None) -> dict[str, int]:
    """For each model some worker can run: the workers that must load it (``_window_bound``; 1 without a wait limit).

    ``masks``: ``eligible_masks(workers, trace)`` when the caller has them already.
    """
    if masks is None:
        masks = eligible_masks(workers, trace)
    by_model: dict[str, list[int]] = {}
    for index, (job, mask) in enumerate(zip(trace, masks)):
        if mask:
            by_model.setdefault(job.model, []).append(index)
    if max_wait_s is None:
        return {model: 1 for model in by_model}
    bounds = {}
    for model, indices in by_model.items():
        union = 0
        for i in indices:
            union |= masks[i]
        eligible = [w for bit, w in enumerate(workers) if union >> bit & 1]
        ordered = sorted(indices, key=lambda i: trace[i].t)
        bounds[model] = _window_bound(np.array([trace[i].t for i in ordered]),
                                      np.array([trace[i].work_s for i in ordered]), max_wait_s, eligible)
    return bounds


# --- the virtual cluster -----------------------------------------------------


class _Job:
    __slots__ = ("index", "spec", "queued", "user_id", "render_start", "finished", "load_s", "runnable", "done_steps",
                 "preemptions")

    def __init__(self, index: int, spec: TraceJob, queued: QueuedJob, runnable: bool) -> None:
        self.index = index
        self.spec = spec
        self.queued = queued
        self.user_id = queued.user_id
        self.runnable = runnable
        self.render_start: float | None = None
        self.finished: float | None = None
        self.load_s = 0.0
        self.done_steps = 0  # steps rendered before a preemption
        self.preemptions = 0


class _Task:
    """Something occupying one of a worker's slots: a job (loading, then rendering) or a preload."""

    __slots__ = ("job", "model", "working_gb", "start", "end", "stopping")

    def __init__(self, job: _Job | None, model: str, working_gb: float) -> None:
        self.job = job
        self.model = model
        self.working_gb = working_gb
        self.start = 0.0  # when its render starts (after any load)
        self.end = 0.0  # when it leaves the slot; an event for another time is stale
        self.stopping = False  # preempted: it leaves at its next step boundary


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.held: dict[str, float] = {}  # least recently used first
        self.host: dict[str, float] = {}  # the host tier: evicted models in RAM, least recently evicted first
        self.ready_at: dict[str, float] = {}  # when a held model finishes loading
        self.tasks: list[_Task] = []
        self.render_s = 0.0
        self.load_s = 0.0
        self._state: WorkerState | None = None

    def changed(self) -> None:
        self._state = None

    def state(self) -> WorkerState:
        # Rebuilt only after a change: most events touch one worker of many.
        if self._state is None:
            spec = self.spec
            self._state = WorkerState(
                id=spec.id, families=spec.families, max_pixels=spec.max_pixels, vram_total_gb=spec.vram_gb,
                vram_free_gb=spec.vram_gb - sum(self.held.values()), loaded_models=dict(self.held),
                serves_models=spec.serves_models, busy=len(self.tasks), capacity=spec.capacity, speed=spec.speed,
                load_gbps=spec.load_gbps, in_use=frozenset(t.model for t in self.tasks),
                host_models=frozenset(self.host), h2d_gbps=spec.h2d_gbps, ram_cache_gb=spec.ram_cache_gb,
                cuda=spec.cuda)
        return self._state

    def in_use(self) -> set[str]:
        return {t.model for t in self.tasks}

    def used_gb(self) -> float:
        return sum(self.held.values()) + sum(t.working_gb for t in self.tasks)

    def touch(self, model: str) -> None:
        self.held[model] = self.held.pop(model)

    def drop(self, model: str, incoming: str | None = None) -> None:
        """Evict a held model: into the host tier if it fits there (pushing out the oldest), else gone.

        ``incoming``: the model this eviction makes room for, which leaves the
        tier for the GPU next and is not pushed out (a worker takes it out of
        the tier first, farm/workers/runtime.py).
        """
        gb = self.held.pop(model)
        self.ready_at.pop(model, None)
        budget = self.spec.ram_cache_gb
        if gb > budget:
            return
        kept = [m for m in self.host if m != incoming]
        while kept and sum(self.host[m] for m in kept) + gb > budget + VRAM_EPSILON_GB:
            del self.host[kept.pop(0)]
        self.host[model] = gb


class _UserUsage:
    """Exponentially decayed GPU-seconds: each consumed second is worth 2^(-age / half-life)."""

    __slots__ = ("usage_s", "running", "updated")

    def __init__(self) -> None:
        self.usage_s = 0.0
        self.running = 0
        self.updated = 0.0

    def advance(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0 and (self.usage_s or self.running):
            decay = 2.0 ** (-elapsed / USAGE_HALF_LIFE_S)
            # `running` GPUs consumed time continuously over the interval: the
            # integral of 2^(-age/h) over it is h/ln2 * (1 - decay) per GPU.
            self.usage_s = self.usage_s * decay + self.running * USAGE_HALF_LIFE_S / math.log(2) * (1.0 - decay)
        self.updated = now


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


class Simulation:
    """One replay of a trace on a cluster with one policy. ``run()`` returns the metrics."""

    def __init__(self, workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], policy: Policy, *,
                 policy_name: str = "policy", weights: Mapping[str, float] | None = None,
                 worker_order_seed: int | None = None, poll_s: float | None = DEFAULT_POLL_S,
                 preemption: PreemptionModel | None = None, snapshot_limit: float | None = None) -> None:
        if not workers:
            raise TraceError("the cluster has no workers")
        self.policy = policy
        self.policy_name = policy_name
        self.poll_s = poll_s
        self.preemption = preemption
        specs = list(workers)
        if worker_order_seed is not None:
            random.Random(worker_order_seed).shuffle(specs)
        self.specs = specs
        self.workers = [_Worker(spec) for spec in specs]
        self.workers_by_id = {w.spec.id: w for w in self.workers}
        self.trace = list(trace)
        self.weights = dict(weights or {})
        self.models = {job.model: (job.model_gb, job.family) for job in self.trace}

        masks = self.masks = eligible_masks(specs, self.trace)
        self.user_ids: dict[str, int] = {}
        self.user_names: dict[int, str] = {}
        team_ids: dict[str, int] = {}
        self.jobs: list[_Job] = []
        for index, spec in enumerate(self.trace):
            user_id = self.user_ids.setdefault(spec.user, len(self.user_ids) + 1)
            self.user_names[user_id] = spec.user
            team_id = team_ids.setdefault(spec.team, len(team_ids) + 1) if spec.team is not None else None
            # Ids start at 1: a job id of 0 is falsy, and policies may test `job.id and ...`.
            queued = _queued_job(spec, index + 1, user_id, team_id)
            self.jobs.append(_Job(index, spec, queued, runnable=masks[index] != 0))
        self.jobs_by_id = {job.queued.id: job for job in self.jobs}
        self.arrivals = sorted(self.jobs, key=lambda j: (j.spec.t, j.index))
        self.usage = {user_id: _UserUsage() for user_id in self.user_names}
        self.queued_per_user: dict[int, int] = {}
        # Campaign -> its queued work (speed-1 seconds), for campaigns with a deadline (Snapshot.campaign_work_s).
        self.campaign_work_s: dict[str, float] = {}

        self.queue: dict[int, _Job] = {}  # job id -> job
        # What a snapshot shows: the first snapshot_limit queued jobs in queue
        # order as the live scheduler reads them, priority (highest first),
        # then arrival (arrivals are taken in time order), kept up to date job
        # by job so that a snapshot costs nothing per queued job. The rest
        # wait in `hidden`, by priority, oldest first.
        self.snapshot_limit = MAX_JOBS_PER_SNAPSHOT if snapshot_limit is None else snapshot_limit
        self.visible = JobQueue()
        self.hidden: dict[int, OrderedDict[int, _Job]] = {}
        self.unrunnable_queued: list[int] = []
        self.events: list[tuple[float, int, _Worker, _Task]] = []  # (finish time, seq, worker, task)
        self.sequence = 0
        self.decision_s: list[float] = []
        self.unplaceable: set[int] = set()
        self.loads_by_worker: dict[str, list[str]] = {}  # worker id -> models it loaded, in order
        self.counts = dict(model_loads=0, host_loads=0, evictions=0, preloads=0, vram_overcommits=0,
                           double_assignments=0, invalid_assignments=0, stalled=0, preemptions=0)
        self.load_gb = 0.0  # GB moved onto GPUs by all loads
        self.host_load_s = 0.0  # ... seconds of it spent on loads from host tiers

    # --- the event loop

    def run(self) -> dict:
        started = time.perf_counter()
        next_arrival = 0
        next_poll = math.inf
        quiet_since = None  # when the cluster last went idle with jobs queued and nothing to come
        while next_arrival < len(self.arrivals) or self.events or next_poll < math.inf:
            now = min(self.arrivals[next_arrival].spec.t if next_arrival < len(self.arrivals) else math.inf,
                      self.events[0][0] if self.events else math.inf, next_poll)
            next_poll = math.inf
            for usage in self.usage.values():
                usage.advance(now)
            while self.events and self.events[0][0] == now:
                at, _, worker, task = heapq.heappop(self.events)
                if at == task.end:  # a preempted render's original finish is stale
                    self._finish(worker, task, now)
            while next_arrival < len(self.arrivals) and self.arrivals[next_arrival].spec.t == now:
                job = self.arrivals[next_arrival]
                next_arrival += 1
                self._enqueue(job)
            if not self.queue:
                continue
            self._decide(now)
            if not self.queue:
                continue
            if self.events or next_arrival < len(self.arrivals):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if self.poll_s is not None and any(len(w.tasks) < w.spec.capacity for w in self.workers):
                next_poll = now + self.poll_s
            if quiet_since is not None and (next_poll == math.inf or now - quiet_since >= STALL_AFTER_S):
                # Nothing is in flight or will arrive, and the policy has kept
                # these jobs queued on an idle cluster: it would go on doing so.
                logger.warning("%s left %d runnable jobs queued on an idle cluster at t=%.1f; stopping",
                               self.policy_name, len(self.queue), now)
                self.counts["stalled"] = len(self.queue)
                for job_id in list(self.queue):
                    self._dequeue(job_id)
                next_poll = math.inf
        metrics = self._metrics()
        logger.info("simulated %d jobs with %s in %.2fs (%.2fs in the policy)", len(self.jobs), self.policy_name,
                    time.perf_counter() - started, sum(self.decision_s))
        if self.counts["vram_overcommits"] or self.counts["invalid_assignments"] or self.counts["double_assignments"]:
            logger.warning("%s: %d VRAM over-commits, %d invalid and %d double assignments (details at INFO)",
                           self.policy_name, self.counts["vram_overcommits"], self.counts["invalid_assignments"],
                           self.counts["double_assignments"])
        return metrics

    def _snapshot(self, now: float) -> Snapshot:
        shares = {}
        for user_id, usage in self.usage.items():
            if usage.running or self.queued_per_user.get(user_id):
                shares[user_id] = Share(weight=self.weights.get(self.user_names[user_id], 1.0),
                                        usage_s=usage.usage_s, running=usage.running)
        return Snapshot(jobs=self.visible, workers=[w.state() for w in self.workers], now=now, shares=shares,
                        campaign_work_s=self.campaign_work_s)

    def _decide(self, now: float) -> None:
        snapshot = self._snapshot(now)
        shown = len(snapshot.jobs)  # snapshot.jobs is the live queue: _apply takes the placed jobs out of it
        started = time.perf_counter()
        decisions = self.policy(snapshot)
        self.decision_s.append(time.perf_counter() - started)
        for job_id in decisions.unplaceable:
            if job_id in self.jobs_by_id:
                self.unplaceable.add(job_id)
        self._apply(decisions, now)
        if self.preemption is not None and len(decisions.assignments) < shown:
            self._preempt(snapshot, decisions, now)
        # Jobs no worker in this cluster could ever run would wait forever; the
        # policy has seen them once (to report them), now they leave.
        for job_id in self.unrunnable_queued:
            self.unplaceable.add(job_id)
            self._dequeue(job_id)
        self.unrunnable_queued.clear()

    def _enqueue(self, job: _Job) -> None:
        self.queue[job.queued.id] = job
        visible = self.visible
        if len(visible) < self.snapshot_limit:
            visible.add(job.queued)  # nothing is hidden while the snapshot has room
        elif job.queued.priority > visible.last().priority:
            # It goes ahead of the last job shown, which is now the oldest hidden one of its priority.
            pushed = visible.remove(visible.last().id)
            level = self.hidden.setdefault(pushed.priority, OrderedDict())
            level[pushed.id] = self.queue[pushed.id]
            level.move_to_end(pushed.id, last=False)
            visible.add(job.queued)
        else:
            self.hidden.setdefault(job.queued.priority, OrderedDict())[job.queued.id] = job
        self.queued_per_user[job.user_id] = self.queued_per_user.get(job.user_id, 0) + 1
        if job.spec.campaign is not None and job.spec.deadline_s is not None:
            self.campaign_work_s[job.spec.campaign] = self.campaign_work_s.get(job.spec.campaign, 0.0) + job.spec.work_s
        if not job.runnable:
            self.unrunnable_queued.append(job.queued.id)

    def _dequeue(self, job_id: int) -> _Job:
        job = self.queue.pop(job_id)
        if job_id in self.visible:
            self.visible.remove(job_id)
            if self.hidden:
                # The first hidden job in queue order comes into view.
                priority = max(self.hidden)
                _, shown = self.hidden[priority].popitem(last=False)
                if not self.hidden[priority]:
                    del self.hidden[priority]
                self.visible.add(shown.queued)
        else:
            level = self.hidden[job.queued.priority]
            del level[job_id]
            if not level:
                del self.hidden[job.queued.priority]
        self.queued_per_user[job.user_id] -= 1
        if job.spec.campaign is not None and job.spec.deadline_s is not None:
            self.campaign_work_s[job.spec.campaign] -= job.spec.work_s
        return job

    # --- applying decisions

    def _refuse(self, counter: str, message: str, *args) -> None:
        self.counts[counter] += 1
        logger.info("%s: " + message, self.policy_name, *args)

    def _apply(self, decisions: Decisions, now: float) -> None:
        for assignment in decisions.assignments:
            job = self.queue.get(assignment.job_id)
            if job is None:
                known = self.jobs_by_id.get(assignment.job_id)
                if known is not None and known.render_start is not None:
                    self._refuse("double_assignments", "job %s assigned again to %s", assignment.job_id,
                                 assignment.worker_id)
                else:
                    self._refuse("invalid_assignments", "job %s is not queued", assignment.job_id)
                continue
            worker = self.workers_by_id.get(assignment.worker_id)
            if worker is None:
                self._refuse("invalid_assignments", "no worker %s", assignment.worker_id)
                continue
            if assignment.attempt != job.queued.attempt:
                self._refuse("invalid_assignments", "job %s has attempt %d, not %d", job.queued.id,
                             job.queued.attempt, assignment.attempt)
                continue
            why_not = worker.state().can_ever_run(job.queued)
            if why_not is None and worker.spec.id in job.queued.excluded_workers:
                why_not = "is excluded for it"
            if why_not is not None:
                self._refuse("invalid_assignments", "job %s cannot run on %s: it %s", job.queued.id,
                             worker.spec.id, why_not)
                continue
            if len(worker.tasks) >= worker.spec.capacity:
                # A second render on a full GPU needs a second set of activations.
                self._refuse("vram_overcommits", "job %s assigned to %s, which is busy", job.queued.id,
                             worker.spec.id)
                continue
            self._evict(worker, assignment.evict, job.spec.model)
            self._start_job(worker, self._dequeue(job.queued.id), now)
        for preload in decisions.preloads:
            self._preload(preload.worker_id, preload.model_id, preload.evict, now)

    def _preempt(self, snapshot: Snapshot, decisions: Decisions, now: float) -> None:
        model = self.preemption
        running, tasks = [], {}
        for worker in self.workers:
            for task in worker.tasks:
                if task.job is None:
                    continue
                job = task.job
                tasks[job.queued.id] = (worker, task)
                running.append(RunningJob(id=job.queued.id, attempt=job.queued.attempt, worker_id=worker.spec.id,
                                          model_id=task.model, priority=job.queued.priority,
                                          remaining_s=task.end - now, resumable=True, preemptions=job.preemptions,
                                          stopping=task.stopping))
        for preemption in choose_preemptions(snapshot, decisions, running, wait_s=model.wait_s,
                                             max_preemptions=model.max_preemptions):
            worker, task = tasks[preemption.job_id]
            job, spec = task.job, task.job.spec
            step_s = spec.step_s / worker.spec.speed
            # The step in flight finishes (the worker sees the flag at a step boundary).
            boundary = task.start if now <= task.start else task.start + math.ceil((now - task.start) / step_s) * step_s
            steps = round((boundary - task.start) / step_s)
            if job.done_steps + steps >= spec.steps:
                continue  # it finishes at that boundary anyway
            worker.render_s -= task.end - boundary
            task.stopping, task.end = True, boundary + model.checkpoint_s
            job.done_steps += steps
            self.counts["preemptions"] += 1
            self._push(task.end, worker, task)

    def _evict(self, worker: _Worker, models: Sequence[str], incoming: str | None = None) -> None:
        in_use = worker.in_use()
        for model in models:
            if model in in_use:
                self._refuse("invalid_assignments", "evicting %s from %s while a job uses it", model, worker.spec.id)
            elif model in worker.held:
                worker.drop(model, incoming)
                self.counts["evictions"] += 1
                worker.changed()

    def _load(self, worker: _Worker, model: str, gb: float, now: float) -> float:
        """Start loading a model (from the worker's host tier if it is there); returns the seconds it takes."""
        if worker.host.pop(model, None) is not None:
            load_s = gb / worker.spec.h2d_gbps
            self.counts["host_loads"] += 1
            self.host_load_s += load_s
        else:
            load_s = gb / worker.spec.load_gbps
        self.load_gb += gb
        worker.held[model] = gb
        worker.ready_at[model] = now + load_s
        worker.load_s += load_s
        self.counts["model_loads"] += 1
        self.loads_by_worker.setdefault(worker.spec.id, []).append(model)
        return load_s

    def _start_job(self, worker: _Worker, job: _Job, now: float) -> None:
        spec = job.spec
        if spec.model in worker.held:
            worker.touch(spec.model)
            # Held but maybe still arriving from a preload (capacity > 1 only).
            render_start = max(now, worker.ready_at.get(spec.model, now))
        else:
            render_start = now + self._load(worker, spec.model, spec.model_gb, now)
        if job.render_start is None:  # waits count to the first start
            job.load_s = render_start - now
            job.render_start = render_start
        render_s = spec.work_s / worker.spec.speed
        if job.preemptions:
            lost = min(self.preemption.lost_steps, job.done_steps)
            render_s = (spec.steps - job.done_steps + lost) * spec.step_s / worker.spec.speed + self.preemption.restore_s
        worker.render_s += render_s
        task = _Task(job, spec.model, working_memory_gb(spec.width, spec.height, spec.family))
        task.start, task.end = render_start, render_start + render_s
        worker.tasks.append(task)
        worker.changed()
        self.usage[job.user_id].running += 1
        self._push(task.end, worker, task)
        self._check_vram(worker, f"job {job.queued.id}")

    def _preload(self, worker_id: str, model: str, evict: Sequence[str], now: float) -> None:
        worker = self.workers_by_id.get(worker_id)
        known = self.models.get(model)
        if worker is None or known is None:
            self._refuse("invalid_assignments", "preload of %s on %s: unknown %s", model, worker_id,
                         "worker" if worker is None else "model")
            return
        gb, family = known
        spec = worker.spec
        if (family not in spec.families or (spec.serves_models is not None and model not in spec.serves_models)
                or gb > spec.vram_gb):
            self._refuse("invalid_assignments", "preload of %s on %s, which cannot hold it", model, worker_id)
            return
        if len(worker.tasks) >= spec.capacity:
            self._refuse("invalid_assignments", "preload of %s on %s, which is busy", model, worker_id)
            return
        self._evict(worker, evict, model)
        if model in worker.held:
            worker.touch(model)
            worker.changed()
            return
        self.counts["preloads"] += 1
        load_s = self._load(worker, model, gb, now)
        task = _Task(None, model, 0.0)
        task.start = task.end = now + load_s
        worker.tasks.append(task)
        worker.changed()
        self._push(task.end, worker, task)
        self._check_vram(worker, f"preload of {model}")

    def _check_vram(self, worker: _Worker, what: str) -> None:
        if worker.used_gb() <= worker.spec.vram_gb + VRAM_EPSILON_GB:
            return
        self._refuse("vram_overcommits", "%s over-commits %s: %.2f GB of models and activations in %.2f GB",
                     what, worker.spec.id, worker.used_gb(), worker.spec.vram_gb)
        # A real worker makes room before loading (least recently used first,
        # see farm/workers/runtime.py); doing the same keeps the virtual GPU
        # physical after the policy's mistake has been counted.
        in_use = worker.in_use()
        for model in [m for m in worker.held if m not in in_use]:
            if worker.used_gb() <= worker.spec.vram_gb + VRAM_EPSILON_GB:
                break
            worker.drop(model)
            self.counts["evictions"] += 1
        worker.changed()

    def _push(self, at: float, worker: _Worker, task: _Task) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, worker, task))

    def _finish(self, worker: _Worker, task: _Task, now: float) -> None:
        worker.tasks.remove(task)
        worker.changed()
        if task.job is not None:
            self.usage[task.job.user_id].running -= 1
            if task.stopping:
                # Back to the queue with its arrival time and the work it has left.
                # It goes behind the jobs of its priority already queued (the
                # live queue orders by age and puts it ahead of them): this
                # changes which of a campaign's images is done last, hardly when.
                job = task.job
                job.preemptions += 1
                left = (job.spec.steps - job.done_steps) * job.spec.step_s
                job.queued = dataclasses.replace(job.queued, attempt=job.queued.attempt + 1, est_seconds=left)
                self.jobs_by_id[job.queued.id] = job
                self._enqueue(job)
            else:
                task.job.finished = now

    # --- results

    def _metrics(self) -> dict:
        done = [job for job in self.jobs if job.finished is not None]
        waits = [job.render_start - job.spec.t for job in done]
        first_arrival = min((job.spec.t for job in self.jobs), default=0.0)
        makespan = max((job.finished for job in done), default=first_arrival) - first_arrival
        wait_max = max(waits, default=0.0)
        users = {}
        for user_id, name in sorted(self.user_names.items()):
            mine = [job.render_start - job.spec.t for job in done if job.user_id == user_id]
            users[name] = {"jobs": sum(1 for job in self.jobs if job.user_id == user_id), "rendered": len(mine),
                           "wait_p50_s": round(_percentile(mine, 50), 3),
                           "wait_p95_s": round(_percentile(mine, 95), 3),
                           "wait_max_s": round(max(mine, default=0.0), 3)}
        # When each user's last image was done, from the trace's start (a campaign's makespan).
        finished_by_user = {name: round(max((job.finished for job in done if job.user_id == user_id),
                                            default=first_arrival) - first_arrival, 3)
                            for user_id, name in sorted(self.user_names.items())}
        by_priority = {}
        for priority in sorted({job.spec.priority for job in self.jobs}):
            mine = [job.render_start - job.spec.t for job in done if job.spec.priority == priority]
            by_priority[str(priority)] = {"rendered": len(mine), "wait_p50_s": round(_percentile(mine, 50), 3),
                                          "wait_p95_s": round(_percentile(mine, 95), 3),
                                          "wait_max_s": round(max(mine, default=0.0), 3)}
        render_s = sum(w.render_s for w in self.workers)
        due = [job for job in self.jobs if job.spec.due is not None]
        # A job with a deadline that never rendered (stalled, unplaceable) missed it, by an unknown amount.
        late = [job for job in due if job.finished is None or job.finished > job.spec.due]
        decision_ms = [s * 1000.0 for s in self.decision_s]
        return {
            "policy": self.policy_name,
            "jobs": len(self.jobs),
            "workers": len(self.workers),
            "rendered": len(done),
            "model_loads": self.counts["model_loads"],
            "preloads": self.counts["preloads"],
            "evictions": self.counts["evictions"],
            "lower_bound_loads": lower_bound_loads(self.specs, self.trace),
            "lower_bound_loads_at_max_wait": lower_bound_loads(self.specs, self.trace, max_wait_s=wait_max)
            if done else 0,
            "makespan_s": round(makespan, 3),
            "makespan_lower_bound_s": round(makespan_lower_bound_s(self.specs, self.trace, self.masks), 3),
            "wait_p50_s": round(_percentile(waits, 50), 3),
            "wait_p95_s": round(_percentile(waits, 95), 3),
            "wait_max_s": round(wait_max, 3),
            "load_s": round(sum(w.load_s for w in self.workers), 3),
            "load_gb": round(self.load_gb, 3),
            "host_loads": self.counts["host_loads"],
            "host_load_s": round(self.host_load_s, 3),
            "utilization": round(render_s / (len(self.workers) * makespan), 4) if makespan > 0 else 0.0,
            "deadline_jobs": len(due),
            "deadline_misses": len(late),
            "deadline_miss_s_total": round(sum(job.finished - job.spec.due for job in late if job.finished is not None), 3),
            "vram_overcommits": self.counts["vram_overcommits"],
            "double_assignments": self.counts["double_assignments"],
            "invalid_assignments": self.counts["invalid_assignments"],
            "unplaceable": len(self.unplaceable),
            "stalled": self.counts["stalled"],
            "decisions": len(decision_ms),
            "decision_ms_p50": round(_percentile(decision_ms, 50), 4),
            "decision_ms_p99": round(_percentile(decision_ms, 99), 4),
            "users": users,
            "finished_s_by_user": finished_by_user,
            "priorities": by_priority,
            "preemptions": self.counts["preemptions"],
            "loads_by_worker": {w.spec.id: self.loads_by_worker.get(w.spec.id, []) for w in self.workers},
        }


def simulate(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], policy: Policy, *,
             policy_name: str = "policy", weights: Mapping[str, float] | None = None,
             worker_order_seed: int | None = None, poll_s: float | None = DEFAULT_POLL_S,
             preemption: PreemptionModel | None = None, snapshot_limit: float | None = None) -> dict:
    """Replay the trace on the workers with the policy; the metrics as a JSON-ready dict.

    poll_s: while jobs are queued and a worker has a free slot, ask the policy
    again after this long even if nothing happens (None: only on events).
    preemption: run the preemption pass after each placement, at these costs (None: never preempt).
    snapshot_limit: the most queued jobs a snapshot shows (None: as the live
    scheduler, all of them).
    """
    return Simulation(workers, trace, policy, policy_name=policy_name, weights=weights,
                      worker_order_seed=worker_order_seed, poll_s=poll_s, preemption=preemption,
                      snapshot_limit=snapshot_limit).run()
