"""Where the p95 wait and the makespan tail come from, farm against fifo (issue 23, a diagnosis).

    cd bench && PYTHONPATH=.. ../.venv/bin/python scheduler_wait_tail.py [--trace-seeds 2,3] [--patience 0,60,150,450]

Workload: bench/traces/deadlines.jsonl (five campaigns of 100-300 images,
three with deadlines, beside 14 light users; ~1,600 jobs on the 10 GPUs of
bench/workers/mixed.json: the issue's campaign trace with deadlines added)
and the same trace drawn by bench/make_traces.py with --trace-seeds; then
bench/traces/preempt_campaign.jsonl and its fresh draws for the makespan.
For each deadlines trace, fifo and the policy replay it in the same run and
the output says which jobs make up the slowest 5 % (by user: campaign or
light), each side's mean wait and light users' worst p95, and the same for
the policy with its patience (how long a job may wait for a GPU that holds
its model, MIN_PATIENCE_S) set to each --patience value: what the p95 costs
in model loads. For each preempt_campaign trace: the last jobs to finish
under each policy (their render seconds and the speed of the GPU they ran
on), which is where a makespan above fifo's comes from. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import tempfile
from pathlib import Path

from make_traces import write_workload
from scheduler_targets import seed_list

import farm.scheduler.policy as policy
from farm.scheduler.fifo import place_fifo
from farm.scheduler.simulator import Simulation, load_trace, load_workers

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent


@contextlib.contextmanager
def patience(seconds: float):
    """The policy with MIN_PATIENCE_S set to ``seconds`` and no load-time floor (an ablation, not a setting)."""
    saved = policy.MIN_PATIENCE_S, policy.PATIENCE_LOADS
    # patience_s divides by it: a tiny positive value stands for "none".
    policy.MIN_PATIENCE_S, policy.PATIENCE_LOADS = max(seconds, 1e-3), 0.0
    try:
        yield
    finally:
        policy.MIN_PATIENCE_S, policy.PATIENCE_LOADS = saved


class RecordingSimulation(Simulation):
    """A simulation that remembers the GPU each job started on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started_on: dict[int, str] = {}

    def _start_job(self, worker, job, now: float) -> None:
        self.started_on[job.index] = worker.spec.id
        super()._start_job(worker, job, now)


def replay(workers, trace, place) -> tuple[dict, RecordingSimulation]:
    simulation = RecordingSimulation(workers, trace, place)
    return simulation.run(), simulation


def wait_tail(metrics: dict, simulation: Simulation) -> dict:
    """The slowest 5 % of jobs by user, and the waits around them."""
    done = [job for job in simulation.jobs if job.finished is not None]
    p95 = metrics["wait_p95_s"]
    slowest = [job for job in done if job.render_start - job.spec.t >= p95]
    campaign_users = {job.spec.user for job in simulation.jobs if job.spec.campaign is not None}
    light = [name for name in metrics["users"] if name not in campaign_users]
    return {"wait_p95_s": p95, "wait_mean_s": round(sum(j.render_start - j.spec.t for j in done) / len(done), 3),
            "model_loads": metrics["model_loads"], "deadline_misses": metrics["deadline_misses"],
            "light_users_worst_p95_s": max(metrics["users"][name]["wait_p95_s"] for name in light),
            "slowest_5pct_by_user": dict(collections.Counter(
                job.spec.user if job.spec.user in campaign_users else "(light users)" for job in slowest).most_common()),
            "slowest_5pct_arrived_s": [round(min(j.spec.t for j in slowest), 1), round(max(j.spec.t for j in slowest), 1)]}


def diagnose_waits(workers_path: Path, trace_path: Path, patience_values: list[float]) -> dict:
    workers, trace = load_workers(workers_path), load_trace(trace_path)
    fifo = wait_tail(*replay(workers, trace, place_fifo))
    farm = wait_tail(*replay(workers, trace, policy.place))
    row = {"fifo": fifo, "farm": farm, "farm_p95_vs_fifo": round(farm["wait_p95_s"] / fifo["wait_p95_s"], 3),
           "patience_ablation": []}
    for seconds in patience_values:
        with patience(seconds):
            metrics, _ = replay(workers, trace, policy.place)
        row["patience_ablation"].append({
            "min_patience_s": seconds, "p95_vs_fifo": round(metrics["wait_p95_s"] / fifo["wait_p95_s"], 3),
            "loads_vs_fifo": round(metrics["model_loads"] / fifo["model_loads"], 3),
            "deadline_misses": metrics["deadline_misses"]})
    return row


def makespan_tail(workers_path: Path, trace_path: Path, last: int = 4) -> dict:
    workers, trace = load_workers(workers_path), load_trace(trace_path)
    speeds = {w.id: w.speed for w in workers}
    row = {}
    for name, place in (("fifo", place_fifo), ("farm", policy.place)):
        metrics, simulation = replay(workers, trace, place)
        done = sorted((job for job in simulation.jobs if job.finished is not None), key=lambda j: j.finished)
        row[name] = {"makespan_s": metrics["makespan_s"], "makespan_lower_bound_s": metrics["makespan_lower_bound_s"],
                     "last_jobs": [{"user": job.spec.user, "priority": job.spec.priority,
                                    "render_s": round(job.finished - job.render_start, 1),
                                    "gpu_speed": speeds[simulation.started_on[job.index]],
                                    "finished_s": round(job.finished, 1)} for job in done[-last:]]}
    row["farm_vs_fifo"] = round(row["farm"]["makespan_s"] / row["fifo"]["makespan_s"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="2,3", help="make_traces seeds of the fresh traces ('' for none)")
    parser.add_argument("--patience", default="0,60,150,450", help="MIN_PATIENCE_S values for the ablation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    patience_values = [float(s) for s in args.patience.split(",") if s.strip()]
    workloads = [("shipped", ROOT / "workers" / "mixed.json", ROOT / "traces")]
    results: dict = {"waits": {}, "makespan": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seed_list(args.trace_seeds):
            out = Path(scratch) / str(seed)
            write_workload(out, seed=seed)
            workloads.append((f"fresh_seed_{seed}", out / "workers" / "mixed.json", out / "traces"))
        for name, workers_path, traces in workloads:
            results["waits"][name] = diagnose_waits(workers_path, traces / "deadlines.jsonl", patience_values)
            results["makespan"][name] = makespan_tail(workers_path, traces / "preempt_campaign.jsonl")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
