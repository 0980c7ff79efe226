"""The official openai package against a live farm (api, scheduler and a worker
as processes; Postgres, Redis, S3 on loopback): images.generate, edit and
create_variation, models.list/retrieve, and farm's quotas, read-only tokens and
checks arriving as the SDK's own exceptions."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import Client, running_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def farm(tmp_path_factory, s3, redis_url, tiny_models):
    """One farm for the module, with the SDK pointed at it as its users would."""
    with running_cluster(tmp_path_factory.mktemp("openai"), s3, redis_url, {"tiny-a": tiny_models["tiny-a"]},
                         {"w1": ["tiny-a"]}) as cluster:
        yield cluster


def sdk(cluster, token: str) -> openai.OpenAI:
    # No retries: each refusal is seen as it came.
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key=token, max_retries=0, timeout=300)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def newest_lineage(cluster, token: str) -> tuple[dict, dict]:
    """The newest job of the token's user and its first output's lineage, through the native API."""
    client = Client(cluster, token)
    job = client.get("/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    return job, client.get(job["outputs"][0]["lineage_url"]).json()


def test_generate_in_both_response_formats(farm):
    client = sdk(farm, farm.token)
    encoded = client.images.generate(model="tiny-a", prompt="a lighthouse at dawn", n=2, size="64x64",
                                      response_format="b64_json")
    images = [base64.b64decode(item.b64_json) for item in encoded.data]
    assert len(images) == 2 and images[0] != images[1]
    assert all(Image.open(io.BytesIO(data)).size == (64, 64) for data in images)
    assert encoded.data[0].revised_prompt == "a lighthouse at dawn" and encoded.created > 0
    job, lineage = newest_lineage(farm, farm.token)
    assert lineage["interface"] == "openai" and job["params"]["num_images"] == 2

    linked = client.images.generate(prompt="a fox in snow", n=2, size="128x64", quality="high")  # url is the default
    fetched = [requests.get(item.url, timeout=30) for item in linked.data]  # presigned: no token needed
    assert all(answer.status_code == 200 for answer in fetched)
    decoded = [Image.open(io.BytesIO(answer.content)) for answer in fetched]
    assert [image.size for image in decoded] == [(128, 64), (128, 64)] and fetched[0].content != fetched[1].content
    job, _ = newest_lineage(farm, farm.token)
    assert job["params"]["model"] == "tiny-a" and job["params"]["performance"] == "quality"  # farm's default model


def test_edit_with_a_mask_inpaints_only_the_masked_part(farm):
    client = sdk(farm, farm.token)
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[16:48, 16:48, 3] = 0  # transparent: repaint this
    edited = client.images.edit(image=("source.png", png(source), "image/png"), prompt="a red door",
                                mask=("mask.png", png(Image.fromarray(mask, mode="RGBA")), "image/png"),
                                response_format="b64_json")
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).convert("RGB"), dtype=np.int16)
    before = np.asarray(source, dtype=np.int16)
    assert result.shape == (64, 64, 3)
    assert np.abs(result[20:44, 20:44] - before[20:44, 20:44]).mean() > np.abs(result[:8] - before[:8]).mean()
    job, lineage = newest_lineage(farm, farm.token)
    task = lineage["params"]["image_task"]
    assert lineage["interface"] == "openai" and task["mode"] == "inpaint" and task["mask_upload"] and task["upload"]


def test_variation(farm):
    client = sdk(farm, farm.token)
    varied = client.images.create_variation(image=("cat.png", png(Image.new("RGB", (64, 64), "teal")), "image/png"),
                                            n=1, response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(varied.data[0].b64_json))).size == (64, 64)
    _, lineage = newest_lineage(farm, farm.token)
    assert lineage["interface"] == "openai" and lineage["params"]["image_task"]["mode"] == "vary_subtle"


def test_models(farm):
    client = sdk(farm, farm.token)
    assert [model.id for model in client.models.list()] == ["tiny-a"]
    model = client.models.retrieve("tiny-a")
    assert model.owned_by == "farm" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="x")
    assert caught.value.body["param"] == "model" and caught.value.body["code"] == "model_not_found"


def test_refusals_arrive_as_the_sdks_exceptions(farm):
    admin = Client(farm, farm.admin_token)
    created = admin.session.post(f"{admin.base}/api/v1/users", json={"name": "frugal"}, timeout=30).json()
    quota = admin.session.put(f"{admin.base}/api/v1/users/{created['id']}/quota", json={"images_per_day": 1}, timeout=30)
    assert quota.status_code == 200, quota.text
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(farm, created["token"]).images.generate(prompt="two boats", n=2, size="64x64")
    assert caught.value.code == "insufficient_quota" and int(caught.value.response.headers["Retry-After"]) > 0

    owner = Client(farm, farm.token)
    reader = owner.session.post(f"{owner.base}/api/v1/tokens", json={"name": "viewer", "scope": "read"}, timeout=30).json()
    with pytest.raises(openai.PermissionDeniedError):
        sdk(farm, reader["token"]).images.generate(prompt="a boat", size="64x64")
    assert [model.id for model in sdk(farm, reader["token"]).models.list()] == ["tiny-a"]

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(farm, farm.token).images.generate(prompt="a boat", size="large")
    assert caught.value.param == "size"
    with pytest.raises(openai.AuthenticationError):
        sdk(farm, "farm_not-a-token").images.generate(prompt="a boat")
