"""Replay the scheduler targets with the policy's tunables set to other values.

    .venv/bin/python bench/scheduler_grid.py --set MIN_COPY_BACKLOG_S=30,120 --set AGE_WEIGHT=3,30

Every combination of the given values is set on farm.scheduler.policy (the
tunables are module constants the policy reads at each call) and replayed on
the shipped traces and the fresh ones of bench/scheduler_targets.py, workers
file order, against fifo in the same run. One JSON line per combination:
each trace's loads against the bound, and p50, p95 and max wait against fifo.
This is how the figures in docs/benchmarks.md "Findings" were measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
from pathlib import Path

from scheduler_targets import compare, fresh_workloads, shipped_workload

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
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        workloads = [shipped_workload()] + fresh_workloads(Path(scratch), args.trace_seeds)
        names = [name for name, _ in args.set]
        for values in itertools.product(*(v for _, v in args.set)):
            for name, value in zip(names, values):
                setattr(policy, name, value)
            result = {}
            for workers, traces, suffix in workloads:
                for trace in traces:
                    run = compare(workers, trace, trace.stem + suffix, 0)
                    farm, fifo = run["farm"], run["fifo"]
                    result[run["trace"]] = {
                        "loads_vs_bound": run["targets"]["loads_vs_bound"],
                        "p50_vs_fifo": round(farm["wait_p50_s"] / fifo["wait_p50_s"], 3) if fifo["wait_p50_s"] else None,
                        "p95_vs_fifo": run["targets"]["p95_vs_fifo"], "max_vs_fifo": run["targets"]["max_vs_fifo"]}
            print(json.dumps({"set": dict(zip(names, values)), "traces": result}), flush=True)


if __name__ == "__main__":
    main()
