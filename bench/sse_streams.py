"""Many open event streams against one api process (issue 19).

Workload: one `farm api` process as deployed (uvicorn + a2wsgi, Postgres,
Redis), no scheduler and no worker, so every job stays queued and every
stream stays open for the whole run: the shape of a team leaving hundreds of
job and campaign pages open on a busy farm, the case where a thread per
stream would run out. While N streams (one per queued job, each read by an
asyncio client) are open, a separate client thread times ordinary requests
(GET /api/v1/jobs?limit=20 and /healthz), one after another; the baseline is
the same requests against the same process with no stream open, measured
first in the same run. The api process's thread count and RSS are read from
/proc before and with the streams.

    python bench/sse_streams.py --streams 500

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.localcluster import DEFAULT_REDIS_URL, free_port, temporary_postgres_database, wait_until  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50) * 1000, 2), "p95": round(percentile(values, 95) * 1000, 2),
            "max": round(max(values) * 1000, 2), "mean": round(statistics.fmean(values) * 1000, 2)}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def process_figures(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"threads": int(fields["Threads"]), "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


def time_requests(base: str, token: str, count: int, min_s: float = 0.0) -> dict[str, dict[str, float]]:
    """At least ``count`` requests of each kind, and on for ``min_s`` seconds."""
    figures: dict[str, list[float]] = {"jobs": [], "healthz": []}
    phase_started = time.monotonic()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while len(figures["jobs"]) < count or time.monotonic() - phase_started < min_s:
            for name, path in (("jobs", "/api/v1/jobs?limit=20"), ("healthz", "/healthz")):
                started = time.perf_counter()
                response = client.get(path)
                figures[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    return {name: summary_ms(values) for name, values in figures.items()}


def prepare(database_url: str, jobs: int) -> tuple[str, list[str]]:
    """A migrated database with a member, a model entry and ``jobs`` queued jobs."""
    from farm.auth import create_user
    from farm.context import build_context
    from farm.db import upgrade_database
    from farm.events import LocalEvents
    from farm.models import ModelEntry
    from farm.services import jobs as job_service
    from farm.settings import Settings

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="farm-sse-")), database_url=database_url)
    upgrade_database(settings.resolved_database_url)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        session.add(ModelEntry(id="m-sd", source="/nonexistent/m-sd", family="sd", vram_gb=2.0))
        user, token = create_user(session, "viewer", admin=True)
    ids = [str(job_service.submit_job(ctx, user, {"prompt": f"a fox {i}", "model": "m-sd", "width": 64, "height": 64,
                                                   "steps": 2}).id) for i in range(jobs)]
    ctx.db.dispose()
    return token, ids


async def open_streams(base: str, token: str, job_ids: list[str], ready: threading.Event, stop: asyncio.Event,
                       counts: dict) -> None:
    limits = httpx.Limits(max_connections=len(job_ids) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=httpx.Timeout(30, read=None)) as client:
        async def one(job_id: str) -> None:
            async with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                if response.status_code != 200:
                    counts["refused"] += 1
                    return
                first = True
                async for line in response.aiter_lines():
                    if first and line.startswith("event: status"):
                        first = False
                        counts["open"] += 1
                        if counts["open"] == len(job_ids):
                            ready.set()
                    elif line.startswith(": keep-alive"):
                        counts["heartbeats"] += 1
                    elif line.startswith("event: end"):
                        counts["ended"] += 1

        tasks = [asyncio.create_task(one(job_id)) for job_id in job_ids]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind per phase")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="each phase goes on at least this long (longer than the streams' 10 s database "
                             "safety-net reads and 5 s heartbeats, so both happen while it is timed)")
    parser.add_argument("--redis", default=os.environ.get("FARM_TEST_REDIS_URL", DEFAULT_REDIS_URL))
    args = parser.parse_args()

    with temporary_postgres_database() as database_url:
        say(f"preparing {args.streams} queued jobs")
        token, job_ids = prepare(database_url, args.streams)
        port = free_port()
        home = tempfile.mkdtemp(prefix="farm-sse-api-")
        env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
        env.update(FARM_HOME=home, FARM_DATABASE_URL=database_url, FARM_BROKER_URL=args.redis, FARM_LOG_LEVEL="WARNING",
                   FARM_SSE_HEARTBEAT_S="5", FARM_SSE_MAX_S="3600")
        api = subprocess.Popen([sys.executable, "-m", "farm", "api", "--port", str(port)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(base), 60, 0.2, "the api")
            say("api up; warming up")
            time_requests(base, token, 20)  # warm-up: connections, first queries
            idle = process_figures(api.pid)
            say("baseline: no streams")
            baseline = time_requests(base, token, args.requests, args.seconds)
            say(f"opening {args.streams} streams")

            counts = {"open": 0, "refused": 0, "heartbeats": 0, "ended": 0}
            ready = threading.Event()
            loop = asyncio.new_event_loop()
            stop = asyncio.Event()
            opened_at = time.perf_counter()
            client = threading.Thread(target=lambda: loop.run_until_complete(
                open_streams(base, token, job_ids, ready, stop, counts)), daemon=True)
            client.start()
            if not ready.wait(120):
                raise SystemExit(f"only {counts['open']} of {args.streams} streams opened ({counts['refused']} refused)")
            open_s = time.perf_counter() - opened_at
            say(f"all open in {open_s:.1f} s; timing requests")
            loaded = time_requests(base, token, args.requests, args.seconds)
            say("done; closing")
            streaming = process_figures(api.pid)
            still_open = counts["open"] - counts["ended"]
            loop.call_soon_threadsafe(stop.set)
            client.join(timeout=30)
        finally:
            api.terminate()
            api.wait(timeout=20)

    ratio = {name: round(loaded[name]["p50"] / baseline[name]["p50"], 2) for name in baseline}
    print(json.dumps({
        "workload": {"streams": args.streams, "jobs_queued": args.streams, "min_requests_per_kind": args.requests,
                     "seconds_per_phase": args.seconds,
                     "server": "farm api (uvicorn + a2wsgi, FARM_API_THREADS default)", "cpus": os.cpu_count()},
        "streams_open": counts["open"], "streams_still_open_at_end": still_open, "heartbeats_seen": counts["heartbeats"],
        "seconds_to_open_all": round(open_s, 2),
        "baseline_no_streams_ms": baseline, "with_streams_ms": loaded, "p50_ratio_with_over_without": ratio,
        "api_process": {"idle": idle, "with_streams": streaming},
    }, indent=2))


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
