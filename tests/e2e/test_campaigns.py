"""A campaign on a real farm: submitted with the CLI, paused while running,
resumed, canceled; manifest and ZIP carry the real images."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
from PIL import Image

from farm.localcluster import wait_until
from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e


def test_campaign_lifecycle_on_real_workers(tmp_path, s3, redis_url, tiny_models):
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]}) as cluster:
        client = Client(cluster, cluster.token)
        spec = tmp_path / "campaign.json"
        spec.write_text(json.dumps({"name": "bottles", "base": {"prompt": "a bottle", "model": "tiny-a", "width": 256,
                                                                  "height": 256, "steps": 12}, "matrix": {"seed": list(range(14))}}))
        dry = cluster.farm("campaign", "submit", str(spec), "--dry-run", "--api", cluster.api_url, "--token", cluster.token)
        assert "14 jobs, 14 images" in dry.stdout
        out = cluster.farm("campaign", "submit", str(spec), "--api", cluster.api_url, "--token", cluster.token).stdout
        campaign_id = out.split()[1].rstrip(":")

        def view():
            return client.get(f"/api/v1/campaigns/{campaign_id}").json()

        wait_until(lambda: view()["counts"]["succeeded"] >= 2, 120, what="two images")
        paused = client.session.post(f"{client.base}/api/v1/campaigns/{campaign_id}/pause", timeout=10).json()
        assert paused["status"] == "paused"
        # The job running at the pause finishes (however slow the machine is); nothing new starts.
        # One view per check: two could see the job assigned in the first and
        # running in the second, and pass with it still running.
        def idle(counts):
            return counts["running"] == 0 and counts["assigned"] == 0

        wait_until(lambda: idle(view()["counts"]), 60, what="the running job to finish after the pause")
        settled = view()["counts"]
        time.sleep(2)
        assert view()["counts"] == settled and settled["queued"] > 0 and settled["running"] == 0 and settled["assigned"] == 0

        resumed = client.session.post(f"{client.base}/api/v1/campaigns/{campaign_id}/resume", timeout=10).json()
        assert resumed["status"] == "active"
        wait_until(lambda: view()["counts"]["succeeded"] > settled["succeeded"], 60, what="work after the resume")
        canceled = client.session.post(f"{client.base}/api/v1/campaigns/{campaign_id}/cancel", timeout=10).json()
        assert canceled["status"] == "canceled" and canceled["canceled_jobs"] > 0
        wait_until(lambda: view()["counts"]["running"] == 0, 30, what="the running job to stop")
        final = view()
        assert final["counts"]["queued"] == 0 and final["percent"] == 100.0
        succeeded = final["counts"]["succeeded"]
        assert 3 <= succeeded < 14

        manifest = [json.loads(line) for line in client.get(f"/api/v1/campaigns/{campaign_id}/manifest").text.splitlines()]
        with_images = [row for row in manifest if row["output_id"]]
        assert len(manifest) == 14 and len(with_images) == succeeded
        assert all(row["lineage"]["content_sha256"] == row["content_sha256"] for row in with_images)
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/campaigns/{campaign_id}/export.zip").content))
        images = [name for name in archive.namelist() if name.startswith("images/")]
        assert len(images) == succeeded
        assert Image.open(io.BytesIO(archive.read(images[0]))).size == (256, 256)


def test_retry_failed_on_real_workers(tmp_path, s3, redis_url, tiny_models):
    import shutil

    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]}) as cluster:
        client = Client(cluster, cluster.token)
        fragile = tmp_path / "fragile"
        shutil.copytree(tiny_models["tiny-a"], fragile)
        cluster.farm("models", "add", "fragile", str(fragile))
        cluster.start_worker("wf", "--vram-gb", "4", "--models", "fragile")
        from farm.localcluster import worker_is_online

        wait_until(lambda: worker_is_online(cluster.api_url, cluster.admin_token, "wf"), 90, what="worker wf")
        hidden = tmp_path / "fragile-away"
        fragile.rename(hidden)  # the weights vanish: the worker cannot load the model
        campaign_id = client.session.post(f"{client.base}/api/v1/campaigns", timeout=30, json={
            "name": "fragile", "base": {"prompt": "x", "model": "fragile", "width": 64, "height": 64, "steps": 2},
            "matrix": {"seed": [1, 2]}}).json()["id"]

        def view():
            return client.get(f"/api/v1/campaigns/{campaign_id}").json()

        wait_until(lambda: view()["counts"]["failed"] == 2, 120, what="both jobs to fail")
        hidden.rename(fragile)  # the operator restores the weights
        retried = client.session.post(f"{client.base}/api/v1/campaigns/{campaign_id}/retry-failed", timeout=10).json()
        assert retried["retried_jobs"] == 2 and retried["status"] == "active"
        wait_until(lambda: view()["counts"]["succeeded"] == 2, 120, what="the retried jobs to succeed")
        jobs = client.get(f"/api/v1/campaigns/{campaign_id}/jobs").json()["jobs"]
        assert all(job["attempt"] == 2 and job["worker"] == "wf" and len(job["outputs"]) == 1 for job in jobs)
