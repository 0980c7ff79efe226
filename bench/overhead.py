"""Farm overhead per image.

Runs a real distributed farm on this machine (api, scheduler, one worker as
separate processes; Postgres, Redis, and an S3 server on loopback) and times
sequential jobs from POST /api/v1/jobs until the job is succeeded with its
image in the store. The baseline, measured in the same run and interleaved
job by job, is the same pipeline call made directly in this process with the
same tiny model, size, steps and PNG encoding. Overhead = farm - baseline.

    python bench/overhead.py --jobs 50

Prints one JSON object. Phase medians (from the job rows and lineage) say
where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.localcluster import (  # noqa: E402
    LocalCluster,
    cluster_env,
    free_port,
    s3_endpoint,
    temporary_postgres_database,
    wait_until,
    worker_is_online,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50) * 1000, 2), "p95": round(percentile(values, 95) * 1000, 2),
            "mean": round(statistics.fmean(values) * 1000, 2)}


def direct_render(pipe, params) -> bytes:
    from farm import lineage
    from farm.workers.pipelines import RenderParams, encode_image, render

    images = render(pipe, RenderParams(**params))
    text = {"parameters": lineage.parameters_text({**params, "final_prompt": params["prompt"]}, "bench"), "farm": "{}"}
    return encode_image(images[0], "png", text)


@contextlib.contextmanager
def tiny_farm(redis_url: str, *model_options: str):
    """A distributed farm on this machine (api, scheduler and one worker named
    bench as processes; Postgres, Redis, an S3 server on loopback) with a tiny
    random-weight SD model "tiny" registered (``farm models add`` options
    ``model_options``) and preloaded; yields (cluster, admin token, model folder)."""
    from farm.workers.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, temporary_postgres_database() as database_url, s3_endpoint() as s3:
        home = Path(tmp)
        model_dir = write_tiny_model(home / "tiny", family="sd", seed=0)
        env = cluster_env(home, database_url, redis_url, s3, f"farm-bench-{uuid.uuid4().hex[:8]}")
        cluster = LocalCluster(home=home, env=env, api_port=free_port())
        try:
            cluster.farm("db", "upgrade")
            token = cluster.farm("users", "create", "bench", "--admin").stdout.strip().splitlines()[-1]
            cluster.farm("models", "add", "tiny", str(model_dir), *model_options)
            cluster.start_api()
            cluster.start("scheduler", "scheduler")
            cluster.start_worker("bench", "--vram-gb", "4", "--preload", "tiny")
            wait_until(lambda: worker_is_online(cluster.api_url, token, "bench"), 120, what="the worker")
            yield cluster, token, model_dir
        finally:
            cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    import torch

    from farm.workers.pipelines import load_pipeline, pick_device, pick_dtype

    request = {"prompt": "a lighthouse at dawn", "model": "tiny", "width": args.size, "height": args.size,
               "steps": args.steps, "seed": 42, "sampler": "euler", "guidance_scale": 7.0}
    params = dict(prompt=request["prompt"], negative_prompt="", width=args.size, height=args.size, steps=args.steps,
                  guidance_scale=7.0, sampler="euler", scheduler="normal", seed=42)

    with tiny_farm(args.redis) as (cluster, token, model_dir):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        jobs_url = f"{cluster.api_url}/api/v1/jobs"

        def farm_job() -> tuple[float, dict]:
            started = time.perf_counter()
            job = {"posted_at": time.time()}
            job_id = session.post(jobs_url, json=request, timeout=30).json()["id"]
            job["post_returned_at"] = time.time()
            while True:
                job.update(session.get(f"{jobs_url}/{job_id}", params={"wait": 30}, timeout=60).json())
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
            elapsed = time.perf_counter() - started
            job["client_done_at"] = time.time()
            if job["status"] != "succeeded":
                raise RuntimeError(f"job failed: {job}")
            return elapsed, job

        pipe = load_pipeline(model_dir, "sd", pick_device("cpu"), pick_dtype(pick_device("cpu")))
        for _ in range(args.warmup):
            farm_job()
            direct_render(pipe, params)

        farm_s, direct_s = [], []
        phases = {k: [] for k in ("schedule", "deliver", "worker", "return", "inference", "upload", "pre_insert",
                                  "post_response", "after_finish")}
        for _ in range(args.jobs):
            elapsed, job = farm_job()
            started = time.perf_counter()
            direct_render(pipe, params)
            direct_s.append(time.perf_counter() - started)
            farm_s.append(elapsed)
            lineage = session.get(cluster.api_url + job["outputs"][0]["lineage_url"], timeout=10).json()
            stamps = {k: _ts(job[k]) for k in ("created_at", "assigned_at", "started_at", "finished_at")}
            phases["schedule"].append(stamps["assigned_at"] - stamps["created_at"])
            phases["deliver"].append(stamps["started_at"] - stamps["assigned_at"])
            phases["worker"].append(stamps["finished_at"] - stamps["started_at"])
            phases["return"].append(max(elapsed - (stamps["finished_at"] - stamps["created_at"]), 0.0))
            phases["inference"].append(lineage["timings"]["inference_s"])
            phases["upload"].append(lineage["timings"]["upload_s"])
            phases["pre_insert"].append(stamps["created_at"] - job["posted_at"])
            phases["post_response"].append(job["post_returned_at"] - stamps["created_at"])
            phases["after_finish"].append(job["client_done_at"] - stamps["finished_at"])
        overhead = [f - d for f, d in zip(farm_s, direct_s)]
        worker_extra = [w - i for w, i in zip(phases["worker"], phases["inference"])]
        result = {
            "benchmark": "farm_overhead_per_image",
            "jobs": args.jobs,
            "size": f"{args.size}x{args.size}",
            "steps": args.steps,
            "torch_threads": torch.get_num_threads(),
            "farm_ms": summary_ms(farm_s),
            "direct_ms": summary_ms(direct_s),
            "overhead_ms": summary_ms(overhead),
            "overhead_p50_of_medians_ms": round((percentile(farm_s, 50) - percentile(direct_s, 50)) * 1000, 2),
            "phases_p50_ms": {
                "post_to_assigned (api insert + scheduler wake + placement)": round(percentile(phases["schedule"], 50) * 1000, 2),
                "assigned_to_started (celery delivery + fenced start)": round(percentile(phases["deliver"], 50) * 1000, 2),
                "started_to_finished (render + encode + upload + commit)": round(percentile(phases["worker"], 50) * 1000, 2),
                "of_which_inference": round(percentile(phases["inference"], 50) * 1000, 2),
                "of_which_upload_image_only": round(percentile(phases["upload"], 50) * 1000, 2),
                "worker_besides_inference": round(percentile(worker_extra, 50) * 1000, 2),
                "client_besides_farm_phases": round(percentile(phases["return"], 50) * 1000, 2),
                "of_which_post_until_insert": round(percentile(phases["pre_insert"], 50) * 1000, 2),
                "of_which_finished_to_client (worker publish + long-poll wake + response)": round(percentile(phases["after_finish"], 50) * 1000, 2),
                "post_response_after_insert (overlaps scheduling)": round(percentile(phases["post_response"], 50) * 1000, 2),
            },
            "targets": {"overhead_p50_ms": 15, "overhead_p95_ms": 40},
        }
        print(json.dumps(result, indent=2))


def _ts(value: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(value).timestamp()


if __name__ == "__main__":
    main()
