"""A real distributed farm for end-to-end tests: api, scheduler and worker
processes against Postgres, Redis and an S3 server, all on loopback."""

from __future__ import annotations

import contextlib
import uuid

import pytest
import requests

from farm.localcluster import LocalCluster, cluster_env, free_port, temporary_postgres_database, wait_until, worker_is_online

# Short heartbeats so a killed worker is noticed within seconds.
FAST = dict(heartbeat_s=0.5, heartbeat_timeout_s=3, lease_s=10, scheduler_poll_s=0.5, progress_interval_s=0.1)


@contextlib.contextmanager
def running_cluster(tmp_path, s3, redis_url, tiny_models, workers: dict[str, list[str]],
                    process_env: dict[str, dict[str, str]] | None = None, **settings):
    """Start a farm: one api, one scheduler, and a worker per entry of
    ``workers`` (name -> model ids it serves and preloads); ``settings`` are
    more FARM_ settings for every process (ip_adapters='{"sd": ...}', say);
    ``process_env``: environment for one process only ("scheduler" or a
    worker's name -> variables), such as its own FARM_METRICS_PORT."""
    process_env = process_env or {}
    with temporary_postgres_database() as database_url:
        home = tmp_path / "farm"
        home.mkdir()
        env = cluster_env(home, database_url, redis_url, s3, f"farm-e2e-{uuid.uuid4().hex[:8]}", **{**FAST, **settings})
        cluster = LocalCluster(home=home, env=env, api_port=free_port())
        try:
            cluster.farm("db", "upgrade")
            cluster.admin_token = cluster.farm("users", "create", "root", "--admin").stdout.strip().splitlines()[-1]
            cluster.token = cluster.farm("users", "create", "alice").stdout.strip().splitlines()[-1]
            for model_id, path in tiny_models.items():
                cluster.farm("models", "add", model_id, str(path))
            cluster.start_api()
            cluster.start("scheduler", "scheduler", extra_env=process_env.get("scheduler"))
            cluster.workers = {}
            for name, models in workers.items():
                ids = ",".join(models)
                cluster.workers[name] = cluster.start_worker(name, "--vram-gb", "4", "--models", ids, "--preload", ids,
                                                             extra_env=process_env.get(name))
            for name in workers:
                wait_until(lambda: worker_is_online(cluster.api_url, cluster.admin_token, name), 90, what=f"worker {name}")
            yield cluster
        finally:
            cluster.stop_all()


class Client:
    def __init__(self, cluster: LocalCluster, token: str) -> None:
        self.base = cluster.api_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, **body) -> str:
        response = self.session.post(f"{self.base}/api/v1/jobs", json=body, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str, wait: float = 0) -> dict:
        response = self.session.get(f"{self.base}/api/v1/jobs/{job_id}", params={"wait": wait}, timeout=wait + 30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_final(self, job_id: str, timeout: float = 120) -> dict:
        def final():
            job = self.job(job_id, wait=5)
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        return wait_until(final, timeout, interval=0, what=f"job {job_id}")

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)


@pytest.fixture()
def client_for():
    return Client
