"""FLUX.2 [klein] through a real farm (api, scheduler and a worker process on
Postgres, Redis and S3): text to image, every declared sampler, and a render
on two references (an upload and an earlier output) whose lineage names both
with the sha256 of their bytes."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from farm.families import available_samplers

from .conftest import Client, running_cluster

pytestmark = pytest.mark.e2e

KLEIN = "flux2_klein"


@pytest.fixture(scope="module")
def klein_model(tmp_path_factory):
    from farm.workers.tiny import write_tiny_model

    return {"tiny-klein": write_tiny_model(tmp_path_factory.mktemp("flux2") / "klein", family=KLEIN)}


def png(color, size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: Client, data: bytes) -> str:
    answer = client.session.post(f"{client.base}/api/v1/uploads", data=data, headers={"Content-Type": "image/png"},
                                 timeout=30)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def test_klein_renders_samplers_and_references_through_a_worker(tmp_path, s3, redis_url, klein_model):
    # One intra-op thread: the tiny encoders' matrices are small, and on a
    # busy shared CPU torch's thread pool only adds waiting.
    with running_cluster(tmp_path, s3, redis_url, klein_model, {"w1": ["tiny-klein"]},
                         process_env={"w1": {"OMP_NUM_THREADS": "1"}}) as cluster:
        alice = Client(cluster, cluster.token)
        base = {"prompt": "a lighthouse at dawn", "model": "tiny-klein", "width": 64, "height": 64, "steps": 2, "seed": 4}

        jobs = {sampler: alice.submit(**base, sampler=sampler) for sampler in available_samplers(KLEIN)}
        done = {sampler: alice.wait_final(job_id, timeout=300) for sampler, job_id in jobs.items()}
        assert {s: job["status"] for s, job in done.items()} == {s: "succeeded" for s in jobs}, done
        first = done["euler"]["outputs"][0]["id"]
        parent_bytes = alice.get(f"/api/v1/outputs/{first}/image").content
        assert Image.open(io.BytesIO(parent_bytes)).size == (64, 64)

        upload_bytes = png("red", (80, 64))
        upload_id = upload(alice, upload_bytes)
        references = [{"image": upload_id}, {"parent_output": first}]
        job = alice.wait_final(alice.submit(**{**base, "prompt": "the red of the first on the second"},
                                            references=references), timeout=300)
        assert job["status"] == "succeeded", job
        record = alice.get(f"/api/v1/outputs/{job['outputs'][0]['id']}").json()
        recorded = record["params"]["references"]
        assert [(r["upload"], r["parent_output"]) for r in recorded] == [(upload_id, None), (None, first)]
        assert [r["sha256"] for r in recorded] == [hashlib.sha256(upload_bytes).hexdigest(),
                                                   hashlib.sha256(parent_bytes).hexdigest()]
        assert all(r["key"] for r in recorded)

        # Over the API: beyond the model's limit, and someone else's upload.
        too_many = alice.session.post(f"{alice.base}/api/v1/jobs", json={**base, "references": references * 3}, timeout=30)
        assert too_many.status_code == 422
        assert {"field": "references", "message": "6 reference images; flux2_klein models take at most 4"} in \
            too_many.json()["error"]["details"]
        bob = Client(cluster, cluster.farm("users", "create", "bob").stdout.strip().splitlines()[-1])
        theirs = bob.session.post(f"{bob.base}/api/v1/jobs", json={**base, "references": [{"image": upload_id}]},
                                  timeout=30)
        assert theirs.status_code == 422 and "no upload" in theirs.text and "references.0.image" in theirs.text
