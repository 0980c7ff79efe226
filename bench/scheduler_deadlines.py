"""Deadlines in the simulator (issue 23): misses and waits of fifo, the policy blind to deadlines, and the policy.

    .venv/bin/python bench/scheduler_deadlines.py [--trace-seeds 1,2] [--set DEADLINE_BOOST_S=120]

Replays bench/traces/deadlines.jsonl (five campaigns, three with deadlines,
beside light users whose images sometimes carry one) on
bench/workers/mixed.json with three policies in the same run: fifo, the
placement policy with every deadline hidden from it (what it did before it
weighed slack: without deadlines the slack term is a no-op), and the policy
as shipped. Then the same on traces bench/make_traces.py writes with other
seeds. Prints one JSON object: per trace, each policy's misses, lateness
and waits, and the ratios the targets are stated in (misses below both
baselines, p95 wait over all jobs at most 1.1 x fifo's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from make_traces import write_workload
from scheduler_targets import parse_tunables, seed_list, tunables_set

from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import Decisions, Snapshot, place
from farm.scheduler.simulator import load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
KEPT = ("jobs", "rendered", "deadline_jobs", "deadline_misses", "deadline_miss_s_total", "wait_p50_s", "wait_p95_s",
        "wait_max_s", "makespan_s", "model_loads", "vram_overcommits", "double_assignments", "invalid_assignments",
        "stalled")


def place_blind(snapshot: Snapshot) -> Decisions:
    """The policy with the snapshot's deadlines removed: how it placed before it weighed slack."""
    jobs = [dataclasses.replace(job, deadline=None) if job.deadline is not None else job for job in snapshot.jobs]
    return place(dataclasses.replace(snapshot, jobs=jobs, campaign_work_s={}))


POLICIES = {"fifo": place_fifo, "farm_blind": place_blind, "farm": place}


def compare(workers_path: Path, trace_path: Path) -> dict:
    workers, trace = load_workers(workers_path), load_trace(trace_path)
    runs = {}
    for name, policy in POLICIES.items():
        metrics = simulate(workers, trace, policy, policy_name=name)
        runs[name] = {key: metrics[key] for key in KEPT}
    farm, fifo, blind = runs["farm"], runs["fifo"], runs["farm_blind"]
    p95_ratio = farm["wait_p95_s"] / fifo["wait_p95_s"] if fifo["wait_p95_s"] else None
    runs["targets"] = {
        "misses_below_fifo": farm["deadline_misses"] < fifo["deadline_misses"],
        "misses_below_blind": farm["deadline_misses"] < blind["deadline_misses"],
        "wait_p95_vs_fifo": round(p95_ratio, 3) if p95_ratio is not None else None,
        "wait_p95_within_1_1_fifo": p95_ratio is not None and p95_ratio <= 1.1,
    }
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="1,2", help="seeds for fresh traces, as 1,2 or 11-20 (empty: none)")
    parser.add_argument("--set", default="", metavar="NAME=VALUE,...", help="policy tunables to set for the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tunables_set(parse_tunables(args.set)):
        results = run(args.trace_seeds)
    print(json.dumps(results, indent=1))


def run(trace_seeds: str) -> dict:
    results = {"shipped": compare(ROOT / "workers" / "mixed.json", ROOT / "traces" / "deadlines.jsonl")}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seed_list(trace_seeds):
            out = Path(scratch) / str(seed)
            write_workload(out, seed=seed)
            results[f"fresh_seed_{seed}"] = compare(out / "workers" / "mixed.json", out / "traces" / "deadlines.jsonl")
    return results


if __name__ == "__main__":
    main()
