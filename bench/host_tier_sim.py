"""Model loads and queue waits in the simulator with and without a host-memory tier.

Workload shape: the shipped traces (bench/traces/*.jsonl: a mixed day, bursts,
a heavy campaign user; 8 models of SD 1.5, SDXL and FLUX sizes) on the
shipped 10-GPU cluster (bench/workers/mixed.json, 8 to 80 GB, 1.2 to 6 GB/s
from disk). For each trace and policy the same run replays the cluster as the
file gives it (no tier: an evicted model is read from disk again) and with
every worker keeping evicted models in ``--ram-cache-gb`` of host memory,
brought back at ``--h2d-gbps``; the live policy sees the tier and prices a
load from it at that rate (farm/scheduler/policy.py).

    python bench/host_tier_sim.py
    python bench/host_tier_sim.py --ram-cache-gb 32 --h2d-gbps 12 --policies farm,fifo

Prints one JSON object: per trace and policy, loads (count, of them from the
tier, GB moved, seconds) and p50 / p95 / max wait, without and with the tier.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.scheduler.bench import POLICIES, run_bench  # noqa: E402

KEPT = ("model_loads", "host_loads", "load_gb", "load_s", "host_load_s", "evictions", "wait_p50_s", "wait_p95_s",
        "wait_max_s", "makespan_s", "vram_overcommits", "invalid_assignments", "double_assignments")


def compare(workers: Path, trace: Path, policy: str, ram_cache_gb: float, h2d_gbps: float) -> dict:
    without = run_bench(workers, trace, policy, ram_cache_gb=0.0)
    tiered = run_bench(workers, trace, policy, ram_cache_gb=ram_cache_gb, h2d_gbps=h2d_gbps)
    return {"without": {k: without[k] for k in KEPT}, "with": {k: tiered[k] for k in KEPT}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=Path, default=ROOT / "bench" / "workers" / "mixed.json")
    parser.add_argument("--traces", default="mixed,bursty,heavy_user", help="names under bench/traces/")
    parser.add_argument("--policies", default="farm,fifo")
    parser.add_argument("--ram-cache-gb", type=float, default=64.0, help="every worker's host tier, GB")
    parser.add_argument("--h2d-gbps", type=float, default=12.0, help="every worker's host-to-GPU rate, GB/s")
    args = parser.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    if args.ram_cache_gb <= 0 or args.h2d_gbps <= 0:
        parser.error("--ram-cache-gb and --h2d-gbps must be > 0")
    results = {"bench": "host_tier_sim", "workers": str(args.workers.relative_to(ROOT) if args.workers.is_absolute()
                                                         and ROOT in args.workers.parents else args.workers),
               "ram_cache_gb": args.ram_cache_gb, "h2d_gbps": args.h2d_gbps, "traces": {}}
    for name in args.traces.split(","):
        trace = ROOT / "bench" / "traces" / f"{name}.jsonl"
        results["traces"][name] = {policy: compare(args.workers, trace, policy, args.ram_cache_gb, args.h2d_gbps)
                                   for policy in policies}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
