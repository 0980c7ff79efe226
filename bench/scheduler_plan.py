"""An experiment: farm's policy with an online copy plan, against the shipped policy and fifo.

    .venv/bin/python bench/scheduler_plan.py [--period 5] [--horizon 60] [--utilisation 0.9] [--overload 0]
                                             [--trace-seeds 1,2,3,4,5] [--seeds 0]

Not the shipped policy (docs/benchmarks.md says why). Every ``period``
seconds of trace time a small mixed-integer program (HiGHS through scipy)
chooses which GPUs may hold which models: the fewest new (GPU, model) pairs,
models already held costing next to nothing, such that each model gets the
capacity (GPU speed, shared between a GPU's models) that its queued work
within ``horizon`` seconds plus its recent arrival rate asks for, scaled down
to ``utilisation`` of the cluster when the demand is larger, and each GPU's
models fit in its VRAM. The plan goes into the snapshot as ``copy_plan``:
farm's policy then loads another copy of a model only on a planned GPU
(first loads and held models are unaffected). With ``--overload S`` the plan
binds only while the farm needs at least S seconds for its whole queue;
otherwise the shipped copy rule decides alone.

The planner keeps state between calls (the arrivals it has seen), so each
simulation gets a fresh one. For each trace (the shipped ones and
bench/make_traces.py's with --trace-seeds) and worker order (--seeds), one
JSON line: loads, the clairvoyant bound at the run's worst wait, p50, p95 and
max wait against fifo, and whether every target of the issue holds; then a
summary line, and the plan's solve time on the decision benchmark's cluster
(100 workers, 20 models, 10,000 queued).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from scheduler_targets import compare, fresh_workloads, seed_list, shipped_workload, targets
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from farm.scheduler.bench import clairvoyant_metrics, synthetic_snapshot
from farm.scheduler.clairvoyant import solver_stdout_to_stderr
from farm.scheduler.policy import Decisions, QueuedJob, Snapshot, WorkerState, place, working_memory_gb
from farm.scheduler.simulator import load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

WINDOW_S = 300.0  # recent arrivals counted for a model's rate
MIN_SPAN_S = 30.0  # ... over at least this long, so the first seconds do not look like a flood
HELD_COST = 0.01  # a pair already held costs next to nothing: the plan keeps what is loaded
SOLVE_LIMIT_S = 2.0


class Planner:
    """A policy callable: farm's ``place`` with a copy plan refreshed every ``period_s``."""

    def __init__(self, period_s: float, horizon_s: float, utilisation: float, overload_s: float = 0.0) -> None:
        self.period_s, self.horizon_s, self.utilisation = period_s, horizon_s, utilisation
        self.overload_s = overload_s
        self.seen: set = set()
        self.arrivals: deque[tuple[float, str, float]] = deque()  # (queued_at, model, est_seconds)
        self.samples: dict[str, QueuedJob] = {}  # model -> a job of it, for can_ever_run and sizes
        self.planned_at = -np.inf
        self.plan: frozenset[tuple[str, str]] | None = None
        self.solve_s: list[float] = []

    def __call__(self, snapshot: Snapshot) -> Decisions:
        self.observe(snapshot)
        if snapshot.now - self.planned_at >= self.period_s:
            self.planned_at = snapshot.now
            started = time.perf_counter()
            self.plan = self.make_plan(snapshot)
            self.solve_s.append(time.perf_counter() - started)
        if self.overload_s > 0 and drain_s(snapshot) < self.overload_s:
            return place(snapshot)  # not overloaded: copies add capacity, the shipped copy rule decides
        return place(dataclasses.replace(snapshot, copy_plan=self.plan))

    def observe(self, snapshot: Snapshot) -> None:
        since = snapshot.now - WINDOW_S
        for job in snapshot.jobs:
            if job.id not in self.seen and job.queued_at >= since:
                self.seen.add(job.id)
                self.arrivals.append((job.queued_at, job.model_id, job.est_seconds))
                self.samples.setdefault(job.model_id, job)
        while self.arrivals and self.arrivals[0][0] < since:
            self.arrivals.popleft()

    def demand(self, snapshot: Snapshot) -> dict[str, float]:
        """Seconds of speed-1 work per second each model asks for: recent arrivals plus the queue over the horizon."""
        need: dict[str, float] = {}
        if self.arrivals:
            span = max(snapshot.now - self.arrivals[0][0], MIN_SPAN_S)
            for _, model, work in self.arrivals:
                need[model] = need.get(model, 0.0) + work / span
        for job in snapshot.jobs:
            need[job.model_id] = need.get(job.model_id, 0.0) + job.est_seconds / self.horizon_s
            self.samples.setdefault(job.model_id, job)
        return need

    def make_plan(self, snapshot: Snapshot) -> frozenset[tuple[str, str]] | None:
        return plan_copies([w for w in snapshot.workers if not w.draining], self.demand(snapshot), self.samples,
                           self.utilisation)


def drain_s(snapshot: Snapshot) -> float:
    """Seconds the whole farm needs for everything queued (speed-1 work over the workers' total speed)."""
    speed = sum(w.speed * w.capacity for w in snapshot.workers if not w.draining)
    return sum(job.est_seconds for job in snapshot.jobs) / speed if speed > 0 else float("inf")


def plan_copies(workers: list[WorkerState], need: dict[str, float], samples: dict[str, QueuedJob],
                utilisation: float) -> frozenset[tuple[str, str]] | None:
    """The (worker, model) pairs of the cheapest plan that gives each model its share of capacity; None if none found.

    Variables: y[pair] (0/1, the worker may hold the model), f[pair] (the
    speed it gives the model).
    """
    models = [m for m, rate in need.items() if rate > 0 and m in samples]
    if not models or not workers:
        return None
    capacity = sum(w.speed * w.capacity for w in workers)
    scale = min(1.0, utilisation * capacity / sum(need[m] for m in models))
    pairs = [(w, m) for w in workers for m in models if w.can_ever_run(samples[m]) is None]
    if not pairs:
        return None
    n = len(pairs)
    cost = np.concatenate(([HELD_COST if m in w.loaded_models else 1.0 for w, m in pairs], np.zeros(n)))
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def row(entries, lo, hi):
        for col, value in entries:
            rows.append(len(lower))
            cols.append(col)
            vals.append(value)
        lower.append(lo)
        upper.append(hi)

    for model in models:  # each model gets its share
        row([(n + k, 1.0) for k, (_, m) in enumerate(pairs) if m == model], scale * need[model], np.inf)
    for worker in workers:
        mine = [k for k, (w, _) in enumerate(pairs) if w is worker]
        row([(n + k, 1.0) for k in mine], -np.inf, worker.speed * worker.capacity)  # its speed, shared
        working = max((working_memory_gb(samples[pairs[k][1]].width, samples[pairs[k][1]].height) for k in mine),
                      default=0.0)
        row([(k, samples[pairs[k][1]].model_gb) for k in mine], -np.inf, worker.vram_total_gb - working)
    for k, (worker, _) in enumerate(pairs):  # speed only for a model it may hold
        row([(n + k, 1.0), (k, -worker.speed * worker.capacity)], -np.inf, 0.0)
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lower), 2 * n)).tocsr()
    with solver_stdout_to_stderr():
        result = milp(cost, constraints=LinearConstraint(matrix, lower, upper),
                      integrality=np.concatenate((np.ones(n), np.zeros(n))),
                      bounds=Bounds(np.zeros(2 * n), np.concatenate((np.ones(n), np.full(n, np.inf)))),
                      options={"time_limit": SOLVE_LIMIT_S, "disp": False})
    if result.x is None:
        return None
    return frozenset((w.id, m) for k, (w, m) in enumerate(pairs) if result.x[k] > 0.5)


def replay(workers_path: Path, trace_path: Path, name: str, seed: int, args) -> dict:
    """The shipped policy and fifo as scheduler_targets compares them, and the planned policy graded the same way."""
    shipped = compare(workers_path, trace_path, name, seed)
    workers, trace = load_workers(workers_path), load_trace(trace_path)
    planner = Planner(args.period, args.horizon, args.utilisation, args.overload)
    planned = simulate(workers, trace, planner, policy_name="farm+plan", worker_order_seed=seed or None)
    planned.update(clairvoyant_metrics(workers, trace, planned["wait_max_s"]))
    fifo = shipped["fifo"]
    out = {"trace": name, "seed": seed}
    for label, run, graded in (("shipped", shipped["farm"], shipped["targets"]),
                               ("planned", planned, targets(planned, fifo))):
        out[label] = {"loads": run["model_loads"], "bound": run["lower_bound_loads_clairvoyant"],
                      "loads_vs_bound": graded["loads_vs_bound"], "p50_vs_fifo": round(run["wait_p50_s"] / fifo["wait_p50_s"], 3),
                      "p95_vs_fifo": graded["p95_vs_fifo"], "max_vs_fifo": graded["max_vs_fifo"],
                      "all_targets": graded["every_target_ok"]}
    out["plan_solve_ms_p50"] = round(1000 * statistics.median(planner.solve_s), 2) if planner.solve_s else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=float, default=5.0, help="seconds of trace time between plans")
    parser.add_argument("--horizon", type=float, default=60.0, help="seconds in which the queue should drain")
    parser.add_argument("--utilisation", type=float, default=0.9, help="share of the cluster a plan hands out")
    parser.add_argument("--overload", type=float, default=0.0,
                        help="the plan binds only while the farm needs at least this many seconds for its queue (0: always)")
    parser.add_argument("--trace-seeds", default="1,2,3,4,5")
    parser.add_argument("--seeds", default="0", help="worker orders of the shipped traces (0: the file's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lines = []
    with tempfile.TemporaryDirectory() as scratch:
        shipped_path, shipped_traces, _ = shipped_workload()
        runs = [(shipped_path, trace, trace.stem, seed) for trace in shipped_traces for seed in seed_list(args.seeds)]
        runs += [(workers, trace, trace.stem + suffix, 0)
                 for workers, traces, suffix in fresh_workloads(Path(scratch), args.trace_seeds) for trace in traces]
        for workers_path, trace_path, name, seed in runs:
            lines.append(replay(workers_path, trace_path, name, seed, args))
            print(json.dumps(lines[-1]), flush=True)
    summary = {label: {"traces_meeting_every_target": sum(line[label]["all_targets"] for line in lines),
                       "loads": sum(line[label]["loads"] for line in lines)} for label in ("shipped", "planned")}
    big = synthetic_snapshot(100, 20, 10_000, seed=0)
    planner = Planner(args.period, args.horizon, args.utilisation)
    planner.observe(big)
    started = time.perf_counter()
    planner.make_plan(big)
    summary["plan_solve_s_100_workers_20_models"] = round(time.perf_counter() - started, 2)
    summary["traces"] = len(lines)
    print(json.dumps({"summary": summary, "period_s": args.period, "horizon_s": args.horizon,
                      "utilisation": args.utilisation, "overload_s": args.overload}))


if __name__ == "__main__":
    main()
