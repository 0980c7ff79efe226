"""End to end: a live farm's three kinds of process export what the catalogue
promises once a job has rendered, and answer their health probes; a
scheduler that cannot reach its database is live but not ready."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from farm import __version__
from farm.localcluster import free_port, wait_until
from farm.metrics import exported_metric_names
from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e


class Scrape:
    def __init__(self, base: str) -> None:
        answer = requests.get(f"{base}/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        self.samples = [sample for family in text_string_to_metric_families(answer.text) for sample in family.samples]

    def value(self, name: str, **labels) -> float | None:
        found = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(found) if found else None

    def farm_names(self) -> set[str]:
        return {s.name for s in self.samples if s.name.startswith("farm_") and not s.name.endswith("_created")}


def status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def test_a_render_shows_in_every_process_metrics(tmp_path, s3, redis_url, tiny_models):
    scheduler_port, worker_port = free_port(), free_port()
    process_env = {"scheduler": {"FARM_METRICS_PORT": str(scheduler_port)}, "wm": {"FARM_METRICS_PORT": str(worker_port)}}
    with running_cluster(tmp_path, s3, redis_url, tiny_models, {"wm": ["tiny-a"]}, process_env=process_env) as cluster:
        scheduler_url, worker_url = f"http://127.0.0.1:{scheduler_port}", f"http://127.0.0.1:{worker_port}"
        client = Client(cluster, cluster.token)
        job = client.wait_final(client.submit(prompt="a lighthouse", model="tiny-a", width=64, height=64, steps=3))
        assert job["status"] == "succeeded", job

        for base in (cluster.api_url, scheduler_url, worker_url):
            assert status(f"{base}/healthz/live") == 200 and status(f"{base}/healthz/ready") == 200, base

        scheduler = Scrape(scheduler_url)
        assert scheduler.value("farm_build_info", component="scheduler", version=__version__) == 1
        assert scheduler.value("farm_scheduler_leader") == 1
        assert scheduler.value("farm_scheduler_assignments_total", model="tiny-a") == 1
        assert scheduler.value("farm_queue_wait_seconds_count", model="tiny-a") == 1
        assert scheduler.value("farm_scheduler_pass_seconds_count") >= 1
        assert scheduler.value("farm_scheduler_decision_seconds_count") >= 1
        # The gauges follow the leader's passes: the worker is online, nothing waits.
        wait_until(lambda: Scrape(scheduler_url).value("farm_workers", state="online") == 1, 30, what="online worker gauge")
        assert not Scrape(scheduler_url).value("farm_queued_jobs")
        assert Scrape(scheduler_url).value("farm_worker_heartbeat_age_seconds", worker="wm") is not None

        worker = Scrape(worker_url)
        assert worker.value("farm_build_info", component="worker") == 1
        assert worker.value("farm_render_seconds_count", model="tiny-a") == 1
        assert worker.value("farm_render_seconds_sum", model="tiny-a") > 0
        assert worker.value("farm_model_load_seconds_count", model="tiny-a", source="disk") == 1  # the preload
        assert worker.value("farm_images_produced_total", model="tiny-a") == 1
        assert worker.value("farm_worker_vram_total_bytes", worker="wm") == 4e9
        used, free = worker.value("farm_worker_vram_used_bytes", worker="wm"), worker.value("farm_worker_vram_free_bytes", worker="wm")
        assert used > 0 and used + free == pytest.approx(4e9)
        assert worker.value("farm_worker_model_loaded", worker="wm", model="tiny-a") == 1
        assert worker.value("farm_worker_models_loaded", worker="wm") == 1
        assert worker.value("farm_worker_busy", worker="wm") == 0

        api = Scrape(cluster.api_url)
        assert api.value("farm_build_info", component="api") == 1
        assert api.value("farm_http_request_duration_seconds_count", route="/api/v1/jobs", method="POST", status="202") == 1

        # Everything the three processes export is in the catalogue's list.
        assert (scheduler.farm_names() | worker.farm_names() | api.farm_names()) <= exported_metric_names()

        # A scheduler whose database is unreachable: live, not ready.
        closed_port, down_port = free_port(), free_port()
        cluster.start("scheduler-down", "scheduler", extra_env={
            "FARM_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/farm", "FARM_METRICS_PORT": str(down_port)})
        down_url = f"http://127.0.0.1:{down_port}"
        wait_until(lambda: status(f"{down_url}/healthz/live") == 200, 60, what="the second scheduler's metrics server")
        assert status(f"{down_url}/healthz/ready") == 503
        assert Scrape(down_url).value("farm_scheduler_leader") == 0
        assert status(f"{scheduler_url}/healthz/ready") == 200  # the real one is unaffected
