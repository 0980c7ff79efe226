"""The Fooocus-API (/v1/generation, /v1/engines) and BFL FLUX API (/v1/<model>,
/v1/get_result) interfaces driven with ``requests`` against a live farm: api,
scheduler and a worker with a tiny SD model and a tiny IP-Adapter, on
Postgres, Redis and S3. One farm serves the whole module.

Neither API has an official Python client, so the requests are the examples
recorded in tests/fixtures/adapters (from the field names and types their
documentation gives), and farm's answers are checked to have the recorded
responses' shapes: the same keys, and values of the same types."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import PIL.Image
import pytest
import requests

from farm.localcluster import wait_until
from farm.workers.tiny import write_tiny_ip_adapter
from tests.e2e.conftest import running_cluster

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "adapters"
# What the recorded requests name that only a real Fooocus/FLUX install has: farm's tiny model and small frames.
TINY = {"base_model_name": "tiny-a", "aspect_ratios_selection": "64*64"}


def recorded(name: str):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def assert_shape(actual, example, where: str = "$") -> None:
    """``actual`` has ``example``'s shape: the same keys, values of the same JSON
    types, list items shaped like the example's first. A null in the example
    stands for a value the documentation leaves nullable: anything matches it."""
    if example is None:
        return
    if isinstance(example, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert set(actual) == set(example), f"{where}: keys {sorted(actual)} != {sorted(example)}"
        for key, value in example.items():
            assert_shape(actual[key], value, f"{where}.{key}")
    elif isinstance(example, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        for index, item in enumerate(actual):
            if example:
                assert_shape(item, example[0], f"{where}[{index}]")
    elif isinstance(example, bool) or isinstance(example, str):
        assert type(actual) is type(example), f"{where}: {actual!r} is not a {type(example).__name__}"
    elif isinstance(example, int):
        assert isinstance(actual, int) and not isinstance(actual, bool), f"{where}: {actual!r} is not an integer"
    elif isinstance(example, float):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r} is not a number"


def png(side: int = 64, color: str = "red") -> str:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (side, side), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def half_mask(side: int = 64) -> str:
    image = PIL.Image.new("L", (side, side), 0)
    image.paste(255, (side // 2, 0, side, side))  # white: repaint the right half
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(data: str) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, redis_url, tiny_models):
    root = tmp_path_factory.mktemp("fooocus-bfl")
    adapter = write_tiny_ip_adapter(root / "ip-sd", family="sd")
    with running_cluster(root, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]},
                         ip_adapters=json.dumps({"sd": str(adapter)})) as cluster:
        admin = {"Authorization": f"Bearer {cluster.admin_token}"}
        bob = requests.post(f"{cluster.api_url}/api/v1/users", json={"name": "bob"}, headers=admin, timeout=30).json()
        cluster.bob_id, cluster.bob_token = bob["id"], bob["token"]
        yield cluster


def fooocus(cluster, path: str, token: str | None = None, **kwargs) -> requests.Response:
    method = "post" if kwargs.get("json") is not None or kwargs.get("files") is not None else "get"
    return getattr(requests, method)(f"{cluster.api_url}{path}", headers={"X-API-KEY": token or cluster.token},
                                     timeout=300, **kwargs)


def native(cluster, path: str) -> dict:
    response = requests.get(f"{cluster.api_url}{path}", headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def lineage_of(cluster, job_id: str) -> dict:
    job = native(cluster, f"/api/v1/jobs/{job_id}")
    return native(cluster, f"/api/v1/outputs/{job['outputs'][0]['id']}")


def text_request(**overrides) -> dict:
    body = {**recorded("fooocus_text_to_image_request"), **TINY, **overrides}
    body["advanced_params"] = {**body["advanced_params"], "overwrite_step": 3}
    return body


# --------------------------------------------------------------------------- Fooocus-API

def test_fooocus_text_to_image_sync(cluster):
    response = fooocus(cluster, "/v1/generation/text-to-image", json=text_request())
    assert response.status_code == 200, response.text
    results = response.json()
    assert_shape(results, recorded("fooocus_text_to_image_response"))
    [result] = results
    assert result["finish_reason"] == "SUCCESS" and result["seed"] == "1234"
    assert decoded(result["base64"]).size == (64, 64)
    # The url is a presigned store URL: it needs no farm token, and holds the same image.
    image = requests.get(result["url"], timeout=30)
    assert image.status_code == 200 and image.content == base64.b64decode(result["base64"])
    # Fooocus-API's streaming answer: with Accept: image/png, the PNG itself.
    streamed = requests.post(f"{cluster.api_url}/v1/generation/text-to-image", json=text_request(),
                             headers={"X-API-KEY": cluster.token, "Accept": "image/png"}, timeout=300)
    assert streamed.status_code == 200 and streamed.headers["Content-Type"] == "image/png"
    assert PIL.Image.open(io.BytesIO(streamed.content)).size == (64, 64)


def test_fooocus_async_job_to_success_with_step_previews(cluster):
    body = text_request(async_process=True, aspect_ratios_selection="128*128", image_seed=-1)
    body["advanced_params"]["overwrite_step"] = 40  # long enough on CPU for previews to be seen
    response = fooocus(cluster, "/v1/generation/text-to-image", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert_shape(job, recorded("fooocus_async_job_response"))
    assert job["job_stage"] == "WAITING" and job["job_type"] == "Text to Image"

    seen = {}

    def finished():
        answer = fooocus(cluster, "/v1/generation/query-job", params={"job_id": job["job_id"], "require_step_preview": "true"})
        assert answer.status_code == 200, answer.text
        state = answer.json()
        seen.setdefault(state["job_stage"], state)
        if state["job_stage"] == "RUNNING" and state["job_step_preview"]:
            seen.setdefault("preview", state)
        return state if state["job_stage"] in ("SUCCESS", "ERROR") else None

    final = wait_until(finished, 300, interval=0.1, what=f"the Fooocus job (seen: {seen.keys()})")
    assert final["job_stage"] == "SUCCESS" and final["job_progress"] == 100 and final["job_status"] == "Finished"
    assert_shape(final, recorded("fooocus_query_job_success"))
    assert decoded(final["job_result"][0]["base64"]).size == (128, 128)
    running = seen["preview"]
    assert_shape(running, recorded("fooocus_query_job_running"))
    assert 0 <= running["job_progress"] <= 100 and decoded(running["job_step_preview"]).format == "JPEG"
    assert lineage_of(cluster, job["job_id"])["interface"] == "fooocus"


def test_fooocus_upscale_vary_json_and_v1_form(cluster):
    body = {**recorded("fooocus_upscale_vary_request"), **TINY, "input_image": png(), "require_base64": True,
            "advanced_params": {"overwrite_step": 4}}
    response = fooocus(cluster, "/v1/generation/image-upscale-vary", json=body)
    assert response.status_code == 200, response.text
    assert_shape(response.json(), recorded("fooocus_text_to_image_response"))
    url = response.json()[0]["url"]
    assert PIL.Image.open(io.BytesIO(requests.get(url, timeout=30).content)).size == (64, 64)
    # v1: a multipart form with the file; Upscale (2x) doubles the frame.
    form = {"prompt": "a red square", "uov_method": "Upscale (2x)", "base_model_name": "tiny-a", "style_selections": "",
            "advanced_params": json.dumps({"overwrite_step": 4}), "require_base64": "true", "loras": "[]"}
    response = fooocus(cluster, "/v1/generation/image-upscale-vary", data=form,
                       files={"input_image": ("square.png", base64.b64decode(png()), "image/png")})
    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["finish_reason"] == "SUCCESS" and decoded(result["base64"]).size == (128, 128)


def test_fooocus_inpaint_and_outpaint(cluster):
    body = {**recorded("fooocus_inpaint_outpaint_request"), **TINY, "input_image": png(), "input_mask": half_mask(),
            "require_base64": True, "async_process": True, "advanced_params": {"overwrite_step": 4}}
    job = fooocus(cluster, "/v1/generation/image-inpaint-outpaint", json=body).json()
    assert job["job_type"] == "Image Inpaint or Outpaint"
    final = wait_until(lambda: (lambda s: s if s["job_stage"] in ("SUCCESS", "ERROR") else None)(
        fooocus(cluster, "/v1/generation/query-job", params={"job_id": job["job_id"]}).json()), 120, what="inpaint")
    assert final["job_stage"] == "SUCCESS", final
    assert decoded(final["job_result"][0]["base64"]).size == (64, 64)
    lineage = lineage_of(cluster, job["job_id"])
    assert lineage["interface"] == "fooocus" and lineage["request"]["prompt"] == "on the water\na wooden boat"
    # Outpainting to the left, from a v1 form.
    form = {"prompt": "more sea", "outpaint_selections": "Left", "base_model_name": "tiny-a", "require_base64": "true",
            "advanced_params": json.dumps({"overwrite_step": 4})}
    response = fooocus(cluster, "/v1/generation/image-inpaint-outpaint", data=form,
                       files={"input_image": ("sea.png", base64.b64decode(png()), "image/png")})
    assert response.status_code == 200, response.text
    width, height = decoded(response.json()[0]["base64"]).size
    assert width > 64 and height == 64


def test_fooocus_image_prompt(cluster):
    body = {**recorded("fooocus_image_prompt_request"), **TINY, "require_base64": True, "advanced_params": {"overwrite_step": 3}}
    body["image_prompts"] = copy.deepcopy(body["image_prompts"])
    body["image_prompts"][0]["cn_img"] = png(color="blue")
    response = fooocus(cluster, "/v1/generation/image-prompt", json=body)
    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["finish_reason"] == "SUCCESS" and decoded(result["base64"]).size == (64, 64)


def test_fooocus_unknown_style_is_422_listing_close_ones(cluster):
    response = fooocus(cluster, "/v1/generation/text-to-image", json=text_request(style_selections=["paint-watercolour"]))
    assert response.status_code == 422
    assert_shape(response.json(), recorded("fooocus_validation_error"))
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "style_selections"] and "did you mean" in problem["msg"]
    assert "paint-loose-watercolor" in problem["msg"]


def test_fooocus_engines(cluster):
    models = fooocus(cluster, "/v1/engines/all-models").json()
    assert_shape(models, recorded("fooocus_all_models_response"))
    assert models["model_filenames"] == ["tiny-a"]
    styles = fooocus(cluster, "/v1/engines/styles").json()
    assert_shape(styles, recorded("fooocus_styles_response"))
    assert "paint-classical-oil" in styles


# --------------------------------------------------------------------------- BFL FLUX API

def bfl(cluster, path: str, token: str | None = None, **kwargs) -> requests.Response:
    method = "post" if "json" in kwargs else "get"
    return getattr(requests, method)(f"{cluster.api_url}{path}", headers={"x-key": token or cluster.token}, timeout=60, **kwargs)


def test_bfl_flux_dev_to_ready(cluster):
    body = {**recorded("bfl_flux_dev_request"), "width": 64, "height": 64, "steps": 3}
    response = bfl(cluster, "/v1/flux-dev", json=body)  # a FLUX name: farm's default model
    assert response.status_code == 200, response.text
    accepted = response.json()
    assert_shape(accepted, recorded("bfl_submit_response"))
    states = []

    def ready():
        answer = requests.get(accepted["polling_url"], headers={"x-key": cluster.token}, timeout=30)
        assert answer.status_code == 200, answer.text
        states.append(answer.json())
        return states[-1] if states[-1]["status"] in ("Ready", "Error") else None

    final = wait_until(ready, 120, interval=0.1, what="the BFL job")
    assert final["status"] == "Ready", final
    assert_shape(final, recorded("bfl_get_result_ready"))
    for state in states[:-1]:
        assert_shape(state, recorded("bfl_get_result_pending"))
    assert final["result"]["seed"] == 42 and final["result"]["prompt"] == body["prompt"]
    assert final["result"]["duration"] >= 0
    image = requests.get(final["result"]["sample"], timeout=30)  # presigned: no token needed
    assert image.status_code == 200 and PIL.Image.open(io.BytesIO(image.content)).format == "JPEG"
    lineage = lineage_of(cluster, accepted["id"])
    assert lineage["interface"] == "bfl" and lineage["model"]["id"] == "tiny-a"


def test_bfl_path_names_a_farm_model_and_validation_is_422(cluster):
    response = bfl(cluster, "/v1/tiny-a", json={"prompt": "a cliff", "width": 64, "height": 64, "steps": 2, "output_format": "png"})
    assert response.status_code == 200, response.text
    assert native(cluster, f"/api/v1/jobs/{response.json()['id']}")["model"] == "tiny-a"
    invalid = bfl(cluster, "/v1/flux-dev", json={"prompt": "a cliff", "safety_tolerance": 9})
    assert invalid.status_code == 422
    assert_shape(invalid.json(), recorded("bfl_validation_error"))
    assert invalid.json()["detail"][0]["loc"] == ["body", "safety_tolerance"]
    # OpenAI's and this API's own single-segment routes are not BFL models.
    assert bfl(cluster, "/v1/get_result", json={"prompt": "x"}).status_code == 405


# --------------------------------------------------------------------------- isolation and quotas, both APIs

def test_another_users_jobs_are_not_found(cluster):
    job = fooocus(cluster, "/v1/generation/text-to-image", json=text_request(async_process=True)).json()
    answer = fooocus(cluster, "/v1/generation/query-job", token=cluster.bob_token, params={"job_id": job["job_id"]})
    assert answer.status_code == 404 and answer.json() == recorded("fooocus_query_job_not_found")
    accepted = bfl(cluster, "/v1/flux-dev", json={"prompt": "a cliff", "width": 64, "height": 64, "steps": 2}).json()
    for job_id in (accepted["id"], job["job_id"]):
        found = bfl(cluster, "/v1/get_result", token=cluster.bob_token, params={"id": job_id})
        assert found.status_code == 200
        assert_shape(found.json(), recorded("bfl_get_result_not_found"))
        assert found.json() == {**recorded("bfl_get_result_not_found"), "id": job_id}
    # Its owner sees it.
    assert fooocus(cluster, "/v1/generation/query-job", params={"job_id": job["job_id"]}).status_code == 200


def test_quota_refusals_in_each_interfaces_shape(cluster):
    quota = requests.put(f"{cluster.api_url}/api/v1/users/{cluster.bob_id}/quota", json={"images_per_day": 0},
                         headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=30)
    assert quota.status_code == 200, quota.text
    refused = fooocus(cluster, "/v1/generation/text-to-image", token=cluster.bob_token, json=text_request())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 0
    assert_shape(refused.json(), recorded("fooocus_error"))
    assert "images today" in refused.json()["detail"]
    refused = bfl(cluster, "/v1/flux-dev", token=cluster.bob_token, json={"prompt": "x", "width": 64, "height": 64})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 0
    assert_shape(refused.json(), recorded("bfl_error"))
    # Nothing was queued for bob.
    jobs = requests.get(f"{cluster.api_url}/api/v1/jobs", headers={"Authorization": f"Bearer {cluster.bob_token}"}, timeout=30)
    assert jobs.status_code == 200 and jobs.json()["jobs"] == []
