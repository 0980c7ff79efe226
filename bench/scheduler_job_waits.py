"""One user's jobs on one trace, job by job: the wait under the policy and under fifo, and the GPUs left empty meanwhile.

    cd bench && PYTHONPATH=.. ../.venv/bin/python scheduler_job_waits.py --trace mixed --trace-seed 1 --user pavel [--since 138 --until 139] [--worker-order 0]

The sweep (scheduler_sweep.py) says which runs a light user's p95 wait is
far above fifo's; this says why for one user. Both policies replay the trace
(bench/traces on bench/workers/mixed.json, or the workload bench/make_traces.py
draws with --trace-seed) and each of the user's jobs that arrived in
[--since, --until) gets a row: arrival, model, the wait under each policy,
and ``empty_idle_gpus_max``, the most GPUs that one policy pass left free,
running nothing and holding no model, while the job waited under the
policy. A job that waits while that is above zero waited for a busy GPU that
holds its model, or behind other users, rather than for want of a GPU.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from make_traces import write_workload

from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import place
from farm.scheduler.simulator import Simulation, load_trace, load_workers

ROOT = Path(__file__).resolve().parent


def job_waits(workers, trace, user: str, since: float, until: float, worker_order: int = 0) -> list[dict]:
    passes: list[tuple[float, int]] = []  # (time of a policy pass, GPUs free, idle and empty then)

    def recording(snapshot):
        decisions = place(snapshot)
        given = {a.worker_id for a in decisions.assignments} | {p.worker_id for p in decisions.preloads}
        # GPUs the pass left free, running nothing and holding no model.
        empty = sum(1 for w in snapshot.workers
                    if w.busy == 0 and not w.draining and not w.loaded_models and w.id not in given)
        passes.append((snapshot.now, empty))
        return decisions

    shuffle = worker_order or None
    runs = {}
    for name, policy in (("farm", recording), ("fifo", place_fifo)):
        simulation = Simulation(workers, trace, policy, policy_name=name, worker_order_seed=shuffle)
        simulation.run()
        runs[name] = {job.index: job for job in simulation.jobs}
    rows = []
    for index, job in sorted(runs["farm"].items()):
        if job.spec.user != user or not since <= job.spec.t < until or job.render_start is None:
            continue
        fifo = runs["fifo"][index]
        empty = [count for now, count in passes if job.spec.t <= now < job.render_start]
        rows.append({"t": job.spec.t, "model": job.spec.model, "wait_s": {
            "farm": round(job.render_start - job.spec.t, 3),
            "fifo": None if fifo.render_start is None else round(fifo.render_start - fifo.spec.t, 3)},
            "empty_idle_gpus_max": max(empty, default=0)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", required=True, help="trace name (file stem), e.g. mixed")
    parser.add_argument("--trace-seed", type=int, default=0, help="make_traces seed (0: the shipped trace)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--since", type=float, default=0.0, help="first arrival second to show")
    parser.add_argument("--until", type=float, default=float("inf"), help="arrival second to stop before")
    parser.add_argument("--worker-order", type=int, default=0, help="worker order seed (0: the workers file's order)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        workers_path, traces = ROOT / "workers" / "mixed.json", ROOT / "traces"
        if args.trace_seed:
            write_workload(Path(scratch), seed=args.trace_seed)
            workers_path, traces = Path(scratch) / "workers" / "mixed.json", Path(scratch) / "traces"
        trace_path = traces / f"{args.trace}.jsonl"
        if not trace_path.exists():
            parser.error(f"--trace: no trace {args.trace!r} (one of: {', '.join(sorted(p.stem for p in traces.glob('*.jsonl')))})")
        trace = load_trace(trace_path)
        if args.user not in {job.user for job in trace}:
            parser.error(f"--user: {args.user!r} sends no job in the {args.trace} trace")
        rows = job_waits(load_workers(workers_path), trace, args.user, args.since, args.until, args.worker_order)
    print(json.dumps({"trace": args.trace, "trace_seed": args.trace_seed, "user": args.user, "jobs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
