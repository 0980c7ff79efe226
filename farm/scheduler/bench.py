"""Scheduler benchmarks: replay a workload on a virtual cluster, and time one decision.

    farm bench scheduler --workers bench/workers/mixed.json --trace bench/traces/mixed.jsonl --policy farm
    farm bench decision --workers 100 --models 20 --queued 10000 --repeat 200
    farm bench decision --trace bench/traces/at_once/jobs-10k.jsonl --workers-file bench/workers/at_once.json

Both print JSON. The baseline is ``place_fifo`` (farm/scheduler/fifo.py), run
the same way. Formats and metric definitions: docs/scheduler-bench.md.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from typing import Callable

import click
import numpy as np

from farm.families import get_family
from farm.scheduler.fifo import place_fifo
from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import Decisions, QueuedJob, Share, Snapshot, WorkerState
from farm.scheduler.simulator import TraceError, WorkerSpec, load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

POLICIES = ("farm", "fifo")

# The synthetic cluster behind `bench decision`: VRAM classes with their
# relative speed and disk -> GPU bandwidth, in the proportions a mixed fleet has.
GPU_CLASSES = [  # (vram_gb, speed, load_gbps, share of the fleet)
    (8.0, 0.5, 1.0, 0.10),
    (12.0, 0.7, 1.5, 0.10),
    (16.0, 0.9, 2.0, 0.20),
    (24.0, 1.0, 2.5, 0.30),
    (48.0, 1.6, 3.0, 0.15),
    (80.0, 2.5, 4.0, 0.15),
]
# Synthetic models' seconds per image at their native size, by family (a workload shape, not a measurement).
RENDER_S = {"sd": 1.0, "sdxl": 4.5, "flux": 14.0}
# family -> (GB, native side), as the families declare them.
MODEL_FAMILIES = {name: (get_family(name).default_vram_gb, get_family(name).native_side) for name in RENDER_S}
# Families of the synthetic models in popularity order, repeated: most models are SD or SDXL.
FAMILY_CYCLE = ("sd", "sdxl", "sd", "sdxl", "flux")
# A decision happens after a render finishes, so most of the fleet is busy.
BUSY_FRACTION = 0.9


def policy_function(name: str) -> Callable[[Snapshot], Decisions]:
    if name == "fifo":
        return place_fifo
    if name == "farm":
        # Imported here so that a run uses the policy as it is now, not as it
        # was when this module was first imported.
        from farm.scheduler.policy import place

        return place
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def run_bench(workers_path, trace_path, policy: str, seed: int | None = None, clairvoyant: bool = False,
              ram_cache_gb: float | None = None, h2d_gbps: float | None = None) -> dict:
    """Replay the trace on the workers with the named policy; the metrics.

    ``ram_cache_gb`` / ``h2d_gbps``, when given, set every worker's host
    tier and host-to-GPU rate, over what the workers file says.

    The seed shuffles the order in which workers appear in every snapshot
    (None keeps the file's order), to show whether a policy's results hang on
    that order. With ``clairvoyant`` the metrics also get the clairvoyant
    lower bound on loads at the run's worst wait (a solver run of seconds).
    """
    place = policy_function(policy)
    workers = with_host_tier(load_workers(workers_path), ram_cache_gb, h2d_gbps)
    trace = load_trace(trace_path)
    metrics = simulate(workers, trace, place, policy_name=policy, worker_order_seed=seed)
    metrics["seed"] = seed
    if clairvoyant:
        metrics.update(clairvoyant_metrics(workers, trace, metrics["wait_max_s"]))
    return metrics


def with_host_tier(workers: list[WorkerSpec], ram_cache_gb: float | None, h2d_gbps: float | None) -> list[WorkerSpec]:
    """The workers with their host tier and rate set, where given."""
    changes = {key: value for key, value in (("ram_cache_gb", ram_cache_gb), ("h2d_gbps", h2d_gbps)) if value is not None}
    return [dataclasses.replace(w, **changes) for w in workers] if changes else workers


def clairvoyant_metrics(workers, trace, max_wait_s: float) -> dict:
    """``lower_bound_loads_clairvoyant`` and how it was solved (docs/scheduler-bench.md)."""
    from farm.scheduler.clairvoyant import clairvoyant_lower_bound_loads  # scipy: only when asked for

    bound = clairvoyant_lower_bound_loads(workers, trace, max_wait_s)
    return {"lower_bound_loads_clairvoyant": bound.loads, "clairvoyant_optimal": bound.optimal,
            "clairvoyant_solve_s": round(bound.seconds, 2), "clairvoyant_bucket_s": bound.bucket_s}


def synthetic_snapshot(workers: int = 100, models: int = 20, queued: int = 10_000, seed: int = 0) -> Snapshot:
    """A busy farm: mixed GPUs holding a few models each, most of them rendering, a long queue."""
    rng = np.random.default_rng(seed)
    model_table = []
    for index in range(models):
        family = FAMILY_CYCLE[index % len(FAMILY_CYCLE)]
        gb, side = MODEL_FAMILIES[family]
        model_table.append((f"{family}-{index:02d}", family, gb, side))
    # Zipf-like popularity: the k-th model is asked for about 1/k as often.
    popularity = 1.0 / np.arange(1, models + 1) ** 1.1
    popularity /= popularity.sum()

    classes = rng.choice(len(GPU_CLASSES), size=workers, p=[c[3] for c in GPU_CLASSES])
    worker_states = []
    for index, cls in enumerate(classes):
        vram, speed, load_gbps, _ = GPU_CLASSES[cls]
        # The big GPUs serve every synthetic family; the others leave FLUX out.
        families = frozenset(RENDER_S if vram >= 48 else ("sd", "sdxl"))
        held: dict[str, float] = {}
        for pick in rng.choice(models, size=models, replace=False, p=popularity):
            model_id, family, gb, side = model_table[pick]
            if family in families and sum(held.values()) + gb + 2.0 <= vram and len(held) < 4:
                held[model_id] = gb
        busy = int(rng.random() < BUSY_FRACTION)
        in_use = frozenset([next(iter(reversed(held)))]) if busy and held else frozenset()
        worker_states.append(WorkerState(
            id=f"gpu-{index:03d}", families=families, max_pixels=2048 * 2048, vram_total_gb=vram,
            vram_free_gb=vram - sum(held.values()), loaded_models=held, serves_models=None, busy=busy,
            speed=speed, load_gbps=load_gbps, in_use=in_use))

    users = 50
    # One heavy user submits a third of the queue (a campaign); the rest are light.
    user_p = np.full(users, (2 / 3) / (users - 1))
    user_p[0] = 1 / 3
    job_models = rng.choice(models, size=queued, p=popularity)
    job_users = rng.choice(users, size=queued, p=user_p) + 1
    arrivals = np.sort(rng.uniform(0.0, 600.0, size=queued))
    jobs = []
    for index in range(queued):
        model_id, family, gb, side = model_table[job_models[index]]
        scale = rng.choice([1.0, 1.0, 1.0, 1.25, 1.5])
        width = int(side * scale) // 64 * 64
        jobs.append(QueuedJob(
            id=index + 1, attempt=1, user_id=int(job_users[index]), model_id=model_id, family=family, model_gb=gb,
            width=width, height=side, priority=int(rng.random() < 0.02), queued_at=float(arrivals[index]),
            est_seconds=float(RENDER_S[family] * scale)))
    shares = {u: Share(weight=1.0, usage_s=float(rng.exponential(300.0)), running=int(rng.integers(0, 3)))
              for u in range(1, users + 1)}
    return Snapshot(jobs=jobs, workers=worker_states, now=600.0, shares=shares)


def time_decisions(place: Callable[[Snapshot], Decisions], snapshot: Snapshot, repeat: int) -> dict:
    """Milliseconds per call of place(snapshot): p50, p99, mean, and what the call decided."""
    decisions = place(snapshot)  # warm-up: imports, caches
    gc.collect()
    times, cpu_times = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.thread_time()
        place(snapshot)
        times.append((time.perf_counter() - started) * 1000.0)
        cpu_times.append((time.thread_time() - started_cpu) * 1000.0)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4),
            "mean_ms": round(float(np.mean(times)), 4),
            # CPU time of the thread: on a shared machine, without the waits for a core.
            "cpu_p50_ms": round(float(np.percentile(cpu_times, 50)), 4),
            "cpu_p99_ms": round(float(np.percentile(cpu_times, 99)), 4), "assignments": len(decisions.assignments),
            "preloads": len(decisions.preloads), "unplaceable": len(decisions.unplaceable)}


def run_decision_bench(workers: int = 100, models: int = 20, queued: int = 10_000, repeat: int = 200,
                       seed: int | None = None) -> dict:
    listed = synthetic_snapshot(workers, models, queued, seed=0 if seed is None else seed)
    # Each policy gets the queue in the form it is fastest on. The farm
    # policy: a JobQueue kept between passes, as the live scheduler hands it
    # over (farm/scheduler/livequeue.py), not a list it would index anew on
    # every call (bench/scheduler_scale.py times that form apart). fifo only
    # walks the queue in order, which a list does fastest.
    forms = {"farm": dataclasses.replace(listed, jobs=JobQueue(listed.jobs)), "fifo": listed}
    free = sum(1 for w in listed.workers if w.busy < w.capacity)
    result = {"workers": workers, "models": models, "queued": queued, "repeat": repeat, "seed": seed,
              "free_workers": free, "queue": {"farm": "kept JobQueue", "fifo": "list"}}
    for name in POLICIES:
        result[name] = time_decisions(policy_function(name), forms[name], repeat)
    return result


class _EnoughPasses(Exception):
    """Raised by the timing wrapper to end a replay after the passes asked for."""


def replay_decisions(workers, trace, policy: str, passes: int | None = None,
                     snapshot_limit: float | None = None) -> dict:
    """Replay ``trace`` on ``workers`` and time each placement pass as the live scheduler meets it.

    Every pass is timed (the policy call alone, as the simulator's
    ``decision_ms_*``); with ``passes`` the replay stops after that many, and
    only the timings are reported. ``snapshot_limit``: the most queued jobs a
    pass sees (None: as the live scheduler, all of them).
    """
    place = policy_function(policy)
    times: list[float] = []
    cpu_times: list[float] = []
    queued: list[int] = []

    def timed(snapshot: Snapshot) -> Decisions:
        if passes is not None and len(times) >= passes:
            raise _EnoughPasses
        queued.append(len(snapshot.jobs))
        started, started_cpu = time.perf_counter(), time.thread_time()
        decisions = place(snapshot)
        times.append((time.perf_counter() - started) * 1000.0)
        cpu_times.append((time.thread_time() - started_cpu) * 1000.0)
        return decisions

    result: dict = {"policy": policy}
    try:
        metrics = simulate(workers, trace, timed, policy_name=policy, snapshot_limit=snapshot_limit)
    except _EnoughPasses:
        result["stopped_after_passes"] = passes
    else:
        result.update({k: metrics[k] for k in ("rendered", "model_loads", "makespan_s", "makespan_lower_bound_s",
                                                "wait_p50_s", "wait_p95_s", "vram_overcommits",
                                                "invalid_assignments", "double_assignments")})
    result.update({"passes": len(times), "shown_jobs_max": max(queued, default=0),
                   "decision_ms_p50": round(float(np.percentile(times, 50)), 4) if times else 0.0,
                   "decision_ms_p99": round(float(np.percentile(times, 99)), 4) if times else 0.0,
                   "decision_ms_max": round(max(times, default=0.0), 4),
                   # CPU time of the thread: on a shared machine, without the waits for a core.
                   "decision_cpu_ms_p50": round(float(np.percentile(cpu_times, 50)), 4) if times else 0.0,
                   "decision_cpu_ms_p99": round(float(np.percentile(cpu_times, 99)), 4) if times else 0.0})
    return result


def run_replay_bench(workers_path, trace_path, passes: int | None = None,
                     snapshot_limit: float | None = None) -> dict:
    """``replay_decisions`` for farm and fifo on the same files."""
    workers = load_workers(workers_path)
    trace = load_trace(trace_path)
    result = {"workers": len(workers), "jobs": len(trace), "trace": str(trace_path), "passes_limit": passes}
    for name in POLICIES:
        result[name] = replay_decisions(workers, trace, name, passes, snapshot_limit)
    return result


@click.group("bench")
def bench() -> None:
    """Benchmarks that print JSON."""


@bench.command("scheduler")
@click.option("--workers", "workers_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON list of workers (see docs/scheduler-bench.md).")
@click.option("--trace", "trace_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON lines, one job per line.")
@click.option("--policy", type=click.Choice(POLICIES), default="farm", show_default=True,
              help="farm: farm.scheduler.policy.place; fifo: the baseline.")
@click.option("--seed", type=int, default=None, help="Shuffle the worker order in snapshots (default: file order).")
@click.option("--clairvoyant", is_flag=True,
              help="Also solve for the clairvoyant lower bound on loads at the run's worst wait (seconds to a minute).")
@click.option("--ram-cache-gb", type=click.FloatRange(min=0), default=None,
              help="Give every worker a host-memory tier of this many GB for evicted models (default: the workers file's ram_cache_gb, else 0).")
@click.option("--h2d-gbps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Every worker's host-to-GPU rate in GB/s, which prices loads from the tier (default: the workers file's h2d_gbps, else 12).")
def scheduler_command(workers_path: str, trace_path: str, policy: str, seed: int | None, clairvoyant: bool,
                      ram_cache_gb: float | None, h2d_gbps: float | None) -> None:
    """Replay a workload trace on a virtual cluster and print the metrics."""
    try:
        metrics = run_bench(workers_path, trace_path, policy, seed, clairvoyant, ram_cache_gb, h2d_gbps)
    except TraceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(metrics, indent=2))


@bench.command("decision")
@click.option("--workers", type=click.IntRange(min=1), default=100, show_default=True,
              help="Synthetic snapshot: this many workers.")
@click.option("--models", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--queued", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of the synthetic snapshot (default 0).")
@click.option("--trace", "trace_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replay this trace instead and time every pass as the live scheduler meets it "
                   "(e.g. bench/traces/at_once/jobs-10k.jsonl); needs --workers-file.")
@click.option("--workers-file", "workers_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The cluster of the replay (e.g. bench/workers/at_once.json).")
@click.option("--passes", type=click.IntRange(min=1), default=None,
              help="Replay: stop after this many passes (default: the whole trace).")
def decision_command(workers: int, models: int, queued: int, repeat: int, seed: int | None,
                     trace_path: str | None, workers_path: str | None, passes: int | None) -> None:
    """Time placement decisions, farm against fifo: on a synthetic busy farm, or on every pass of a trace replay."""
    if (trace_path is None) != (workers_path is None):
        raise click.UsageError("--trace and --workers-file go together (a replay needs both)")
    if trace_path is not None:
        try:
            result = run_replay_bench(workers_path, trace_path, passes)
        except TraceError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        result = run_decision_bench(workers, models, queued, repeat, seed)
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    bench()
