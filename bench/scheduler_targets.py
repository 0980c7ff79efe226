"""The scheduler issue's targets on every shipped trace, farm against fifo in the same run.

    .venv/bin/python bench/scheduler_targets.py [--seeds 0,1,2,3]

For each trace in bench/traces and each seed (seed 0 = the workers file's
order; others shuffle the order workers appear in snapshots, which fifo's
results hang on), replays the trace with both policies on
bench/workers/mixed.json and prints one JSON object: the raw metrics and the
ratios the targets are stated in, with whether each holds. The policy's
tunables were chosen on these traces, so the same is done for traces that
bench/make_traces.py writes with other seeds (--trace-seeds, in the workers
file's order; "fresh" in the output), which show how far the figures carry
over to workloads the tuning never saw. Then one decision benchmark (100
workers, 20 models, 10,000 queued), both policies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
from pathlib import Path

from make_traces import write_workload

from farm.scheduler import policy
from farm.scheduler.bench import run_bench, run_decision_bench

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
KEPT = ("model_loads", "evictions", "lower_bound_loads", "lower_bound_loads_at_max_wait",
        "lower_bound_loads_clairvoyant", "clairvoyant_optimal", "clairvoyant_solve_s", "wait_p50_s",
        "wait_p95_s", "wait_max_s", "vram_overcommits", "double_assignments", "invalid_assignments", "stalled")


def targets(farm: dict, fifo: dict) -> dict:
    """The issue's targets. The bound is the clairvoyant one (all models competing for the GPUs) at farm's worst wait."""
    loads_vs_fifo = farm["model_loads"] / fifo["model_loads"]
    loads_vs_bound = farm["model_loads"] / farm["lower_bound_loads_clairvoyant"]
    p95 = farm["wait_p95_s"] / fifo["wait_p95_s"]
    worst = farm["wait_max_s"] / fifo["wait_max_s"]
    graded = {
        "loads_vs_fifo": round(loads_vs_fifo, 3), "loads_vs_fifo_ok": loads_vs_fifo <= 0.35,
        "loads_vs_bound": round(loads_vs_bound, 3), "loads_vs_bound_ok": loads_vs_bound <= 1.5,
        "loads_vs_window_bound": round(farm["model_loads"] / farm["lower_bound_loads_at_max_wait"], 3),
        "p95_vs_fifo": round(p95, 3), "p95_vs_fifo_ok": p95 <= 1.1,
        "max_vs_fifo": round(worst, 3), "max_vs_fifo_ok": worst <= 2.0,
        "overcommits_ok": farm["vram_overcommits"] == 0,
    }
    graded["every_target_ok"] = all(v for k, v in graded.items() if k.endswith("_ok"))
    return graded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="worker order seeds, as 0,1 or 0-3; 0 keeps the workers file's order")
    parser.add_argument("--workers", default=str(ROOT / "workers" / "mixed.json"))
    parser.add_argument("--trace-seeds", default="1,2",
                        help="seeds of bench/make_traces.py for the fresh traces, as 1,2 or 11-20 ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    seeds = seed_list(args.seeds)
    runs = [compare(args.workers, trace, trace.stem, seed)
            for trace in shipped_workload()[1] for seed in seeds]
    with tempfile.TemporaryDirectory() as scratch:
        fresh = [compare(workers, trace, trace.stem + suffix, 0)
                 for workers, traces, suffix in fresh_workloads(Path(scratch), args.trace_seeds) for trace in traces]
    decision = run_decision_bench(100, 20, 10_000, 200)
    print(json.dumps({"runs": runs, "fresh": fresh, "decision": decision}, indent=1))


def seed_list(text: str) -> list[int]:
    """Seeds from "1,2,3", "11-20" (both ends included) or a mix ("1,5-7"); "" for none."""
    seeds = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, dash, last = item.partition("-")
        try:
            low, high = (int(first), int(last)) if dash else (int(item), int(item))
        except ValueError:
            low = high = None
        if low is None or low < 0 or high < low:
            raise SystemExit(f"seed list: {item!r} is neither a seed (7) nor a range of seeds, low to high (11-20)")
        seeds += range(low, high + 1)
    return seeds


def parse_tunables(text: str) -> dict[str, float]:
    """Policy tunables from "NAME=VALUE,..." (a --set option); each must be a numeric tunable of the policy module."""
    chosen = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        current = getattr(policy, name, None)
        if not name.isupper() or isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SystemExit(f"--set: {name!r} is not a numeric tunable of farm/scheduler/policy.py")
        try:
            chosen[name] = float(value)
        except ValueError:
            raise SystemExit(f"--set: {name}={value!r} is not a number") from None
    return chosen


@contextlib.contextmanager
def tunables_set(tunables: dict[str, float]):
    """Set policy tunables for the block, and put the shipped values back after it."""
    shipped = {name: getattr(policy, name) for name in tunables}
    try:
        for name, value in tunables.items():
            setattr(policy, name, value)
        yield
    finally:
        for name, value in shipped.items():
            setattr(policy, name, value)


def shipped_workload() -> tuple[Path, list[Path], str]:
    return ROOT / "workers" / "mixed.json", sorted((ROOT / "traces").glob("*.jsonl")), ""


def fresh_workloads(scratch: Path, trace_seeds: str) -> list[tuple[Path, list[Path], str]]:
    """(workers file, traces, name suffix "@seed") for each make_traces seed, written under scratch."""
    workloads = []
    for seed in seed_list(trace_seeds):
        out = scratch / str(seed)
        write_workload(out, seed=seed)
        workloads.append((out / "workers" / "mixed.json", sorted((out / "traces").glob("*.jsonl")), f"@{seed}"))
    return workloads


def compare(workers: str | Path, trace: Path, name: str, seed: int) -> dict:
    """Both policies on one trace; the kept metrics and the targets."""
    shuffle = seed or None
    farm = run_bench(workers, trace, "farm", shuffle, clairvoyant=True)
    fifo = run_bench(workers, trace, "fifo", shuffle)
    return {"trace": name, "jobs": farm["jobs"], "seed": seed, "farm": {k: farm[k] for k in KEPT},
            "fifo": {k: fifo.get(k) for k in KEPT}, "targets": targets(farm, fifo)}


if __name__ == "__main__":
    main()
