"""Celery's own tools and structured logs against a live farm: `celery -A
farm.workers.celery_app inspect` reaches every worker, Flower lists the
workers and the render task, and with FARM_LOG_FORMAT=json every line the
api, the scheduler and the workers write is JSON, the job's lines carrying
its fields.

One farm (Postgres, Redis, S3, api, scheduler, two workers) serves the module."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from farm.localcluster import free_port, wait_until
from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e

WORKERS = {"wa": ["tiny-a"], "wb": ["tiny-b"]}
CELERY = [sys.executable, "-m", "celery", "-A", "farm.workers.celery_app"]


@pytest.fixture(scope="module")
def farm(tmp_path_factory, s3, redis_url, tiny_models):
    with running_cluster(tmp_path_factory.mktemp("celery"), s3, redis_url, tiny_models, WORKERS,
                         celery_events=1, log_format="json") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def rendered(farm):
    """One job rendered on worker wa: (job id, its final view)."""
    client = Client(farm, farm.token)
    job_id = client.submit(prompt="a lighthouse", model="tiny-a", width=64, height=64, steps=3)
    job = client.wait_final(job_id)
    assert job["status"] == "succeeded", job
    return job_id, job


def _celery(farm, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CELERY, *args], env=env or farm.env, capture_output=True, text=True, timeout=120)


def _replies(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _ping(farm) -> dict:
    result = _celery(farm, "inspect", "ping", "--json", "--timeout", "3")
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else {}


@pytest.fixture(scope="module")
def reachable(farm):
    """The farm's workers are online (registered) a moment before Celery's
    consumer listens: wait until every worker answers a ping."""
    return wait_until(lambda: (replies := _ping(farm)) and len(replies) == len(WORKERS) and replies, 60,
                      interval=0.5, what="every worker to answer celery inspect ping")


def test_celery_inspect_ping_reaches_every_worker(farm, reachable):
    assert {name.partition("@")[0] for name in reachable} == set(WORKERS)
    assert all(reply == {"ok": "pong"} for reply in reachable.values())


def test_celery_inspect_stays_inside_its_redis_namespace(farm, reachable):
    other = {**farm.env, "FARM_REDIS_NAMESPACE": farm.env["FARM_REDIS_NAMESPACE"].replace("farm-test-", "other-")}
    result = _celery(farm, "inspect", "ping", "--timeout", "2", env=other)
    assert result.returncode != 0 and "No nodes replied" in result.stdout + result.stderr


def test_celery_inspect_active_and_stats_parse(farm, reachable):
    active = _replies(_celery(farm, "inspect", "active", "--json", "--timeout", "10"))
    assert {name.partition("@")[0] for name in active} == set(WORKERS)
    assert all(tasks == [] for tasks in active.values())  # idle
    stats = _replies(_celery(farm, "inspect", "stats", "--json", "--timeout", "10"))
    assert {name.partition("@")[0] for name in stats} == set(WORKERS)
    for worker in stats.values():
        # One render at a time per worker, one message prefetched.
        assert worker["pool"]["max-concurrency"] == 1 and worker["prefetch_count"] == 1


def test_flower_lists_both_workers_and_the_render_task(farm, rendered):
    job_id, _ = rendered
    port = free_port()
    log_path = farm.home / "flower.log"
    with open(log_path, "wb") as log:
        flower = subprocess.Popen([*CELERY, "flower", "--address=127.0.0.1", f"--port={port}"],
                                  env={**farm.env, "FLOWER_UNAUTHENTICATED_API": "true"}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def get(path: str):
            try:
                response = requests.get(base + path, timeout=10)
            except requests.RequestException:
                return None
            return response.json() if response.status_code == 200 else None

        # Online by heartbeats (events), known by remote control (inspect).
        alive = wait_until(lambda: (s := get("/api/workers?status=true")) and len(s) == 2 and all(s.values()) and s,
                           60, interval=0.5, what="Flower to see both workers online")
        assert {name.partition("@")[0] for name in alive} == set(WORKERS)
        workers = get("/api/workers?refresh=true")
        assert {name.partition("@")[0] for name in workers} == set(WORKERS)

        # Flower keeps tasks it saw events of: render one more now that it listens.
        client = Client(farm, farm.token)
        second = client.submit(prompt="a lighthouse at dusk", model="tiny-b", width=64, height=64, steps=3)
        assert client.wait_final(second)["status"] == "succeeded"

        def render_task():
            tasks = get("/api/tasks") or {}
            return next((t for t in tasks.values() if t.get("name") == "farm.render_job" and second in (t.get("args") or "")
                         and t.get("state") == "SUCCESS"), None)

        task = wait_until(render_task, 60, interval=0.5, what="Flower to list the render task")
        assert task["worker"].partition("@")[0] == "wb"

        _online_while_rendering(client, get)
    finally:
        flower.terminate()
        flower.wait(20)


def _online_while_rendering(client: Client, get) -> None:
    """A render blocks the worker's event loop (solo pool); its heartbeats
    come from a thread, so Flower keeps it online for the whole render."""
    slow = client.submit(prompt="slow", model="tiny-a", width=1024, height=1024, steps=150)

    def rendering():
        job = client.job(slow)
        return job if job["status"] == "running" and job["progress"]["step"] > 0 else None

    wait_until(rendering, 120, interval=0.2, what="the slow job to render")
    # Flower calls a worker offline two heartbeat intervals (4 s) after its
    # last heartbeat: watch over three times that while the render goes on.
    watched = 0
    while watched < 60:
        status = get("/api/workers?status=true") or {}
        [wa] = [alive for name, alive in status.items() if name.startswith("wa@")]
        job = client.job(slow)
        if job["status"] != "running":
            break
        assert wa, f"Flower called worker wa offline while it rendered (step {job['progress']['step']})"
        watched += 1
        time.sleep(0.25)
    assert watched >= 60, f"the slow job ended before the watch did: {job['status']}"
    response = client.session.post(f"{client.base}/api/v1/jobs/{slow}/cancel", timeout=10)
    assert response.status_code == 200


def _json_lines(process) -> list[dict]:
    lines = [line for line in process.log().splitlines() if line.strip()]
    assert lines, f"{process.name} wrote nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{process.name} wrote a line that is not JSON: {line!r}")
    return parsed


def test_json_logs_every_line_and_the_job_fields(farm, rendered):
    job_id, job = rendered
    processes = {process.name: process for process in farm.processes}
    worker_lines = _json_lines(processes["worker-wa"])
    scheduler_lines = _json_lines(processes["scheduler"])
    _json_lines(processes["worker-wb"])
    _json_lines(processes["api"])
    for line in worker_lines + scheduler_lines:
        assert {"time", "level", "logger", "message"} <= set(line), line

    def about_job(lines):
        return [line for line in lines if line.get("job_id") == job_id or job_id in line["message"]]

    worker_job = about_job(worker_lines)
    # The worker's lines about the job include Celery's own "succeeded" line.
    assert any(line["logger"] == "celery.app.trace" for line in worker_job), worker_job
    scheduler_job = about_job(scheduler_lines)
    assert any("sent job" in line["message"] for line in scheduler_job), scheduler_job
    for line in worker_job + scheduler_job:
        assert (line.get("job_id"), line.get("attempt"), line.get("worker")) == (job_id, job["attempt"], "wa"), line
