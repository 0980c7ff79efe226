"""What the OpenAI Images adapter costs over farm's native API (issue 20).

Runs one real distributed farm on this machine (api, scheduler, one worker as
separate processes; Postgres, Redis and an S3 server on loopback; a tiny
random-weight SD model preloaded, 64x64, 4 steps) and times, interleaved
pair by pair with the order alternating, the same one-image render asked for
two ways, from the first byte sent until the client holds the image bytes:

- adapter: ``POST /v1/images/generations`` with ``response_format=b64_json``
  (one request: the api waits for the job and answers with the image inline);
- native: ``POST /api/v1/jobs``, ``GET /api/v1/jobs/{id}?wait=30`` until the
  job is final, then ``GET`` the output's image (a redirect to a presigned
  store URL, followed): the equivalent work for a native client.

Workload shape: one client, sequential requests, an otherwise idle farm with
the model already loaded: what an interactive OpenAI-SDK user sees per image.
The target: adapter p50 within 5 ms of native p50.

    python bench/adapter_overhead.py --pairs 30

Prints one JSON object; ``phases_p50_ms`` split each path at the job row's
created_at and finished_at (one clock: every process is on this machine), and
``outside_job_ms`` is each request's time less its job's run (created_at to
finished_at): the part the two paths do differently, without the render's
spread, which on a shared machine is far larger than 5 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import _ts, percentile, summary_ms, tiny_farm  # noqa: E402

PROMPT = "a lighthouse at dawn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    # The model's default steps are what an OpenAI request (which has no steps) renders with.
    with tiny_farm(args.redis, "--steps", str(args.steps)) as (cluster, token, _):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        store = requests.Session()  # presigned URLs carry their own signature, never farm's token
        base = cluster.api_url
        size = f"{args.size}x{args.size}"

        def adapter() -> tuple[float, dict, float]:
            sent = time.time()
            started = time.perf_counter()
            answer = session.post(f"{base}/v1/images/generations", timeout=120, json={
                "prompt": PROMPT, "model": "tiny", "size": size, "response_format": "b64_json"})
            image = base64.b64decode(answer.json()["data"][0]["b64_json"])
            elapsed = time.perf_counter() - started
            if answer.status_code != 200 or not image:
                raise RuntimeError(f"adapter: {answer.status_code} {answer.text[:300]}")
            # The job this request made: the newest of this user's.
            job = session.get(f"{base}/api/v1/jobs", params={"limit": 1}, timeout=30).json()["jobs"][0]
            return elapsed, job, sent

        def native() -> tuple[float, dict, float]:
            sent = time.time()
            started = time.perf_counter()
            job_id = session.post(f"{base}/api/v1/jobs", timeout=30, json={
                "prompt": PROMPT, "model": "tiny", "width": args.size, "height": args.size}).json()["id"]
            while True:
                job = session.get(f"{base}/api/v1/jobs/{job_id}", params={"wait": 30}, timeout=60).json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
            redirect = session.get(base + job["outputs"][0]["url"], allow_redirects=False, timeout=30)
            image = store.get(redirect.headers["Location"], timeout=30).content if redirect.status_code == 302 else redirect.content
            elapsed = time.perf_counter() - started
            if job["status"] != "succeeded" or not image:
                raise RuntimeError(f"native: {job['status']} {job.get('error')}")
            return elapsed, job, sent

        for _ in range(args.warmup):
            adapter()
            native()

        times: dict[str, list[float]] = {"adapter": [], "native": []}
        outside = {name: [] for name in times}  # elapsed less the job's own run: what each path adds
        phases: dict[str, dict[str, list[float]]] = {name: {"before_insert": [], "job": [], "after_finish": []}
                                                    for name in times}
        for i in range(args.pairs):
            order = (("adapter", adapter), ("native", native)) if i % 2 == 0 else (("native", native), ("adapter", adapter))
            for name, run in order:
                elapsed, job, sent = run()
                times[name].append(elapsed)
                created, finished = _ts(job["created_at"]), _ts(job["finished_at"])
                phases[name]["before_insert"].append(created - sent)
                phases[name]["job"].append(finished - created)
                phases[name]["after_finish"].append(max(sent + elapsed - finished, 0.0))
                outside[name].append(elapsed - (finished - created))
        paired = [a - n for a, n in zip(times["adapter"], times["native"])]
        difference = (percentile(times["adapter"], 50) - percentile(times["native"], 50)) * 1000
        result = {
            "benchmark": "openai_adapter_overhead",
            "pairs": args.pairs,
            "size": size,
            "steps": args.steps,
            "adapter_ms": summary_ms(times["adapter"]),
            "native_ms": summary_ms(times["native"]),
            "p50_difference_ms": round(difference, 2),
            "paired_difference_ms": summary_ms(paired),
            # The render and the scheduler's hand-offs are the same work on both paths, and on a
            # shared machine their spread swamps a few ms: compare what each path adds around them.
            "outside_job_ms": {name: summary_ms(values) for name, values in outside.items()},
            "outside_job_p50_difference_ms": round((percentile(outside["adapter"], 50) - percentile(outside["native"], 50)) * 1000, 2),
            "phases_p50_ms": {
                name: {
                    "send_until_job_row (HTTP, auth, checks, quota, insert)": round(percentile(p["before_insert"], 50) * 1000, 2),
                    "job_row_until_finished (schedule, deliver, render, store)": round(percentile(p["job"], 50) * 1000, 2),
                    "finished_until_client_has_image": round(percentile(p["after_finish"], 50) * 1000, 2),
                }
                for name, p in phases.items()
            },
            "target": {"p50_difference_ms": 5},
            "within_target": difference <= 5,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
