"""How few loads farm's policy reaches when hindsight tells each GPU which models to serve.

    .venv/bin/python bench/scheduler_hindsight.py [--trace-seeds 1,2]

The clairvoyant lower bound (farm/scheduler/clairvoyant.py) says no schedule
with farm's worst wait loads fewer times; this script brackets the optimum
from the other side with a real schedule. For each trace it replays farm's
policy, then restricts every GPU to serve only the models it loaded
(``serves``, which the policy respects) and drops those (GPU, model) pairs
one at a time, latest load first, keeping a drop only when the replay still
renders every job with p95 wait <= 1.1 x fifo's and a worst wait no longer
than farm's own run (so the clairvoyant bound at that wait applies to it
too), and starting over after each kept drop until none can go. A greedy
search, so its result is an upper bound on the fewest loads possible at
those waits, not the fewest.

Then the bound's own plan: the GPUs restricted to the models the solver
chose for them, each job to the first free GPU that serves its model,
fastest GPUs first, oldest job first (fifo's order). Its waits are not
farm's, so the bound is solved again at its own worst wait; the two show
how close a real schedule comes to the bound, and so how much of farm's gap
is the bound's and how much is the policy's.

One JSON object: per trace, the loads of fifo, farm, the hindsight schedule
and the clairvoyant bound, the pairs hindsight dropped and kept, and the
plan replay's loads, waits and bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from scheduler_targets import fresh_workloads, shipped_workload

from farm.scheduler.clairvoyant import clairvoyant_lower_bound_loads
from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import place
from farm.scheduler.simulator import WorkerSpec, load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

P95_VS_FIFO = 1.1


def restricted(workers: list[WorkerSpec], serves: dict[str, set[str]]) -> list[WorkerSpec]:
    # A GPU left with nothing to serve gets a model name no job uses.
    return [dataclasses.replace(w, serves_models=frozenset(serves[w.id]) or frozenset({"(none)"})) for w in workers]


def hindsight(workers: list[WorkerSpec], trace, name: str) -> dict:
    fifo = simulate(workers, trace, place_fifo, policy_name="fifo")
    farm = simulate(workers, trace, place, policy_name="farm")
    max_wait, p95_limit = farm["wait_max_s"], P95_VS_FIFO * fifo["wait_p95_s"]
    loaded = [(w, m) for w, models in farm["loads_by_worker"].items() for m in models]
    serves = {w.id: set() for w in workers}
    for worker_id, model in loaded:
        serves[worker_id].add(model)
    best = farm
    dropped: list[tuple[str, str]] = []
    candidates = list(reversed(list(dict.fromkeys(loaded))))
    while True:  # until no single pair can go: then every remaining drop breaks a wait
        for worker_id, model in candidates:
            serves[worker_id].discard(model)
            run = simulate(restricted(workers, serves), trace, place, policy_name="hindsight")
            if (run["rendered"] == len(trace) and run["wait_p95_s"] <= p95_limit and run["wait_max_s"] <= max_wait
                    and run["model_loads"] < best["model_loads"]):
                best = run
                dropped.append((worker_id, model))
                candidates.remove((worker_id, model))
                break
            serves[worker_id].add(model)
        else:
            break
    bound = clairvoyant_lower_bound_loads(workers, trace, max_wait)
    return {**plan_replay(workers, trace, bound, fifo), "trace": name, "fifo_loads": fifo["model_loads"], "farm_loads": farm["model_loads"],
            "hindsight_loads": best["model_loads"], "clairvoyant_bound": bound.loads,
            "farm_vs_bound": round(farm["model_loads"] / bound.loads, 3),
            "hindsight_vs_bound": round(best["model_loads"] / bound.loads, 3),
            "max_wait_s": max_wait, "hindsight_wait_p95_vs_fifo": round(best["wait_p95_s"] / fifo["wait_p95_s"], 3),
            "hindsight_dropped": [f"{w}:{m}" for w, m in dropped],
            "hindsight_serves": {w: sorted(m) for w, m in serves.items()}}


def plan_replay(workers: list[WorkerSpec], trace, bound, fifo: dict) -> dict:
    """The bound's choice of holders replayed oldest-first (see the module docstring)."""
    if bound.holders is None:
        return {}
    fastest_first = sorted(restricted(workers, bound.holders), key=lambda w: -w.speed)
    run = simulate(fastest_first, trace, place_fifo, policy_name="bound plan")
    again = clairvoyant_lower_bound_loads(workers, trace, run["wait_max_s"])
    return {"plan_loads": run["model_loads"], "plan_rendered": run["rendered"],
            "plan_wait_p95_vs_fifo": round(run["wait_p95_s"] / fifo["wait_p95_s"], 3),
            "plan_wait_max_s": run["wait_max_s"], "plan_wait_max_vs_fifo": round(run["wait_max_s"] / fifo["wait_max_s"], 3),
            "plan_bound_at_its_max_wait": again.loads,
            "plan_holders": {w: sorted(m) for w, m in bound.holders.items() if m}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="1,2", help="bench/make_traces.py seeds besides the shipped traces")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for workers_path, traces, suffix in [shipped_workload()] + fresh_workloads(Path(scratch), args.trace_seeds):
            workers = load_workers(workers_path)
            for trace_path in traces:
                results.append(hindsight(workers, load_trace(trace_path), trace_path.stem + suffix))
    print(json.dumps({"runs": results}, indent=1))


if __name__ == "__main__":
    main()
