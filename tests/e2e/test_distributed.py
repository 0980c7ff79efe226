"""End to end: api, scheduler and two workers with their own models, against
Postgres, Redis and S3; then a worker killed mid-render."""

from __future__ import annotations

import io
import signal
import time

import pytest
from minio import Minio
from PIL import Image

from farm.localcluster import wait_until
from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e

LINEAGE_FIELDS = {
    "output_id", "job_id", "attempt", "user_id", "request", "params", "model", "worker", "software", "timings",
    "object_key", "sidecar_key", "content_sha256", "byte_size", "content_type", "interface",
}
# Fields that are legitimately empty for a plain text-to-image job of a local model.
MAY_BE_EMPTY = {"campaign_id", "parent_output", "source_upload", "rerender_of"}


def small(**extra):
    return {"width": 64, "height": 64, "steps": 3, **extra}


def test_ten_jobs_over_two_models_on_two_workers(tmp_path, s3, redis_url, tiny_models):
    with running_cluster(tmp_path, s3, redis_url, tiny_models, {"wa": ["tiny-a"], "wb": ["tiny-b"]}) as cluster:
        client = Client(cluster, cluster.token)
        submitted = [(client.submit(prompt=f"a lighthouse {i}", model="tiny-a" if i % 2 else "tiny-b", **small()), i)
                     for i in range(10)]
        repeat = [client.submit(prompt="the same picture", model="tiny-a", seed=1234, **small()) for _ in range(2)]
        for job_id, i in submitted + [(r, 1) for r in repeat]:
            job = client.wait_final(job_id)
            assert job["status"] == "succeeded", job
            # Each job ran on the worker that holds its model.
            assert job["worker"] == ("wa" if i % 2 else "wb")
            assert job["attempt"] == 1 and job["progress"]["percent"] == 100.0
            [output] = job["outputs"]
            image = client.get(output["url"])  # a redirect to a presigned S3 URL
            assert image.status_code == 200 and image.history and image.history[0].status_code == 302
            decoded = Image.open(io.BytesIO(image.content))
            assert decoded.size == (64, 64) and decoded.format == "PNG"
            assert "Steps: 3" in decoded.text["parameters"]
            lineage = client.get(output["lineage_url"]).json()
            for key in LINEAGE_FIELDS:
                assert lineage.get(key) not in (None, "", {}), key
            assert all(lineage["timings"][k] is not None for k in ("queued_at", "waited_s", "model_load_s", "inference_s", "upload_s"))
            assert lineage["model"]["weights_sha256"] and lineage["worker"]["gpu_name"] and lineage["software"]["torch"]
            assert set(lineage) - LINEAGE_FIELDS - MAY_BE_EMPTY - {"id", "url", "lineage_url", "index"} == set()
            assert lineage["byte_size"] == len(image.content)
            # The JSON sidecar sits next to the image in the bucket.
            sidecar = _bucket_object(cluster, lineage["sidecar_key"])
            assert b'"content_sha256":"' + lineage["content_sha256"].encode() in sidecar

        first, second = (client.job(r)["outputs"][0] for r in repeat)
        a, b = client.get(first["url"]).content, client.get(second["url"]).content
        assert a == b, "same seed and parameters must give the same image bytes"

        _cancel_running_and_queued(cluster, client)


def _cancel_running_and_queued(cluster, client: Client) -> None:
    slow = client.submit(prompt="slow", model="tiny-a", width=512, height=512, steps=80)
    queued = client.submit(prompt="behind it", model="tiny-a", **small())

    def rendering():
        job = client.job(slow)
        return job if job["status"] == "running" and job["progress"]["step"] > 0 else None

    wait_until(rendering, 60, interval=0.05, what="the slow job to run")
    assert client.job(queued)["status"] in ("queued", "assigned")
    for job_id in (queued, slow):
        response = client.session.post(f"{client.base}/api/v1/jobs/{job_id}/cancel", timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "canceled"
    # The worker stops the render at its next step and is free again soon.
    after = client.wait_final(client.submit(prompt="after the cancel", model="tiny-a", **small()), timeout=60)
    assert after["status"] == "succeeded" and after["worker"] == "wa"
    job = client.job(slow)
    assert job["status"] == "canceled" and job["outputs"] == []
    assert job["progress"]["step"] < job["progress"]["total"]
    names = [o.object_name for o in _minio(cluster).list_objects(cluster.env["FARM_S3_BUCKET"], recursive=True)]
    assert not any(slow in name or queued in name for name in names)
    assert client.job(queued)["started_at"] is None


def _minio(cluster) -> Minio:
    endpoint = cluster.env["FARM_S3_ENDPOINT"].split("://", 1)[1]
    return Minio(endpoint, cluster.env["FARM_S3_ACCESS_KEY"], cluster.env["FARM_S3_SECRET_KEY"], secure=False)


def _bucket_object(cluster, key: str) -> bytes:
    response = _minio(cluster).get_object(cluster.env["FARM_S3_BUCKET"], key)
    try:
        return response.read()
    finally:
        response.close()


def test_killed_worker_job_finishes_elsewhere_exactly_once(tmp_path, s3, redis_url, tiny_models):
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]},
                         {"w1": ["tiny-a"], "w2": ["tiny-a"]}) as cluster:
        client = Client(cluster, cluster.token)
        # Long enough to be caught mid-render: 512x512, 60 steps on CPU.
        job_id = client.submit(prompt="slow", model="tiny-a", width=512, height=512, steps=60, seed=7)
        def rendering():
            job = client.job(job_id)
            return job if job["status"] == "running" and job["progress"]["step"] > 0 else None

        running = wait_until(rendering, 60, interval=0.05, what="the job to run")
        victim = running["worker"]
        cluster.workers[victim].stop(signal.SIGKILL)
        killed_at = time.monotonic()

        job = client.wait_final(job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 2
        assert job["worker"] != victim
        assert len(job["outputs"]) == 1
        objects = sorted(o.object_name for o in _minio(cluster).list_objects(cluster.env["FARM_S3_BUCKET"], recursive=True))
        # Only the completing attempt's objects remain (keys name the attempt).
        assert len(objects) == 2 and objects[0].endswith(f"{job_id}/a2/0.json") and objects[1].endswith(f"{job_id}/a2/0.png")
        lineage = client.get(job["outputs"][0]["lineage_url"]).json()
        assert lineage["attempt"] == 2 and lineage["worker"]["id"] != victim
        assert time.monotonic() - killed_at < 120
