"""Queue forecasts against reality (issue 23): predicted start at submission vs the actual start, in a replay.

    cd bench && PYTHONPATH=.. ../.venv/bin/python scheduler_forecast.py [--trace-seeds 1,2,3]

Replays each shipped trace on bench/workers/mixed.json with the placement
policy. At every decision the forecast the live scheduler would write
(farm/scheduler/forecast.py) is computed from the same snapshot, and each job
keeps the predicted start it had in the first snapshot that showed it (its
submission). After the replay that is compared with the job's actual start
(render start, after a model load). Three forecasts in the same run: the
shipped one ("affinity": the queue played onto the render slots, each job
waiting for a holder of its model or paying a load as the policy would)
and two baselines ("drain": the same play, each job on the first free
slot, loads free; "class": work ahead in the job's eligibility class over
the class's speed). Prints JSON: median and p90 absolute error, seconds,
over all jobs and over light users' (fewer than LIGHT_JOBS in the trace,
as bench/scheduler_sweep.py counts them), the median actual wait for
scale, and what one forecast costs on a synthetic snapshot of 100 workers
and 5,000 queued jobs (the live snapshot's limit). --trace-seeds also
replays the same four workloads as bench/make_traces.py draws them with each
seed (rows "name@seed"), as bench/scheduler_sweep.py does. --deadline-scale F
brings every deadline F times as close (a campaign's from its first
arrival), so that some campaigns miss and the at-risk flag has misses to
warn of.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from make_traces import LIGHT_JOBS, write_workload
from scheduler_targets import seed_list

from farm.scheduler.bench import synthetic_snapshot
from farm.scheduler.forecast import forecast
from farm.scheduler.policy import place
from farm.scheduler.simulator import Simulation, load_trace, load_workers

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
TRACES = ("mixed", "bursty", "heavy_user", "deadlines")
METHODS = ("affinity", "drain", "class")


def tightened(trace: list, scale: float) -> list:
    """The trace with every deadline ``scale`` times as far away: a campaign's shared due time
    from its first arrival, a lone job's from its own."""
    first: dict[str, float] = {}
    for job in trace:
        if job.campaign is not None and job.deadline_s is not None:
            first[job.campaign] = min(first.get(job.campaign, job.t), job.t)
    out = []
    for job in trace:
        if job.deadline_s is not None:
            start = first.get(job.campaign, job.t) if job.campaign is not None else job.t
            due = start + scale * (job.due - start)
            job = dataclasses.replace(job, deadline_s=max(due - job.t, 1.0))
        out.append(job)
    return out


def replay(workers_path: Path, trace_path: Path, deadline_scale: float = 1.0) -> dict:
    predicted: dict[str, dict] = {method: {} for method in METHODS}
    flagged: dict[str, dict] = {method: {} for method in METHODS}  # campaign -> when first predicted late

    def policy(snapshot):
        decisions = place(snapshot)
        placed = {a.job_id: a.worker_id for a in decisions.assignments}
        due: dict = {}
        for job in snapshot.jobs:
            if job.campaign_id is not None and job.deadline is not None:
                due[job.campaign_id] = min(due.get(job.campaign_id, job.deadline), job.deadline)
        for name in METHODS:
            seen = predicted[name]
            result = forecast(snapshot, placed, method=name)
            for model in result.models.values():
                for job_id, start in zip(model.job_ids, model.starts_s):
                    if job_id not in seen and start is not None:
                        seen[job_id] = snapshot.now + start
            for job_id in placed:
                seen.setdefault(job_id, snapshot.now)
            for campaign_id, finish_s in result.campaign_finish_s.items():
                if campaign_id in due and snapshot.now + finish_s > due[campaign_id]:
                    flagged[name].setdefault(campaign_id, snapshot.now)
        return decisions

    trace = load_trace(trace_path)
    if deadline_scale != 1.0:
        trace = tightened(trace, deadline_scale)
    simulation = Simulation(load_workers(workers_path), trace, policy, policy_name="farm")
    simulation.run()
    result = {}
    waits = [job.render_start - job.spec.t for job in simulation.jobs if job.render_start is not None]
    jobs_of = Counter(job.user_id for job in simulation.jobs)
    for name, seen in predicted.items():
        errors = {job.queued.id: abs(seen[job.queued.id] - job.render_start) for job in simulation.jobs
                  if job.render_start is not None and job.queued.id in seen}
        light = [errors[job.queued.id] for job in simulation.jobs
                 if job.queued.id in errors and jobs_of[job.user_id] < LIGHT_JOBS]
        result[name] = {"jobs": len(errors), **_quantiles("abs_error", list(errors.values())),
                        "light_jobs": len(light), **_quantiles("light_abs_error", light)}
    result["actual_wait_p50_s"] = round(float(np.median(waits)), 2)
    result["at_risk"] = at_risk_flags(simulation, flagged)
    return result


def at_risk_flags(simulation: Simulation, flagged: dict[str, dict]) -> dict:
    """How the at-risk flag (a campaign's predicted finish past its deadline) matched what happened.

    A campaign missed its deadline when any of its jobs finished after the
    earliest deadline its jobs carry. Per method: flags on campaigns that
    then missed, flags on campaigns that met it (false alarms), misses never
    flagged, and for the flagged misses the median warning (deadline less
    the first flag), seconds.
    """
    due: dict = {}
    end: dict = {}
    for job in simulation.jobs:
        if job.queued.campaign_id is not None and job.queued.deadline is not None:
            cid = job.queued.campaign_id
            due[cid] = min(due.get(cid, job.queued.deadline), job.queued.deadline)
            end[cid] = max(end.get(cid, 0.0), job.finished if job.finished is not None else float("inf"))
    missed = {cid for cid in due if end[cid] > due[cid] + 1e-6}
    out = {"campaigns": len(due), "missed": len(missed)}
    for name, first in flagged.items():
        if name == "class":
            continue  # it predicts no finish
        warnings = [due[cid] - first[cid] for cid in missed if cid in first]
        out[name] = {"flagged_missed": sum(cid in first for cid in missed),
                     "false_alarms": sum(cid in first for cid in due if cid not in missed),
                     "missed_unflagged": sum(cid not in first for cid in missed),
                     "warning_p50_s": round(float(np.median(warnings)), 1) if warnings else None}
    return out


def _quantiles(prefix: str, errors: list[float]) -> dict:
    if not errors:
        return {f"{prefix}_p50_s": None, f"{prefix}_p90_s": None}
    return {f"{prefix}_p50_s": round(float(np.median(errors)), 2),
            f"{prefix}_p90_s": round(float(np.percentile(errors, 90)), 2)}


def forecast_cost_ms(repeat: int = 5) -> dict:
    """Milliseconds per forecast (median of ``repeat``) on `farm bench decision`'s synthetic snapshot, 5,000 queued."""
    snapshot = synthetic_snapshot(workers=100, models=20, queued=5000)
    result = {}
    for method in METHODS:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            forecast(snapshot, method=method)
            times.append((time.perf_counter() - started) * 1000.0)
        result[method] = round(float(np.median(times)), 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-seeds", default="", help="make_traces seeds of fresh workloads to replay too")
    parser.add_argument("--deadline-scale", type=float, default=1.0,
                        help="bring every deadline this many times as close (0 < F <= 1; 1: as the trace says)")
    parser.add_argument("--traces", default=",".join(TRACES), help="trace names (file stems) to replay")
    args = parser.parse_args(argv)
    if not 0.0 < args.deadline_scale <= 1.0:
        parser.error("--deadline-scale must be above 0 and at most 1")
    names = [name for name in args.traces.split(",") if name]
    logging.basicConfig(level=logging.WARNING)
    results = {name: replay(ROOT / "workers" / "mixed.json", ROOT / "traces" / f"{name}.jsonl", args.deadline_scale)
               for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seed_list(args.trace_seeds):
            out = Path(scratch) / str(seed)
            write_workload(out, seed=seed)
            results.update({f"{name}@{seed}": replay(out / "workers" / "mixed.json", out / "traces" / f"{name}.jsonl",
                                                     args.deadline_scale)
                            for name in names})
    results["forecast_ms_100_workers_5000_queued"] = forecast_cost_ms()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
