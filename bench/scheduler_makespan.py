"""Makespan against fifo and against the lower bound, on every shipped and fresh trace (issue 23).

    .venv/bin/python bench/scheduler_makespan.py [--trace-seeds 1,2] [--at-once-seeds 1,2]

For each trace, both policies replay it in the same run and the output
gives each one's makespan, waits and loads, the simulator's
``makespan_lower_bound_s`` and the ratios the targets are stated in:
farm's makespan over fifo's (target <= 1) on every trace, and over the
bound (target <= 1.15) on the all-at-once traces. Traces: the shipped
bench/traces/*.jsonl on bench/workers/mixed.json; those bench/make_traces.py
writes with --trace-seeds ("@seed"); the all-at-once trace
bench/traces/at_once/jobs-10k.jsonl on bench/workers/at_once.json, and the
same shape drawn with --at-once-seeds ("at_once@seed", built in memory).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from make_traces import at_once_workload
from scheduler_targets import fresh_workloads, seed_list, shipped_workload

from farm.scheduler.bench import policy_function
from farm.scheduler.simulator import TraceJob, WorkerSpec, load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
KEPT = ("makespan_s", "makespan_lower_bound_s", "model_loads", "wait_p50_s", "wait_p95_s", "wait_max_s",
        "utilization", "vram_overcommits", "invalid_assignments", "double_assignments")


def compare(name: str, workers, trace, at_once: bool) -> dict:
    runs = {policy: simulate(workers, trace, policy_function(policy), policy_name=policy) for policy in ("farm", "fifo")}
    farm, fifo = runs["farm"], runs["fifo"]
    row = {"trace": name, "jobs": len(trace), "workers": len(workers),
           "farm": {k: farm[k] for k in KEPT}, "fifo": {k: fifo[k] for k in KEPT},
           "farm_vs_fifo": round(farm["makespan_s"] / fifo["makespan_s"], 4),
           "farm_vs_bound": round(farm["makespan_s"] / farm["makespan_lower_bound_s"], 4),
           "fifo_vs_bound": round(fifo["makespan_s"] / fifo["makespan_lower_bound_s"], 4)}
    row["farm_vs_fifo_ok"] = row["farm_vs_fifo"] <= 1.0
    if at_once:
        row["farm_vs_bound_ok"] = row["farm_vs_bound"] <= 1.15
    return row


def specs_of(records: list[dict]) -> list[WorkerSpec]:
    return [WorkerSpec(id=w["id"], vram_gb=w["vram_gb"], load_gbps=w["load_gbps"], speed=w["speed"],
                       families=frozenset(w["families"])) for w in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="1,2", help="make_traces seeds of the fresh traces ('' for none)")
    parser.add_argument("--at-once-seeds", default="1,2", help="seeds of fresh all-at-once traces ('' for none)")
    parser.add_argument("--only-at-once", action="store_true", help="skip the shipped and fresh spread-out traces")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = []
    if not args.only_at_once:
        workers_path, traces, _ = shipped_workload()
        workers = load_workers(workers_path)
        rows += [compare(path.stem, workers, load_trace(path), False) for path in traces]
        with tempfile.TemporaryDirectory() as scratch:
            for workers_path, traces, suffix in fresh_workloads(Path(scratch), args.trace_seeds):
                workers = load_workers(workers_path)
                rows += [compare(path.stem + suffix, workers, load_trace(path), False) for path in traces]
    rows.append(compare("at_once", load_workers(ROOT / "workers" / "at_once.json"),
                        load_trace(ROOT / "traces" / "at_once" / "jobs-10k.jsonl"), True))
    for seed in seed_list(args.at_once_seeds):
        workers, records = at_once_workload(seed=seed)
        rows.append(compare(f"at_once@{seed}", specs_of(workers), [TraceJob(**r) for r in records], True))
    graded = [row for row in rows if "farm_vs_bound_ok" in row]
    print(json.dumps({"runs": rows,
                      "every_farm_vs_fifo_ok": all(row["farm_vs_fifo_ok"] for row in rows),
                      "every_at_once_vs_bound_ok": all(row["farm_vs_bound_ok"] for row in graded)}, indent=1))


if __name__ == "__main__":
    main()
