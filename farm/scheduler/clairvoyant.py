"""The clairvoyant lower bound on model loads, with every model competing for the same GPUs.

``lower_bound_loads(..., max_wait_s=D)`` in simulator.py bounds each model on
its own, as if the fastest GPUs rendered nothing else. A real schedule
shares the GPUs between models, so this module bounds all models at once:
a mixed-integer program, solved by HiGHS through ``scipy.optimize.milp``,
chooses which GPUs hold which models, and how much of each model's work each
GPU does in each time bucket, so that every job could start within D of its
arrival. The fewest (GPU, model) pairs it needs is a lower bound on the model
loads of every schedule, however clairvoyant, whose worst wait is at most D:
such a schedule, cut into the same buckets, is a feasible point of the
program, and each pair it uses was loaded at least once (workers start empty).

What the program asks of a schedule (each holds for a real one):

- model m's work processed by time t (seconds at speed 1) is at most the work
  of its jobs that arrived by t, and at least the work of its jobs that must
  have finished by t: arrival + D + the job's render time on the slowest GPU
  that can run it;
- a GPU processes at most speed × slots × bucket seconds in a bucket, over
  all models, and work of a model only if it holds that model at some time;
- each model has at least as many holders as its own window bound
  (``window_bounds_by_model``), so this bound is never below that one;
- each GPU holds its own models, and its rate is shared between them only.
  (An earlier version pooled alike GPUs and counted how many of a pool held
  a model. That let three models each take a whole GPU's rate from a pool
  of two, and gave a bound one load lower on the shipped mixed trace.)

What it leaves out, each of which could only raise the bound: the time loads
take, VRAM (a GPU too small to keep its models together reloads them), and
that a job renders on one slot without a break. So the bound can stay below
what even a clairvoyant scheduler reaches; bench/scheduler_hindsight.py
replays the solver's own holders to see how far (docs/scheduler-bench.md).

If the solver stops at its time limit, the bound is the best one it proved
by then (its dual bound), which is still valid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from farm.scheduler.simulator import TraceJob, WorkerSpec, eligible_masks, window_bounds_by_model

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_S = 10.0
DEFAULT_TIME_LIMIT_S = 120.0
# Job waits are reported to the millisecond; D is widened by that much so a
# rounded-down worst wait never makes the bound claim too much.
WAIT_ROUNDING_S = 1e-3


@dataclass(frozen=True)
class ClairvoyantBound:
    """``loads`` is None when no schedule can keep every wait within the limit."""

    loads: int | None
    optimal: bool  # solved to optimality; False: the solver's proven bound at its time limit
    seconds: float
    bucket_s: float
    # The best choice of holders the solver found (worker id -> models), or
    # None: a plan for the fluid program, which a real schedule may not keep
    # to within the waits (bench/scheduler_hindsight.py replays it).
    holders: Mapping[str, frozenset[str]] | None = None


def clairvoyant_lower_bound_loads(workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], max_wait_s: float, *,
                                  bucket_s: float = DEFAULT_BUCKET_S,
                                  time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> ClairvoyantBound:
    """The fewest model loads of any schedule of ``trace`` on ``workers`` in which no job waits longer than max_wait_s.

    Jobs that no worker can ever run are left out, as in ``lower_bound_loads``.
    Smaller buckets give a tighter bound and a slower solve.
    """
    if bucket_s <= 0 or max_wait_s < 0:
        raise ValueError("bucket_s must be > 0 and max_wait_s >= 0")
    started = time.perf_counter()
    program = _Program(workers, trace, max_wait_s + WAIT_ROUNDING_S, bucket_s)
    if not program.classes:
        return ClairvoyantBound(0, True, time.perf_counter() - started, bucket_s)
    result = program.solve(time_limit_s)
    seconds = time.perf_counter() - started
    if result.status == 2:
        return ClairvoyantBound(None, True, seconds, bucket_s)
    holders = None
    if result.x is not None:
        chosen: defaultdict[str, set[str]] = defaultdict(set)
        for (i, model), pair in program.pairs.items():
            if result.x[pair] > 0.5:
                chosen[workers[i].id].add(model)
        holders = {worker.id: frozenset(chosen[worker.id]) for worker in workers}
    floor = program.window_total
    proven = getattr(result, "mip_dual_bound", None)
    loads = floor if proven is None or not math.isfinite(proven) else max(floor, math.ceil(proven - 1e-6))
    optimal = result.status == 0
    logger.info("clairvoyant bound %d loads (%s) in %.1fs, %d buckets of %.0fs", loads,
                "optimal" if optimal else "time limit", seconds, program.buckets, bucket_s)
    return ClairvoyantBound(loads, optimal, seconds, bucket_s, holders)


class _Program:
    """The mixed-integer program, built as sparse rows.

    Variables, in this order: n[gpu, model] (0 or 1: the GPU holds the model),
    x[gpu, class, bucket] (work done), c[class, bucket] (work done so far).
    A class is a model with one set of GPUs able to run its jobs (sizes can
    narrow it).
    """

    def __init__(self, workers: Sequence[WorkerSpec], trace: Sequence[TraceJob], wait_s: float,
                 bucket_s: float) -> None:
        masks = eligible_masks(workers, trace)
        jobs_by_class: defaultdict[tuple[str, int], list[TraceJob]] = defaultdict(list)
        for job, mask in zip(trace, masks):
            if mask:
                jobs_by_class[(job.model, mask)].append(job)
        self.classes = list(jobs_by_class)
        self.window_total = 0
        if not self.classes:
            return
        window = window_bounds_by_model(workers, trace, wait_s, masks)
        self.window_total = sum(window.values())
        self.gpus = [i for i in range(len(workers)) if any(mask >> i & 1 for _, mask in self.classes)]
        start = min(job.t for jobs in jobs_by_class.values() for job in jobs)
        slowest = [min(workers[i].speed for i in range(len(workers)) if mask >> i & 1) for _, mask in self.classes]
        horizon = max(job.t - start + wait_s + job.work_s / slowest[q]
                      for q, key in enumerate(self.classes) for job in jobs_by_class[key])
        self.buckets = buckets = int(math.ceil(horizon / bucket_s)) + 1

        pairs: dict[tuple[int, str], int] = {}  # (worker index, model) -> its n variable
        flows: list[tuple[int, int]] = []  # (worker index, class)
        for q, (model, mask) in enumerate(self.classes):
            for i in self.gpus:
                if mask >> i & 1:
                    pairs.setdefault((i, model), len(pairs))
                    flows.append((i, q))
        self.pairs = pairs
        x0 = len(pairs)
        c0 = x0 + len(flows) * buckets
        n_vars = c0 + len(self.classes) * buckets
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        lower: list[float] = []
        upper: list[float] = []

        def row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
            r = len(lower)
            for col, value in entries:
                rows.append(r)
                cols.append(col)
                vals.append(value)
            lower.append(lo)
            upper.append(hi)

        rate = {i: workers[i].speed * workers[i].capacity * bucket_s for i in self.gpus}
        by_gpu: defaultdict[int, list[int]] = defaultdict(list)
        by_class: defaultdict[int, list[int]] = defaultdict(list)
        for f, (i, q) in enumerate(flows):
            by_gpu[i].append(f)
            by_class[q].append(f)
            pair = pairs[(i, self.classes[q][0])]
            for k in range(buckets):  # work only on the GPUs holding the model
                row([(x0 + f * buckets + k, 1.0), (pair, -rate[i])], -np.inf, 0.0)
        for i in self.gpus:
            for k in range(buckets):  # a GPU does at most its rate, over all its models
                row([(x0 + f * buckets + k, 1.0) for f in by_gpu[i]], -np.inf, rate[i])
        var_lower = np.zeros(n_vars)
        var_upper = np.full(n_vars, np.inf)
        var_upper[:len(pairs)] = 1.0
        for q, key in enumerate(self.classes):
            arrived = np.zeros(buckets)
            due = np.zeros(buckets)
            for job in jobs_by_class[key]:
                arrived[min(int((job.t - start) // bucket_s), buckets - 1)] += job.work_s
                latest_end = job.t - start + wait_s + job.work_s / slowest[q]
                due[min(max(math.ceil(latest_end / bucket_s) - 1, 0), buckets - 1)] += job.work_s
            arrived, due = np.cumsum(arrived), np.cumsum(due)
            for k in range(buckets):
                done = c0 + q * buckets + k
                entries = [(done, 1.0)] + ([(done - 1, -1.0)] if k else [])
                row(entries + [(x0 + f * buckets + k, -1.0) for f in by_class[q]], 0.0, 0.0)
                # Slightly widened both ways: float sums must not cut off a real schedule.
                var_lower[done] = due[k] * (1 - 1e-9)
                var_upper[done] = arrived[k] * (1 + 1e-9) + 1e-9
        for model, holders in window.items():
            row([(pair, 1.0) for (_, m), pair in pairs.items() if m == model], holders, np.inf)
        self.matrix = coo_matrix((vals, (rows, cols)), shape=(len(lower), n_vars)).tocsr()
        self.row_bounds = (np.array(lower), np.array(upper))
        self.var_bounds = (var_lower, var_upper)

    def solve(self, time_limit_s: float):
        n_vars = self.matrix.shape[1]
        cost = np.zeros(n_vars)
        cost[:len(self.pairs)] = 1.0
        integrality = np.zeros(n_vars)
        integrality[:len(self.pairs)] = 1
        with solver_stdout_to_stderr():
            return milp(cost, constraints=LinearConstraint(self.matrix, *self.row_bounds), integrality=integrality,
                        bounds=Bounds(*self.var_bounds), options={"time_limit": time_limit_s, "disp": False})


@contextlib.contextmanager
def solver_stdout_to_stderr():
    """HiGHS writes some notes to file descriptor 1 even with disp off; the benchmarks print JSON there."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
