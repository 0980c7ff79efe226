"""The OpenAI Images adapter in process (embedded database, Flask test client):
the translation of OpenAI's fields onto farm's request, masks, sizes and the
error shapes. A thread stands in for the worker where a job must finish; the
live farm with the openai package is tests/e2e/test_adapter_openai.py."""

from __future__ import annotations

import base64
import contextlib
import io
import threading

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from farm import states
from farm.api import create_app
from farm.api.adapters.openai_images import OpenAIFailure, has_transparency, openai_mask, parse_size
from farm.auth import create_user, issue_token
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, JobStatus, Quota, User
from farm.registry import add_model
from farm.services.uploads import UploadError, upload_key
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("openai") / "tiny-sd", family="sd")


@pytest.fixture()
def farm(sqlite_settings, tiny_dir):
    # A short wait: a job nobody runs answers 504 within a second.
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0, "adapter_wait_s": 1.0})
    ctx = build_context(settings, events=LocalEvents(poll_s=0.02))
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(tiny_dir), default_steps=2)
        ana, token = create_user(session, "ana")
        _, other = create_user(session, "eve")
        reader = issue_token(session, ana, "reader", scope="read")
    return ctx, create_app(settings, context=ctx).test_client(), {"ana": token, "eve": other, "read": reader}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def worker(ctx):
    """A thread that assigns and runs each queued job, as scheduler and worker would;
    requests wait long enough for its first render (which loads the pipeline)."""
    runtime = WorkerRuntime(ctx, name="w1")
    ctx.settings.adapter_wait_s = 120.0
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            with ctx.db.session() as session:
                queued = session.execute(select(Job.id).where(Job.status == JobStatus.queued.value)).scalars().all()
            for job_id in queued:
                with ctx.db.transaction() as session:
                    states.assign_job(session, job_id, 1, "w1", 30)
                render_module.execute_job(runtime, job_id, 1)
            stop.wait(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        ctx.settings.adapter_wait_s = 1.0


def only_job(ctx) -> Job:
    with ctx.db.session() as session:
        [job] = session.execute(select(Job)).scalars().all()
        return job


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def openai_error(response, status: int, param: str | None, text: str = "") -> dict:
    """The answer is OpenAI's error shape with ``status`` and ``param``, never a traceback."""
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and text in error["message"], error
    assert "Traceback" not in response.get_data(as_text=True)
    return error


# --------------------------------------------------------------------------- pure translation

@pytest.mark.parametrize("value,expected", [(None, None), ("auto", None), ("1024x1536", (1024, 1536)),
                                            (" 64X128 ", (64, 128)), ("512×512", (512, 512))])
def test_sizes_are_parsed(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["1024", "1024x", "x1024", "0x64", "big", "64x64x64", "-64x64"])
def test_a_bad_size_names_size(value):
    with pytest.raises(OpenAIFailure) as caught:
        parse_size(value)
    assert caught.value.status == 400 and caught.value.param == "size"


def test_a_mask_marks_its_fully_transparent_pixels_for_repainting():
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[2:4, 2:6, 3] = 0  # fully transparent: repaint
    rgba[6, :, 3] = 1  # nearly transparent: kept
    mask = np.asarray(openai_mask(Image.fromarray(rgba, mode="RGBA")))
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[2:4, 2:6] = 255
    assert (mask == expected).all()
    assert has_transparency(Image.fromarray(rgba, mode="RGBA"))
    assert not has_transparency(Image.new("RGB", (8, 8)))
    with pytest.raises(UploadError, match="alpha channel"):
        openai_mask(Image.new("RGB", (8, 8)))
    with pytest.raises(UploadError, match="no fully transparent pixel"):
        openai_mask(Image.new("RGBA", (8, 8), (0, 0, 0, 255)))


# --------------------------------------------------------------------------- requests

def test_generate_answers_with_the_images_of_one_openai_job(farm):
    ctx, client, tokens = farm
    body = {"prompt": "a lighthouse", "model": "tiny-sd", "n": 2, "size": "64x64", "response_format": "b64_json",
            "quality": "hd", "style": "vivid", "user": "someone"}
    with worker(ctx):
        response = client.post("/v1/images/generations", json=body, headers=bearer(tokens["ana"]))
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    job = only_job(ctx)
    assert job.interface == "openai" and job.num_images == 2 and job.params["performance"] == "quality"
    assert answer["created"] > 0 and answer["size"] == "64x64" and answer["output_format"] == "png"
    images = [base64.b64decode(item["b64_json"]) for item in answer["data"]]
    assert len(images) == 2 and images[0] != images[1]
    assert images == [ctx.storage.get(output.object_key) for output in job.outputs]
    assert all(Image.open(io.BytesIO(data)).size == (64, 64) for data in images)
    assert {item["revised_prompt"] for item in answer["data"]} == {job.params["final_prompt"]}


def test_each_images_revised_prompt_is_its_own_with_wildcards(farm):
    ctx, client, tokens = farm
    body = {"prompt": "a __color__ lighthouse", "model": "tiny-sd", "n": 4, "size": "64x64"}
    with worker(ctx):
        response = client.post("/v1/images/generations", json=body, headers=bearer(tokens["ana"]))
    assert response.status_code == 200, response.get_json()
    job = only_job(ctx)
    revised = [item["revised_prompt"] for item in response.get_json()["data"]]
    assert revised == [image["final_prompt"] for image in job.params["wildcard_images"]]
    assert revised == [output.lineage["params"]["final_prompt"] for output in job.outputs]


def test_generate_with_urls_links_each_image(farm):
    ctx, client, tokens = farm
    with worker(ctx):
        response = client.post("/v1/images/generations", json={"prompt": "a boat", "size": "64x64"},
                               headers=bearer(tokens["ana"]))
    assert response.status_code == 200, response.get_json()
    [item] = response.get_json()["data"]
    output = only_job(ctx).outputs[0]
    # The embedded store makes no presigned URLs: the api's own image URL, which takes the token.
    assert item["url"].endswith(f"/api/v1/outputs/{output.id}/image") and "b64_json" not in item
    assert client.get(item["url"], headers=bearer(tokens["ana"])).data == ctx.storage.get(output.object_key)


def test_a_job_that_does_not_finish_in_time_is_a_504_naming_it(farm):
    ctx, client, tokens = farm
    response = client.post("/v1/images/generations", json={"prompt": "a boat", "size": "64x64"}, headers=bearer(tokens["ana"]))
    error = openai_error(response, 504, None, "still queued")
    job = only_job(ctx)
    assert str(job.id) in error["message"] and job.status == "queued"
    assert error["type"] == "server_error" and response.headers["x-should-retry"] == "false"


def test_a_failed_job_is_a_server_error_that_is_not_retried(farm):
    ctx, client, tokens = farm

    def fail_it():
        while True:
            with ctx.db.transaction() as session:
                job_id = session.execute(select(Job.id)).scalar()
                if job_id is not None:
                    states.assign_job(session, job_id, 1, "w1", 30)
                    states.start_job(session, job_id, 1, "w1", 30)
                    states.fail_job(session, job_id, 1, "CUDA out of memory")
                    return

    thread = threading.Thread(target=fail_it, daemon=True)
    thread.start()
    response = client.post("/v1/images/generations", json={"prompt": "a boat", "size": "64x64"}, headers=bearer(tokens["ana"]))
    thread.join(timeout=10)
    error = openai_error(response, 500, None, "out of memory")
    assert error["type"] == "server_error" and error["code"] == "job_failed" and str(only_job(ctx).id) in error["message"]
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("body,status,param,text", [
    ({"prompt": "x", "size": "huge"}, 400, "size", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "100x64"}, 400, "size", "size (width): 100 is not a multiple of 8"),
    ({"prompt": "x", "n": 11}, 400, "n", ""),
    ({"prompt": "x", "n": 9}, 400, "n", "n (num_images)"),
    ({"prompt": "x", "model": "dall-e-3"}, 404, "model", "unknown model 'dall-e-3'"),
    ({"prompt": "x", "background": "transparent"}, 400, "background", "opaque"),
    ({"prompt": "x", "stream": True}, 400, "stream", "not supported"),
    ({"prompt": "x", "output_format": "gif"}, 400, "output_format", "gif"),
    ({"prompt": "x", "quality": "ultra"}, 400, "quality", ""),
    ({"prompt": "x", "seed": 3}, 400, "seed", "unknown field"),
    ({"size": "64x64"}, 400, "prompt", "required"),
    ({"prompt": "   "}, 400, "prompt", "must not be empty"),
])
def test_bad_generation_requests_name_the_openai_parameter(farm, body, status, param, text):
    ctx, client, tokens = farm
    error = openai_error(client.post("/v1/images/generations", json=body, headers=bearer(tokens["ana"])), status, param, text)
    assert error["type"] == "invalid_request_error"
    if status == 404:
        assert error["code"] == "model_not_found"
    with ctx.db.session() as session:
        assert session.execute(select(Job.id)).first() is None


def test_tokens_errors_and_refusals_come_in_openai_shape(farm):
    ctx, client, tokens = farm
    body = {"prompt": "x", "size": "64x64"}
    missing = openai_error(client.post("/v1/images/generations", json=body), 401, None, "missing API token")
    assert missing["type"] == "authentication_error" and missing["code"] == "missing_api_key"
    wrong = openai_error(client.post("/v1/images/generations", json=body, headers=bearer("farm_nope")), 401, None, "invalid")
    assert wrong["code"] == "invalid_api_key"
    read_only = openai_error(client.post("/v1/images/generations", json=body, headers=bearer(tokens["read"])), 403, None, "read-only")
    assert read_only["type"] == "permission_error"
    # A read-only token still lists models.
    assert client.get("/v1/models", headers=bearer(tokens["read"])).status_code == 200
    openai_error(client.post("/v1/images/generations", data="{not json", headers={**bearer(tokens["ana"]), "Content-Type": "application/json"}), 400, None, "not valid JSON")
    openai_error(client.post("/v1/images/generations", data="prompt=x", headers=bearer(tokens["ana"])), 415, None, "JSON")
    openai_error(client.post("/v1/images/edits", json=body, headers=bearer(tokens["ana"])), 415, None, "multipart")


def test_a_quota_refusal_is_a_429_with_retry_after(farm):
    ctx, client, tokens = farm
    with ctx.db.transaction() as session:
        ana = session.execute(select(User).where(User.name == "ana")).scalar_one()
        session.add(Quota(user_id=ana.id, images_per_day=1))
    response = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "n": 2}, headers=bearer(tokens["ana"]))
    error = openai_error(response, 429, None, "images today")
    assert error["code"] == error["type"] == "insufficient_quota" and int(response.headers["Retry-After"]) > 0


def test_edit_with_a_mask_is_an_inpaint_with_farms_mask(farm):
    ctx, client, tokens = farm
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[16:48, 16:48, 3] = 0
    files = {"image": (io.BytesIO(png(source)), "source.png", "image/png"),
             "mask": (io.BytesIO(png(Image.fromarray(mask, mode="RGBA"))), "mask.png", "image/png"),
             "prompt": "a red door", "n": "1", "response_format": "b64_json"}
    with worker(ctx):
        response = client.post("/v1/images/edits", data=files, headers=bearer(tokens["ana"]), content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    job = only_job(ctx)
    task = job.params["image_task"]
    assert job.interface == "openai" and task["mode"] == "inpaint" and task["mask_upload"]
    stored = np.asarray(Image.open(io.BytesIO(ctx.storage.get(upload_key(job.user_id, task["mask_upload"])))))
    assert stored.shape == (64, 64) and (stored[16:48, 16:48] == 255).all() and stored.sum() == 32 * 32 * 255
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.get_json()["data"][0]["b64_json"]))), dtype=np.int16)
    before = np.asarray(source, dtype=np.int16)
    assert np.abs(result[20:44, 20:44] - before[20:44, 20:44]).mean() > np.abs(result[:8] - before[:8]).mean()


def test_edit_without_a_mask_inpaints_the_transparent_part_or_varies_the_image(farm):
    ctx, client, tokens = farm
    holed = np.full((64, 64, 4), 200, dtype=np.uint8)
    holed[:, 32:, 3] = 0
    headers = bearer(tokens["ana"])
    for image, fidelity, mode in ((Image.fromarray(holed, mode="RGBA"), None, "inpaint"),
                                  (Image.new("RGB", (64, 64), "teal"), "high", "vary_subtle"),
                                  (Image.new("RGB", (64, 64), "navy"), None, "vary_strong")):
        data = {"image": (io.BytesIO(png(image)), "x.png"), "prompt": "a wall", **({"input_fidelity": fidelity} if fidelity else {})}
        openai_error(client.post("/v1/images/edits", data=data, headers=headers, content_type="multipart/form-data"), 504, None)
        with ctx.db.transaction() as session:
            job = session.execute(select(Job).order_by(Job.created_at.desc())).scalars().first()
            assert job.params["image_task"]["mode"] == mode
            states.cancel_job(session, job.id)
    with ctx.db.session() as session:
        inpaint = session.execute(select(Job).where(Job.params["image_task"]["mode"].as_string() == "inpaint")).scalar_one()
    derived = np.asarray(Image.open(io.BytesIO(ctx.storage.get(upload_key(inpaint.user_id, inpaint.params["image_task"]["mask_upload"])))))
    assert (derived[:, 32:] == 255).all() and (derived[:, :32] == 0).all()


def test_edit_on_flux2_uses_every_image_as_a_reference_and_on_an_editor_edits_the_one(farm):
    from tests.support.factories import ensure_model

    ctx, client, tokens = farm
    with ctx.db.transaction() as session:
        ensure_model(session, "m-f2", family="flux2_klein", vram_gb=8.0)
        ensure_model(session, "m-kontext", family="flux_kontext", vram_gb=12.0)
    headers = bearer(tokens["ana"])

    def edit(model, *colors, **extra):
        parts = [("image[]", (io.BytesIO(png(Image.new("RGB", (64, 64), color))), f"{color}.png")) for color in colors]
        data = {"prompt": "the cup from the first on the table of the second", "model": model, **extra}
        return client.post("/v1/images/edits", data={**data, "image[]": [part for _, part in parts]}, headers=headers,
                           content_type="multipart/form-data")

    def newest_job():
        with ctx.db.transaction() as session:
            job = session.execute(select(Job).order_by(Job.created_at.desc())).scalars().first()
            states.cancel_job(session, job.id)
            return job

    openai_error(edit("m-f2", "teal", "navy", size="512x512"), 504, None)  # queued; no worker here
    job = newest_job()
    assert len(job.params["references"]) == 2 and "image_task" not in job.params and (job.width, job.height) == (512, 512)
    openai_error(edit("m-kontext", "teal"), 504, None)
    assert newest_job().params["image_task"]["mode"] == "edit"
    openai_error(edit("m-kontext", "teal", "navy"), 400, "image", "edit one image")


def test_edit_resizes_image_and_mask_to_size_and_names_what_to_fix(farm):
    ctx, client, tokens = farm
    headers = bearer(tokens["ana"])
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    data = {"image": (io.BytesIO(png(Image.new("RGB", (32, 32), "red"))), "x.png"), "mask": (io.BytesIO(png(mask)), "m.png"),
            "prompt": "a wall", "size": "64x64"}
    openai_error(client.post("/v1/images/edits", data=data, headers=headers, content_type="multipart/form-data"), 504, None)
    job = only_job(ctx)
    assert (job.width, job.height) == (64, 64) and job.params["image_task"]["source_size"] == [64, 64]

    def edit(**fields):
        return client.post("/v1/images/edits", data=fields, headers=headers, content_type="multipart/form-data")

    image = lambda: (io.BytesIO(png(Image.new("RGB", (64, 64), "red"))), "x.png")  # noqa: E731
    openai_error(edit(prompt="a wall"), 400, "image", "send the image")
    openai_error(edit(prompt="a wall", image=(io.BytesIO(b"not an image"), "x.png")), 400, "image", "not a PNG")
    openai_error(edit(prompt="a wall", image=image(), mask=(io.BytesIO(png(Image.new("RGB", (64, 64)))), "m.png")), 400, "mask", "alpha channel")
    openai_error(edit(prompt="a wall", image=image(), mask=(io.BytesIO(png(Image.new("RGBA", (32, 32), (0, 0, 0, 0)))), "m.png")), 400, "mask", "must match")
    openai_error(edit(prompt="a wall", image=image(), n="zero"), 400, "n", "")
    openai_error(edit(prompt="a wall", image=image(), size="64"), 400, "size", "WIDTHxHEIGHT")
    openai_error(edit(prompt="a wall", image=image(), stream="true"), 400, "stream", "not supported")
    openai_error(edit(prompt="a wall", image=image(), colour="red"), 400, "colour", "unknown field")
    # Several images: the others are image prompts, which need an IP-Adapter this farm lacks.
    several = client.post("/v1/images/edits", headers=headers, content_type="multipart/form-data",
                          data={"prompt": "a wall", "image[]": [image(), image()]})
    openai_error(several, 400, "image", "IP-Adapter")


def test_variations_vary_the_image(farm):
    ctx, client, tokens = farm
    data = {"image": (io.BytesIO(png(Image.new("RGB", (48, 48), "teal"))), "x.png"), "n": "2", "size": "64x64"}
    openai_error(client.post("/v1/images/variations", data=data, headers=bearer(tokens["ana"]),
                             content_type="multipart/form-data"), 504, None)
    job = only_job(ctx)
    assert job.interface == "openai" and job.num_images == 2 and (job.width, job.height) == (64, 64)
    assert job.params["image_task"]["mode"] == "vary_subtle" and job.params["prompt"]


def test_models_list_and_retrieve(farm):
    ctx, client, tokens = farm
    listed = client.get("/v1/models", headers=bearer(tokens["ana"])).get_json()
    assert listed["object"] == "list"
    [model] = listed["data"]
    assert model["id"] == "tiny-sd" and model["object"] == "model" and model["owned_by"] == "farm" and model["created"] > 0
    assert client.get("/v1/models/tiny-sd", headers=bearer(tokens["ana"])).get_json() == model
    error = openai_error(client.get("/v1/models/dall-e-3", headers=bearer(tokens["ana"])), 404, "model", "does not exist")
    assert error["code"] == "model_not_found"
    openai_error(client.get("/v1/models"), 401, None, "missing")


def test_isolation_holds_through_the_adapter(farm):
    ctx, client, tokens = farm
    with worker(ctx):
        made = client.post("/v1/images/generations", json={"prompt": "a secret", "size": "64x64"}, headers=bearer(tokens["ana"]))
    assert made.status_code == 200
    url = made.get_json()["data"][0]["url"]
    # Ana's image is not Eve's to fetch; Eve's own edit makes a job of hers.
    assert client.get(url, headers=bearer(tokens["eve"])).status_code == 404
    data = {"image": (io.BytesIO(png(Image.new("RGB", (64, 64), "red"))), "x.png"), "prompt": "x"}
    openai_error(client.post("/v1/images/edits", data=data, headers=bearer(tokens["eve"]), content_type="multipart/form-data"), 504, None)
    with ctx.db.session() as session:
        owners = session.execute(select(User.name).join(Job, Job.user_id == User.id).order_by(Job.created_at)).scalars().all()
    assert owners == ["ana", "eve"]


def test_a_database_outage_is_a_503_in_openai_shape(tmp_path):
    # Nothing listens on this port: every connection is refused, as during a PostgreSQL restart.
    from farm.localcluster import free_port
    from farm.settings import Settings

    settings = Settings(home=tmp_path / "home", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/farm")
    client = create_app(settings).test_client()
    for response in (client.get("/v1/models", headers=bearer("farm_x")),
                     client.post("/v1/images/generations", json={"prompt": "a fox"}, headers=bearer("farm_x"))):
        error = openai_error(response, 503, None, "database is unavailable")
        assert error["type"] == "server_error" and error["code"] == "service_unavailable"
        assert response.headers["Retry-After"] == "1"
