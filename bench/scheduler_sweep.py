"""The policy against fifo on many trace seeds at once: p95 wait, model loads, makespan and deadline misses (issue 23).

    cd bench && PYTHONPATH=.. ../.venv/bin/python scheduler_sweep.py [--trace-seeds 1,2,3] [--traces deadlines,bursty] [--worker-orders 0,1,2,3]

For the shipped traces (bench/traces on bench/workers/mixed.json) and the
workloads bench/make_traces.py draws with each --trace-seeds seed, both
policies replay each named trace in the same run. One JSON row per trace:
the policy's wait p95, model loads and makespan as ratios to fifo's, both
policies' makespan over the work bound and deadline misses, and the p95
wait of the light users (those with under LIGHT_JOBS jobs in the trace:
fair share is there for them), the worst one's and over all their jobs,
under each. "families" sums the rows up per trace family, as
docs/benchmarks.md tabulates them. Run at two commits, the rows say whether a change moved
any placement (every figure equal to the last digit); on fresh seeds they
say how far the targets carry over to workloads the tunables were not
chosen on.

--worker-orders replays each trace again with the workers shuffled into the
order each seed gives (0: the workers file's order), one row per order.
fifo's figures hang on that order a little (its p95 moves by under 5 % on
the deadlines traces); a ratio that holds only at order 0 is luck, not a
property of the policy.

--set NAME=VALUE[,NAME=VALUE] sets tunables of farm/scheduler/policy.py
(MIN_PATIENCE_S, DEADLINE_HORIZON_S, ...) for the run, to measure a
setting against the shipped one without editing the module. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np

from make_traces import LIGHT_JOBS, write_workload
from scheduler_targets import parse_tunables, seed_list, tunables_set

from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import place
from farm.scheduler.simulator import Simulation, load_trace, load_workers

ROOT = Path(__file__).resolve().parent
TRACES = "deadlines,preempt_campaign,bursty,mixed,heavy_user"


def replay(workers, trace, policy, **kwargs) -> dict:
    """The simulator's metrics, plus ``light_wait_p95_s``: the p95 wait over every light user's jobs together
    (None: the trace has no light user). The worst single light user's p95 rests on a few jobs; this one is
    what fair share is there to keep low."""
    simulation = Simulation(workers, trace, policy, **kwargs)
    metrics = simulation.run()
    jobs_per_user = {user: row["jobs"] for user, row in metrics["users"].items()}
    light = [job.render_start - job.spec.t for job in simulation.jobs
             if job.finished is not None and jobs_per_user.get(job.spec.user, LIGHT_JOBS) < LIGHT_JOBS]
    metrics["light_wait_p95_s"] = round(float(np.percentile(light, 95)), 3) if light else None
    return metrics


def worst_light_p95(metrics: dict) -> float | None:
    """The largest p95 wait of a light user; None: the trace has none."""
    light = [user["wait_p95_s"] for user in metrics["users"].values() if user["jobs"] < LIGHT_JOBS]
    return max(light) if light else None


def compare(workers_path: Path, trace_path: Path, name: str, order: int = 0) -> dict:
    workers, trace = load_workers(workers_path), load_trace(trace_path)
    shuffle = order or None
    fifo = replay(workers, trace, place_fifo, policy_name="fifo", worker_order_seed=shuffle)
    farm = replay(workers, trace, place, policy_name="farm", worker_order_seed=shuffle)
    return {"trace": name, "worker_order": order,
            "wait_p95_s": {"farm": farm["wait_p95_s"], "fifo": fifo["wait_p95_s"]},
            "p95_vs_fifo": round(farm["wait_p95_s"] / fifo["wait_p95_s"], 3),
            "loads_vs_fifo": round(farm["model_loads"] / fifo["model_loads"], 3),
            "makespan_vs_fifo": round(farm["makespan_s"] / fifo["makespan_s"], 4),
            # The simulator's work bound (no schedule ends sooner): how far from the best either policy is.
            "makespan_vs_bound": {name: round(run["makespan_s"] / run["makespan_lower_bound_s"], 4)
                                  for name, run in (("farm", farm), ("fifo", fifo))},
            "deadline_misses": {"farm": farm["deadline_misses"], "fifo": fifo["deadline_misses"]},
            "light_worst_p95_s": {"farm": worst_light_p95(farm), "fifo": worst_light_p95(fifo)},
            "light_p95_s": {"farm": farm["light_wait_p95_s"], "fifo": fifo["light_wait_p95_s"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="1,2,3", help="make_traces seeds of the fresh workloads, as 1,2,3 or 11-20 ('' for none)")
    parser.add_argument("--traces", default=TRACES, help="trace names (file stems) to replay")
    parser.add_argument("--no-shipped", action="store_true", help="fresh workloads only")
    parser.add_argument("--set", default="", metavar="NAME=VALUE,...", help="policy tunables to set for the run")
    parser.add_argument("--worker-orders", default="0",
                        help="worker order seeds to replay each trace at (0: the workers file's order)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    names = [name for name in args.traces.split(",") if name]
    tunables = parse_tunables(args.set)
    with tunables_set(tunables):
        rows = sweep(args, names)
    print(json.dumps({"set": tunables, "families": summarize(rows), "rows": rows}, indent=1))
    return 0


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per trace family (the name before "@"), what docs/benchmarks.md tabulates: how many runs miss each
    target, the worst and the median ratios, and the deadline misses summed."""
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["trace"].partition("@")[0], []).append(row)
    summary = {}
    for family, runs in families.items():
        p95 = [run["p95_vs_fifo"] for run in runs]
        makespan = [run["makespan_vs_fifo"] for run in runs]
        light = [run["light_p95_s"]["farm"] / run["light_p95_s"]["fifo"] for run in runs if run["light_p95_s"]["fifo"]]
        summary[family] = {
            "runs": len(runs),
            "p95_over_1_1": sum(ratio > 1.1 for ratio in p95),
            "p95_vs_fifo_median": round(statistics.median(p95), 3), "p95_vs_fifo_max": max(p95),
            "light_p95_over_1_1": sum(ratio > 1.1 for ratio in light),
            "light_p95_vs_fifo_median": round(statistics.median(light), 3) if light else None,
            "light_p95_vs_fifo_max": round(max(light), 3) if light else None,
            "makespan_over_fifo": sum(ratio > 1.0 for ratio in makespan), "makespan_vs_fifo_max": max(makespan),
            "makespan_vs_bound_max": {name: max(run["makespan_vs_bound"][name] for run in runs) for name in ("farm", "fifo")},
            "loads_vs_fifo_median": round(statistics.median(run["loads_vs_fifo"] for run in runs), 3),
            "deadline_misses": {name: sum(run["deadline_misses"][name] for run in runs) for name in ("farm", "fifo")},
        }
    return summary


def sweep(args, names: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workloads = [] if args.no_shipped else [("", ROOT / "workers" / "mixed.json", ROOT / "traces")]
        for seed in seed_list(args.trace_seeds):
            out = Path(scratch) / str(seed)
            write_workload(out, seed=seed)
            workloads.append((f"@{seed}", out / "workers" / "mixed.json", out / "traces"))
        for suffix, workers_path, traces in workloads:
            rows += [compare(workers_path, traces / f"{name}.jsonl", name + suffix, order)
                     for name in names for order in seed_list(args.worker_orders)]
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
