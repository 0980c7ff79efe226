"""Describe and self-attention guidance through a real farm (api, scheduler and
worker processes on Postgres, Redis and S3): a worker with a tiny image-to-text
model answers POST /api/v1/describe for an upload and an output through the
farm.describe queue; a farm whose workers offer no describe answers 503; a
render with sag_scale differs from one without, and sag_scale 0 is the plain
render to the byte. In Chromium, the image page's Describe button opens a new
job's form with the description as its prompt (screenshot:
test-artifacts/dashboard/20-describe-prompt.png)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from .conftest import Client, running_cluster
from .test_dashboard_browser import browser, shot, sign_in  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from farm.workers.describe import write_tiny_describer
    from farm.workers.tiny import write_tiny_model

    folder = tmp_path_factory.mktemp("describe")
    return {"tiny-sd": write_tiny_model(folder / "sd", family="sd")}, write_tiny_describer(folder / "tiny-describe")


def upload(client: Client, color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    answer = client.session.post(f"{client.base}/api/v1/uploads", data=buf.getvalue(),
                                 headers={"Content-Type": "image/png"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def describe(client: Client, **body):
    return client.session.post(f"{client.base}/api/v1/describe", json=body, timeout=120)


def test_describe_and_sag_through_real_workers(tmp_path, s3, redis_url, models, browser):
    tiny, describer = models
    one_thread = {"OMP_NUM_THREADS": "1"}
    with running_cluster(tmp_path, s3, redis_url, tiny, {"w1": ["tiny-sd"]},
                         process_env={"w1": {**one_thread, "FARM_WORKER_DESCRIBE_MODEL": str(describer)}}) as cluster:
        alice = Client(cluster, cluster.token)
        image = upload(alice, (200, 30, 30))
        first = describe(alice, upload=image)
        assert first.status_code == 200, first.text
        assert first.json()["prompt"].strip() and first.json()["model"] == "tiny-describe" and first.json()["worker"] == "w1"
        assert describe(alice, upload=image).json()["prompt"] == first.json()["prompt"]

        base = {"prompt": "a lighthouse", "model": "tiny-sd", "width": 64, "height": 64, "steps": 3, "seed": 9,
                "sampler": "dpmpp_2m"}
        jobs = {"plain": alice.submit(**base), "zero": alice.submit(**base, sag_scale=0),
                "sag": alice.submit(**base, sag_scale=0.75)}
        done = {name: alice.wait_final(job_id, timeout=300) for name, job_id in jobs.items()}
        assert {name: job["status"] for name, job in done.items()} == {name: "succeeded" for name in jobs}, done
        images = {name: alice.get(f"/api/v1/outputs/{job['outputs'][0]['id']}/image").content for name, job in done.items()}
        assert images["zero"] == images["plain"] and images["sag"] != images["plain"]
        lineage = alice.get(done["sag"]["outputs"][0]["lineage_url"]).json()
        assert lineage["params"]["sag_scale"] == 0.75

        output_id = done["sag"]["outputs"][0]["id"]
        output = describe(alice, output=output_id)
        assert output.status_code == 200 and output.json()["prompt"].strip()

        page = sign_in(browser, cluster, cluster.token)
        page.goto(f"{cluster.api_url}/images/{output_id}")
        shot(page, "19-image-describe-button")
        page.click("#describe")
        page.wait_for_url(f"{cluster.api_url}/create*")
        assert page.input_value("#prompt") == output.json()["prompt"]
        shot(page, "20-describe-prompt")
        refused = alice.session.post(f"{alice.base}/api/v1/jobs", json={**base, "sampler": "euler", "sag_scale": 1}, timeout=30)
        assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "sampler"


def test_no_describe_worker_is_a_503(tmp_path, s3, redis_url, models):
    tiny, _ = models
    with running_cluster(tmp_path, s3, redis_url, tiny, {"w1": ["tiny-sd"]}) as cluster:
        alice = Client(cluster, cluster.token)
        answer = describe(alice, upload=upload(alice, (10, 200, 30)))
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert "FARM_WORKER_DESCRIBE_MODEL" in answer.json()["error"]["message"]
