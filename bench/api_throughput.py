"""API requests per second for POST /api/v1/jobs and GET /api/v1/jobs/{id}
with 1, 2 and 4 server processes (issue 21).

What runs: ``farm api --processes N`` for each N at once, on ports of their
own, against one PostgreSQL database (a throwaway one) and Redis (a namespace
of its own; the submissions' scheduler wake-ups go there); no scheduler and no
worker, so the jobs stay queued. One member user with no quota limits, one SD
model registered, 1,000 jobs submitted before the runs for the GETs to read.

Load: ``wrk`` (Debian package ``wrk``; a C load generator in its own
process, so the Python servers get most of the CPU) with ``--connections``
concurrent keep-alive clients on one thread, a warm-up run and then a
measured run of ``--duration`` seconds per (endpoint, process count). Each
request's latency is wrk's (its own clock, from the request's send).

- ``POST /api/v1/jobs``: a 512x512 SD request (validation, quota reservation,
  insert, commit, a Redis publish), each a new queued job;
- ``GET /api/v1/jobs/{id}``: one of the 1,000 jobs, in turn (token check, one
  visible-job read, the job's JSON);
- ``GET /healthz/live`` (the baseline): the same HTTP stack (uvicorn, the
  WSGI bridge, Flask, the request timing), no token, no database: the
  ceiling the server and load generator reach on this machine.

Ratios are against 1 process measured in the same run; the configurations
are interleaved (process counts in rotating order, round after round) so that
load from other processes on the machine falls on all of them alike, and the
figures are medians over rounds.

Requires ``wrk`` on PATH (``apt-get install wrk``).

    python bench/api_throughput.py [--processes 1,2,4] [--rounds 3] [--duration 10] [--connections 16]

Prints one JSON object; ``cpus`` is this machine's core count, shared by wrk,
the servers and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchenv import farm_env, stop_process  # noqa: E402
from cpu import CpuMeter  # noqa: E402
from farm.localcluster import DEFAULT_REDIS_URL, free_port, temporary_postgres_database, wait_until  # noqa: E402

REQUEST = {"prompt": "a lighthouse at dawn", "model": "sd15", "width": 512, "height": 512, "steps": 20}
ENDPOINTS = ("POST /api/v1/jobs", "GET /api/v1/jobs/{id}", "GET /healthz/live")

# wrk's Lua hooks: requests from a table, and a JSON summary at the end.
WRK_SCRIPT = """
local method, paths, body, token = %(method)s, %(paths)s, %(body)s, %(token)s
local counter = 0
request = function()
  counter = counter + 1
  local headers = {}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if body ~= "" then headers["Content-Type"] = "application/json" end
  return wrk.format(method, paths[(counter %% #paths) + 1], headers, body ~= "" and body or nil)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK-JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


def wrk_script(method: str, paths: list[str], body: str, token: str) -> str:
    return WRK_SCRIPT % {"method": lua_string(method), "paths": "{" + ", ".join(lua_string(p) for p in paths) + "}",
                         "body": lua_string(body), "token": lua_string(token)}


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    command = ["wrk", "--threads", "1", "--connections", str(connections), "--duration", f"{seconds}s",
               "--timeout", "10s", "--script", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next((line for line in output.splitlines() if line.startswith("WRK-JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    raw = json.loads(line.removeprefix("WRK-JSON "))
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {"requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "requests": raw["requests"], "errors": errors,
            "non_2xx": raw["status"]}


def supports_processes() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "farm", "api", "--help"], capture_output=True, text=True).stdout
    return "--processes" in help_text


@contextlib.contextmanager
def api_servers(env: dict[str, str], home: Path, counts: list[int]):
    """``farm api --processes N`` for each N on a port of its own; yields
    ({N: base URL}, {N: the server's process id})."""
    started: list[tuple[subprocess.Popen, object]] = []
    urls, pids = {}, {}
    try:
        for count in counts:
            port = free_port()
            log = open(home / f"api-{count}.log", "wb")
            command = [sys.executable, "-m", "farm", "api", "--host", "127.0.0.1", "--port", str(port)]
            if count != 1:
                command += ["--processes", str(count)]
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            started.append((process, log))
            urls[count] = f"http://127.0.0.1:{port}"
            pids[count] = process.pid
        for (process, _), (count, url) in zip(started, urls.items()):
            wait_until(lambda: _healthy(url) or process.poll() is not None, 120, what=f"farm api with {count} process(es)")
            if process.poll() is not None:
                raise RuntimeError(f"farm api --processes {count} exited:\n{(home / f'api-{count}.log').read_text()}")
        yield urls, pids
    finally:
        for process, log in started:
            stop_process(process)
            log.close()


def prime(url: str, processes: int, token: str, job_id: str) -> None:
    """Pay each server process's first-request costs (lazy imports, caches)
    before any timed run: a few requests of each kind on new connections,
    which the processes share among themselves."""
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(8 * processes):
        with requests.Session() as session:
            answer = session.post(f"{url}/api/v1/jobs", json=REQUEST, headers=headers, timeout=60)
            answer.raise_for_status()
            session.get(f"{url}/api/v1/jobs/{job_id}", headers=headers, timeout=60).raise_for_status()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def set_up_farm(settings, jobs: int) -> tuple[str, list[str]]:
    """The model, a member user and ``jobs`` queued jobs; (token, job ids)."""
    from farm.auth import create_user
    from farm.context import build_context
    from farm.events import LocalEvents
    from farm.models import ModelEntry
    from farm.services.jobs import submit_job

    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        session.add(ModelEntry(id="sd15", source="/models/sd15", family="sd", vram_gb=2.5))
        session.flush()
        user, token = create_user(session, "bench")
        session.expunge(user)
    ids = [str(submit_job(ctx, user, REQUEST).id) for _ in range(jobs)]
    ctx.db.dispose()
    return token, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated server process counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of the warm-up run before each measured run (0: none)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the GETs read")
    parser.add_argument("--redis", default=os.environ.get("FARM_TEST_REDIS_URL", DEFAULT_REDIS_URL))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: this benchmark needs wrk on PATH (Debian/Ubuntu: apt-get install wrk)")

    counts = [int(n) for n in args.processes.split(",")]
    skipped = []
    if not supports_processes():
        skipped = [n for n in counts if n != 1]
        counts = [1]
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, temporary_postgres_database() as database_url:
        home = Path(tmp)
        env, settings = farm_env(home, database_url, args.redis)
        token, ids = set_up_farm(settings, args.jobs)
        scripts = {
            "POST /api/v1/jobs": wrk_script("POST", ["/api/v1/jobs"], json.dumps(REQUEST), token),
            "GET /api/v1/jobs/{id}": wrk_script("GET", [f"/api/v1/jobs/{job_id}" for job_id in ids], "", token),
            "GET /healthz/live": wrk_script("GET", ["/healthz/live"], "", ""),
        }
        paths = {}
        for endpoint, text in scripts.items():
            paths[endpoint] = home / f"endpoint-{len(paths)}.lua"
            paths[endpoint].write_text(text)
        runs: dict[tuple[str, int], list[dict]] = {}
        with api_servers(env, home, counts) as (urls, pids):
            meters = {count: CpuMeter({"api (all processes)": pid}, trees=("api (all processes)",), waited_children="wrk") for count, pid in pids.items()}
            for count, url in urls.items():
                prime(url, count, token, ids[0])
            for round_no in range(args.rounds):
                # Rotate the order of the process counts from round to round.
                order = counts[round_no % len(counts):] + counts[:round_no % len(counts)]
                for endpoint in ENDPOINTS:
                    for count in order:
                        if args.warmup:
                            run_wrk(urls[count], paths[endpoint], args.warmup, args.connections)
                        before = meters[count].read()
                        result = run_wrk(urls[count], paths[endpoint], args.duration, args.connections)
                        result["cores"] = CpuMeter.cores(before, meters[count].read())
                        runs.setdefault((endpoint, count), []).append(result)
                        print(f"round {round_no + 1}: {endpoint} x{count}: {result['requests_per_s']:.0f} req/s, "
                              f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, errors {result['errors']}",
                              file=sys.stderr)

    def median(endpoint: str, count: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[(endpoint, count)])

    figures = {}
    for endpoint in ENDPOINTS:
        figures[endpoint] = {}
        for count in counts:
            rate = median(endpoint, count, "requests_per_s")
            figures[endpoint][f"{count} process{'es' if count > 1 else ''}"] = {
                "requests_per_s": round(rate, 1),
                "over_1_process": round(rate / median(endpoint, 1, "requests_per_s"), 2) if median(endpoint, 1, "requests_per_s") else None,
                "p50_ms": round(median(endpoint, count, "p50_ms"), 2),
                "p99_ms": round(median(endpoint, count, "p99_ms"), 2),
                "errors": sum(r["errors"] for r in runs[(endpoint, count)]),
                "requests": sum(r["requests"] for r in runs[(endpoint, count)]),
                "cores_used_median": {name: statistics.median(r["cores"][name] for r in runs[(endpoint, count)])
                                      for name in runs[(endpoint, count)][0]["cores"]},
            }
    print(json.dumps({
        "benchmark": "api_requests_per_second",
        "cpus": os.cpu_count(),
        "load_generator": f"wrk, 1 thread, {args.connections} keep-alive connections, on the same machine",
        "database": "postgresql",
        "rounds": args.rounds,
        "seconds_per_run": args.duration,
        "warmup_s_per_run": args.warmup,
        "not_measured": {"process counts": skipped, "why": "this farm api has no --processes option"} if skipped else None,
        "endpoints": figures,
    }, indent=2))


if __name__ == "__main__":
    main()
