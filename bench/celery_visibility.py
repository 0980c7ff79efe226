"""What making workers visible to Celery's tools costs a render (issue 21).

Runs a real distributed farm on this machine (api, scheduler, three workers
as separate processes; Postgres, Redis and an S3 server on loopback) with one
tiny random-weight SD model registered three times, one id per worker, so
each job goes to the worker of its mode:

- ``hidden`` (the baseline): remote control, heartbeats and task events off,
  as workers ran before issue 21 (started with
  ``farm.workers.celery_app.remote_control_enabled`` patched to say no);
- ``visible``: the default now: remote control on (the pidbox channel) and a
  heartbeat event every 2 s from ThreadedHeart's thread;
- ``events``: ``visible`` plus ``FARM_CELERY_EVENTS=1`` (task received,
  started, succeeded events from the worker).

The three run side by side and the jobs are interleaved mode by mode, so the
load of a shared machine falls on all three alike. The scheduler sends
task-sent events for all (``FARM_CELERY_EVENTS=1``), so it is the same for
every mode. Two workload shapes: ``--jobs`` rounds of one job per mode, one
job in flight at a time (POST to succeeded: the latency a user waits on a
small render; plus, from the job row, Celery delivery = assigned → started
and the worker's part = started → finished), and ``--bursts`` bursts of
``--burst`` jobs per mode submitted at once (each worker drains its own:
images per second, a campaign's shape, where per-task overhead adds up). All
workers keep the solo pool and prefetch 1.

    python bench/celery_visibility.py --jobs 40 --bursts 3 --burst 20

Prints one JSON object: per mode the medians, and each mode's ratio to
``hidden`` (times: > 1 is slower; throughput: < 1 is slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm import localcluster  # noqa: E402

MODES = ("hidden", "visible", "events")
# The baseline worker: today's code with remote control (and so heartbeats and events) refused.
HIDDEN_WORKER = ("import sys, farm.workers.celery_app as c; c.remote_control_enabled = lambda settings: False; "
                 "from farm.cli import main; main(sys.argv[1:])")


@contextlib.contextmanager
def three_worker_farm(redis_url: str):
    """The farm, one worker per mode serving model ``tiny-<mode>``; yields (cluster, token)."""
    from farm.workers.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, localcluster.temporary_postgres_database() as database_url, localcluster.s3_endpoint() as s3:
        home = Path(tmp)
        model_dir = write_tiny_model(home / "tiny", family="sd", seed=0)
        env = localcluster.cluster_env(home, database_url, redis_url, s3, f"farm-bench-{uuid.uuid4().hex[:8]}", celery_events=1)
        cluster = localcluster.LocalCluster(home=home, env=env, api_port=localcluster.free_port())
        try:
            cluster.farm("db", "upgrade")
            token = cluster.farm("users", "create", "bench", "--admin").stdout.strip().splitlines()[-1]
            for mode in MODES:
                cluster.farm("models", "add", f"tiny-{mode}", str(model_dir))
            cluster.start_api()
            cluster.start("scheduler", "scheduler")
            workers = [start_worker(cluster, mode) for mode in MODES]
            for mode, worker in zip(MODES, workers):
                localcluster.wait_until(lambda: localcluster.worker_is_online(cluster.api_url, token, mode) or not worker.alive(), 180, what=f"worker {mode}")
                if not worker.alive():
                    raise RuntimeError(f"worker {mode} exited:\n{worker.log()}")
            yield cluster, token
        finally:
            cluster.stop_all()


def start_worker(cluster: localcluster.LocalCluster, mode: str) -> localcluster.FarmProcess:
    import subprocess

    args = ["worker", "--name", mode, "--vram-gb", "4", "--models", f"tiny-{mode}", "--preload", f"tiny-{mode}"]
    env = {**cluster.env, "FARM_CELERY_EVENTS": "1" if mode == "events" else "0"}
    log_path = cluster.home / f"worker-{mode}.log"
    command = [sys.executable, "-c", HIDDEN_WORKER, *args] if mode == "hidden" else [sys.executable, "-m", "farm", *args]
    worker = localcluster.FarmProcess(f"worker-{mode}", subprocess.Popen(command, env=env, stdout=open(log_path, "wb"),
                                                            stderr=subprocess.STDOUT), log_path)
    cluster.processes.append(worker)
    return worker


def _ts(value: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(value).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40, help="sequential rounds (one job per mode each)")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20, help="jobs per mode in one burst")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C in a wrapper) unwinds through the clean-up
    # below instead of leaving the farm's processes behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    with three_worker_farm(args.redis) as (cluster, token):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        jobs_url = f"{cluster.api_url}/api/v1/jobs"

        def submit(mode: str) -> str:
            body = {"prompt": "a lighthouse at dawn", "model": f"tiny-{mode}", "width": args.size, "height": args.size,
                    "steps": args.steps, "seed": 42, "sampler": "euler"}
            return session.post(jobs_url, json=body, timeout=30).json()["id"]

        def final(job_id: str) -> dict:
            while True:
                job = session.get(f"{jobs_url}/{job_id}", params={"wait": 30}, timeout=60).json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"job failed: {job}")
                    return job

        samples = {mode: {"latency": [], "deliver": [], "worker": [], "burst_images_per_s": []} for mode in MODES}
        for round_ in range(args.warmup + args.jobs):
            # Rotate which mode goes first in each round.
            order = MODES[round_ % 3:] + MODES[:round_ % 3]
            for mode in order:
                started = time.perf_counter()
                job = final(submit(mode))
                if round_ < args.warmup:
                    continue
                samples[mode]["latency"].append(time.perf_counter() - started)
                samples[mode]["deliver"].append(_ts(job["started_at"]) - _ts(job["assigned_at"]))
                samples[mode]["worker"].append(_ts(job["finished_at"]) - _ts(job["started_at"]))
        for _ in range(args.bursts):
            started = time.perf_counter()
            ids = {mode: [] for mode in MODES}
            for _ in range(args.burst):
                for mode in MODES:
                    ids[mode].append(submit(mode))
            done: dict[str, float] = {}
            pending = {job_id: mode for mode, mode_ids in ids.items() for job_id in mode_ids}
            while pending:
                job_id, mode = next(iter(pending.items()))
                final(job_id)
                del pending[job_id]
                if mode not in pending.values():
                    # This mode's last job: its finish time from the rows, not from when this loop saw it.
                    finished = max(_ts(final(j)["finished_at"]) for j in ids[mode])
                    done[mode] = finished
            first_created = min(_ts(final(j)["created_at"]) for mode_ids in ids.values() for j in mode_ids)
            for mode in MODES:
                samples[mode]["burst_images_per_s"].append(args.burst / (done[mode] - first_created))

    def median(mode: str, key: str) -> float:
        return statistics.median(samples[mode][key])

    summary = {}
    for mode in MODES:
        summary[mode] = {
            "latency_p50_ms": round(median(mode, "latency") * 1000, 1),
            "celery_delivery_p50_ms": round(median(mode, "deliver") * 1000, 1),
            "worker_p50_ms": round(median(mode, "worker") * 1000, 1),
            "burst_images_per_s": round(median(mode, "burst_images_per_s"), 2),
        }
        if mode != "hidden":
            summary[mode]["ratio_to_hidden"] = {
                "latency": round(median(mode, "latency") / median("hidden", "latency"), 3),
                "celery_delivery": round(median(mode, "deliver") / median("hidden", "deliver"), 3),
                "worker": round(median(mode, "worker") / median("hidden", "worker"), 3),
                "burst_images_per_s": round(median(mode, "burst_images_per_s") / median("hidden", "burst_images_per_s"), 3),
            }
    print(json.dumps({
        "benchmark": "celery_visibility",
        "shape": {"workers": "3 side by side, one per mode", "pool": "solo", "prefetch": 1, "sequential_rounds": args.jobs,
                  "bursts": args.bursts, "burst_jobs_per_mode": args.burst, "size": f"{args.size}x{args.size}", "steps": args.steps},
        "modes": summary,
    }, indent=2))


if __name__ == "__main__":
    main()
