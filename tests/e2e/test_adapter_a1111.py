"""The AUTOMATIC1111 interface (/sdapi/v1) driven by the ``webuiapi`` client
against a live farm: api, scheduler and a worker with two tiny models, on
Postgres, Redis and S3. One farm serves the whole module."""

from __future__ import annotations

import base64
import io
import json
import threading

import PIL.Image
import pytest
import requests
import webuiapi

from farm.localcluster import wait_until
from tests.e2e.conftest import running_cluster

pytestmark = pytest.mark.e2e

# Long enough on CPU for progress and previews to be seen before the image.
SLOW = dict(prompt="a lighthouse at dawn", width=256, height=256, steps=150, sampler_name="Euler")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, redis_url, tiny_models):
    with running_cluster(tmp_path_factory.mktemp("a1111"), s3, redis_url, tiny_models, {"wa": ["tiny-a", "tiny-b"]}) as cluster:
        admin = {"Authorization": f"Bearer {cluster.admin_token}"}
        bob = requests.post(f"{cluster.api_url}/api/v1/users", json={"name": "bob"}, headers=admin, timeout=30).json()
        cluster.bob_id, cluster.bob_token = bob["id"], bob["token"]
        yield cluster


def client(cluster, user: str = "alice", token: str | None = None) -> webuiapi.WebUIApi:
    host, port = cluster.api_url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username=user, password=token or cluster.token)


def native(cluster, path: str) -> dict:
    response = requests.get(f"{cluster.api_url}{path}", headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_txt2img_answers_images_and_a1111_info(cluster):
    api = client(cluster)
    result = api.txt2img(prompt="a red fox", negative_prompt="blur", seed=5, width=64, height=64, steps=3, batch_size=2,
                         sampler_name="Euler a", cfg_scale=6)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["seed"] == 5 and result.info["all_seeds"] == [5, 6] and result.info["sampler_name"] == "Euler a"
    assert result.info["infotexts"][1].startswith("a red fox\nNegative prompt: blur\n") and "Seed: 6" in result.info["infotexts"][1]
    assert result.parameters["prompt"] == "a red fox"
    # Each PNG carries its parameters, which png-info reads back.
    info = api.png_info(result.images[0])
    assert info.info == result.info["infotexts"][0] and info.json["parameters"]["Seed"] == "5"
    # A farm job of this interface, with its lineage.
    job = native(cluster, f"/api/v1/jobs/{result.info['farm']['job']}")
    assert job["status"] == "succeeded" and job["params"]["sampler"] == "euler_ancestral" and job["params"]["guidance_scale"] == 6
    lineage = native(cluster, f"/api/v1/outputs/{result.info['farm']['outputs'][0]}")
    assert lineage["interface"] == "a1111" and lineage["params"]["seed"] == 5


def test_img2img_with_an_init_image_and_with_a_mask(cluster):
    api = client(cluster)
    source = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    result = api.img2img(images=[source], prompt="a red square", width=64, height=64, steps=4, denoising_strength=0.5, seed=3)
    assert [image.size for image in result.images] == [(64, 64)]
    task = native(cluster, f"/api/v1/outputs/{result.info['farm']['outputs'][0]}")["params"]["image_task"]
    assert task["mode"] == "vary_subtle" and task["strength"] == 0.5 and task["source_size"] == [64, 64]

    mask = PIL.Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(images=[source.resize((64, 64))], mask_image=mask, prompt="a blue circle", width=64, height=64,
                         steps=4, denoising_strength=0.9, inpainting_fill=1, seed=4)
    assert [image.size for image in result.images] == [(64, 64)]
    record = native(cluster, f"/api/v1/outputs/{result.info['farm']['outputs'][0]}")
    assert record["params"]["image_task"]["mode"] == "inpaint" and record["params"]["image_task"]["strength"] == 0.9
    assert record["interface"] == "a1111" and result.info["denoising_strength"] == 0.9


def test_models_samplers_and_schedulers(cluster):
    api = client(cluster)
    names = api.util_get_model_names()
    assert len(names) == 2 and names[0].startswith("tiny-a [") and names[1].startswith("tiny-b [")
    models = {model["model_name"]: model for model in api.get_sd_models()}
    assert models["tiny-a"]["title"] == f"tiny-a [{models['tiny-a']['sha256'][:10]}]" and models["tiny-a"]["hash"]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= set(api.util_get_sampler_names())
    assert {"normal", "karras", "exponential", "sgm_uniform"} == set(api.util_get_scheduler_names())


def test_basic_auth_and_a_wrong_password(cluster):
    assert client(cluster).get_options()["sd_model_checkpoint"]
    wrong = client(cluster, token="farm_not-a-token")
    with pytest.raises(RuntimeError) as caught:
        wrong.txt2img(prompt="x", width=64, height=64, steps=2)
    status, text = caught.value.args
    assert status == 401 and "invalid or revoked API token" in json.loads(text)["detail"]


def test_options_set_the_users_checkpoint_for_later_renders(cluster):
    api = client(cluster)
    api.util_set_model("tiny-b")
    assert api.util_get_current_model().startswith("tiny-b [")
    result = api.txt2img(prompt="a pear", width=64, height=64, steps=2, seed=1)
    assert result.info["sd_model_name"] == "tiny-b"
    assert native(cluster, f"/api/v1/outputs/{result.info['farm']['outputs'][0]}")["model"]["id"] == "tiny-b"
    # Bob's checkpoint is not Alice's.
    assert client(cluster, "bob", cluster.bob_token).util_get_current_model().startswith("tiny-a [")
    api.util_set_model("tiny-a")


class Render(threading.Thread):
    """A txt2img call running in the background, as a client waiting for its image."""

    def __init__(self, api: webuiapi.WebUIApi, **fields) -> None:
        super().__init__(daemon=True)
        self.api, self.fields, self.result, self.error = api, fields, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.api.txt2img(**self.fields)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def running_progress(api: webuiapi.WebUIApi, with_image: bool = False) -> dict:
    def seen():
        progress = api.get_progress()
        started = progress["state"]["sampling_step"] > 0 and progress["progress"] > 0
        return progress if started and (progress["current_image"] or not with_image) else None

    return wait_until(seen, 120, interval=0.1, what="a render in progress")


def test_progress_and_interrupt_are_the_callers_own(cluster):
    alice, bob = client(cluster), client(cluster, "bob", cluster.bob_token)
    bobs = Render(bob, **SLOW)
    running_progress(bob)
    # Bob's render shows in neither Alice's progress nor falls to her interrupt.
    mine = alice.get_progress()
    assert mine["state"]["job_count"] == 0 and mine["current_image"] is None and mine["progress"] == 0
    alice.interrupt()
    before = running_progress(bob)["state"]["sampling_step"]
    wait_until(lambda: bob.get_progress()["state"]["sampling_step"] > before, 60, interval=0.1, what="bob's render going on")
    bob.interrupt()
    bobs.join(120)
    assert bobs.error is None and bobs.result.info["farm"]["status"] == "canceled"

    # Alice's own render: progress with the live preview, then her interrupt stops it.
    alices = Render(alice, **SLOW)
    progress = running_progress(alice, with_image=True)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150 and progress["eta_relative"] >= 0
    preview = PIL.Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "JPEG" and max(preview.size) == 128
    job_id = progress["current_task"].removeprefix("task(").removesuffix(")")
    assert bob.get_progress()["state"]["job_count"] == 0
    alice.interrupt()
    alices.join(120)
    assert alices.error is None and alices.result.info["farm"]["job"] == job_id
    assert native(cluster, f"/api/v1/jobs/{job_id}")["status"] == "canceled"


def test_a_quota_refusal_is_a_429_in_a1111_shape(cluster):
    admin = {"Authorization": f"Bearer {cluster.admin_token}"}
    response = requests.put(f"{cluster.api_url}/api/v1/users/{cluster.bob_id}/quota", json={"max_steps": 2}, headers=admin, timeout=30)
    assert response.status_code == 200, response.text
    try:
        with pytest.raises(RuntimeError) as caught:
            client(cluster, "bob", cluster.bob_token).txt2img(prompt="x", width=64, height=64, steps=3)
        status, text = caught.value.args
        body = json.loads(text)
        assert status == 429 and "at most 2 steps" in body["detail"] and body["errors"].startswith("429: ")
        raw = requests.post(f"{cluster.api_url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 3},
                            auth=("bob", cluster.bob_token), timeout=30)
        assert raw.status_code == 429 and int(raw.headers["Retry-After"]) >= 0
    finally:
        requests.put(f"{cluster.api_url}/api/v1/users/{cluster.bob_id}/quota", json={"max_steps": None}, headers=admin, timeout=30)
