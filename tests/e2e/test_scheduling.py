"""End to end, the scheduler against real processes: three workers with
different VRAM budgets and model sets, two schedulers at once, and a worker
lost while Redis and the scheduler are down."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid

import pytest
import requests

from farm.localcluster import (
    LocalCluster,
    cluster_env,
    free_port,
    temporary_postgres_database,
    wait_until,
    worker_is_online,
)
from tests.e2e.conftest import FAST, Client

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def private_redis():
    """A Redis of this test's own, so the test may stop and restart it."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle = {"process": process, "command": command, "url": f"redis://127.0.0.1:{port}/0"}
    try:
        wait_until(lambda: _redis_up(port), 20, what="redis")
        yield handle
    finally:
        handle["process"].terminate()
        handle["process"].wait(10)


def _redis_up(port: int) -> bool:
    import redis

    try:
        return redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False


def _restart_redis(handle) -> None:
    handle["process"] = subprocess.Popen(handle["command"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(handle["url"].rsplit(":", 1)[1].split("/")[0])
    wait_until(lambda: _redis_up(port), 20, what="redis to come back")


@pytest.fixture()
def farm3(tmp_path, s3, tiny_models):
    """api, two schedulers, three workers: small (4 GB), mid (8 GB), big (16 GB)."""
    with private_redis() as redis_handle, temporary_postgres_database() as database_url:
        home = tmp_path / "farm"
        home.mkdir()
        env = cluster_env(home, database_url, redis_handle["url"], s3, f"farm-e2e-{uuid.uuid4().hex[:8]}", **FAST)
        cluster = LocalCluster(home=home, env=env, api_port=free_port())
        try:
            cluster.farm("db", "upgrade")
            cluster.admin_token = cluster.farm("users", "create", "root", "--admin").stdout.strip().splitlines()[-1]
            cluster.token = cluster.farm("users", "create", "alice").stdout.strip().splitlines()[-1]
            # Declared VRAM estimates make the budgets matter: "big-model" (6 GB)
            # plus working memory does not fit the 4 GB worker.
            cluster.farm("models", "add", "small-model", str(tiny_models["tiny-a"]), "--vram-gb", "2")
            cluster.farm("models", "add", "big-model", str(tiny_models["tiny-b"]), "--vram-gb", "6")
            cluster.start_api()
            cluster.schedulers = [cluster.start(f"scheduler-{i}", "scheduler") for i in range(2)]
            cluster.workers = {
                "small": cluster.start_worker("small", "--vram-gb", "4", "--preload", "small-model"),
                "mid": cluster.start_worker("mid", "--vram-gb", "8", "--models", "small-model"),
                "big": cluster.start_worker("big", "--vram-gb", "16", "--preload", "big-model"),
            }
            for name in cluster.workers:
                wait_until(lambda: worker_is_online(cluster.api_url, cluster.admin_token, name), 90, what=f"worker {name}")
            cluster.redis = redis_handle
            yield cluster
        finally:
            cluster.stop_all()


def _small(**extra):
    return {"width": 64, "height": 64, "steps": 2, **extra}


def _leaders(cluster) -> list[str]:
    return [p.name for p in cluster.schedulers if "now the leader" in p.log()]


def test_placement_failover_and_loss_while_redis_and_scheduler_are_down(farm3):
    cluster = farm3
    client = Client(cluster, cluster.token)

    # Placement: one at a time, each job lands on the worker that holds its
    # model (the other two are free and could load it).
    for model, holder in (("big-model", "big"), ("small-model", "small")) * 3:
        job = client.wait_final(client.submit(prompt=f"{model} alone", model=model, **_small()))
        assert job["status"] == "succeeded" and job["worker"] == holder, job
    # Together: the 6 GB model never lands on the 4 GB worker, and "mid"
    # (which serves only the small model) never gets the big one.
    together = [(client.submit(prompt=f"mixed {i}", model=m, **_small()), m)
                for i, m in enumerate(["big-model", "small-model"] * 6)]
    for job_id, model in together:
        job = client.wait_final(job_id)
        assert job["status"] == "succeeded", job
        if model == "big-model":
            assert job["worker"] not in ("small", "mid"), job

    # Two schedulers ran all along: exactly one led, and no job was assigned twice.
    assert len(_leaders(cluster)) == 1
    burst = [client.submit(prompt=f"burst {i}", model="small-model", **_small()) for i in range(20)]
    for job_id in burst:
        job = client.wait_final(job_id)
        assert job["status"] == "succeeded" and job["attempt"] == 1 and len(job["outputs"]) == 1, job

    # Kill the leader: the standby takes over within seconds.
    leader = next(p for p in cluster.schedulers if p.name in _leaders(cluster))
    standby = next(p for p in cluster.schedulers if p is not leader)
    leader.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    after = client.wait_final(client.submit(prompt="after failover", model="small-model", **_small()), timeout=60)
    assert after["status"] == "succeeded"
    assert "now the leader" in standby.log()
    assert time.monotonic() - killed_at < 30

    # Lose a worker while Redis and the scheduler are down: the job still ends
    # done exactly once.
    slow = client.submit(prompt="slow", model="big-model", width=512, height=512, steps=80)

    def rendering():
        job = client.job(slow)
        return job if job["status"] == "running" and job["progress"]["step"] > 0 else None

    running = wait_until(rendering, 60, interval=0.05, what="the slow job to run")
    assert running["worker"] == "big"
    standby.stop(signal.SIGKILL)
    cluster.redis["process"].kill()
    cluster.redis["process"].wait(5)
    cluster.workers["big"].stop(signal.SIGKILL)
    # Another worker that can hold the 6 GB model comes up while Redis is away.
    cluster.workers["big2"] = cluster.start_worker("big2", "--vram-gb", "16")
    time.sleep(2)
    _restart_redis(cluster.redis)
    cluster.schedulers.append(cluster.start("scheduler-2", "scheduler"))

    job = client.wait_final(slow, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["worker"] == "big2" and job["attempt"] >= 2
    assert len(job["outputs"]) == 1
    image = client.get(job["outputs"][0]["url"])
    assert image.status_code == 200

    workers = {w["id"]: w for w in requests.get(f"{cluster.api_url}/api/v1/workers",
                                                 headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=10).json()["workers"]}
    assert workers["big"]["state"] == "offline"


def test_drained_worker_finishes_and_takes_no_more(farm3):
    cluster = farm3
    client = Client(cluster, cluster.token)
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {cluster.admin_token}"
    for name in ("small", "mid"):
        response = admin.post(f"{cluster.api_url}/api/v1/workers/{name}/drain", timeout=10)
        assert response.json()["state"] == "draining"
    jobs = [client.submit(prompt=f"while drained {i}", model="small-model", **_small()) for i in range(3)]
    for job_id in jobs:
        job = client.wait_final(job_id)
        # Only "big" takes work now; it loads the small model beside its own.
        assert job["status"] == "succeeded" and job["worker"] == "big", job
    result = cluster.farm("workers", "resume", "small")
    assert "small is online" in result.stdout
    later = client.wait_final(client.submit(prompt="resumed", model="small-model", **_small()))
    assert later["worker"] in ("small", "big")
