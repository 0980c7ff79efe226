"""Replay the scheduler targets with the policy's tunables set to other values.

    .venv/bin/python bench/scheduler_grid.py --set MIN_COPY_BACKLOG_S=30,120 --set AGE_WEIGHT=3,30 [--seeds 0,1,2,3]

Every combination of the given values is set on farm.scheduler.policy (the
tunables are module constants the policy reads at each call) and replayed on
the shipped traces (at each worker order of --seeds; 0 is the file's) and
the fresh ones of bench/scheduler_targets.py (the file's order), against
fifo in the same run. One JSON line per combination: each trace's loads,
loads against the bound, p50, p95 and max wait against fifo and whether
every target holds, then how many runs met every target and their loads in
all. This is how the figures in docs/benchmarks.md "Findings" were measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
from pathlib import Path

from scheduler_targets import compare, fresh_workloads, seed_list, shipped_workload

from farm.scheduler import policy


def tunable(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    if not hasattr(policy, name) or not name.isupper():
        raise argparse.ArgumentTypeError(f"{name!r} is not a tunable of farm.scheduler.policy")
    try:
        return name, [float(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=number[,number...]") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=tunable, action="append", default=[], metavar="NAME=V1,V2")
    parser.add_argument("--trace-seeds", default="1,2")
    parser.add_argument("--seeds", default="0", help="worker orders of the shipped traces (0: the file's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        workers_path, shipped, _ = shipped_workload()
        runs = [(workers_path, trace, trace.stem + (f"#{seed}" if seed else ""), seed)
                for trace in shipped for seed in seed_list(args.seeds)]
        runs += [(workers, trace, trace.stem + suffix, 0)
                 for workers, traces, suffix in fresh_workloads(Path(scratch), args.trace_seeds) for trace in traces]
        names = [name for name, _ in args.set]
        for values in itertools.product(*(v for _, v in args.set)):
            for name, value in zip(names, values):
                setattr(policy, name, value)
            result = {}
            for workers, trace, name, seed in runs:
                run = compare(workers, trace, name, seed)
                farm, fifo, graded = run["farm"], run["fifo"], run["targets"]
                result[name] = {
                    "loads": farm["model_loads"], "loads_vs_bound": graded["loads_vs_bound"],
                    "p50_vs_fifo": round(farm["wait_p50_s"] / fifo["wait_p50_s"], 3) if fifo["wait_p50_s"] else None,
                    "p95_vs_fifo": graded["p95_vs_fifo"], "max_vs_fifo": graded["max_vs_fifo"],
                    "all_targets": graded["every_target_ok"]}
            print(json.dumps({"set": dict(zip(names, values)), "traces": result,
                              "runs_meeting_every_target": sum(r["all_targets"] for r in result.values()),
                              "runs": len(result), "loads": sum(r["loads"] for r in result.values())}), flush=True)


if __name__ == "__main__":
    main()
