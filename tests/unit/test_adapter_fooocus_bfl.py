"""The Fooocus-API and BFL FLUX API adapters (issue 20): their requests translate
to farm's generation request field by field, what farm cannot render is
refused naming the client's field, and on the embedded database their routes
answer in their own shapes (auth by X-API-KEY / x-key, isolation, quotas)."""

from __future__ import annotations

import base64
import io
import uuid

import PIL.Image
import pytest

from sqlalchemy import select

from farm.api.adapters import bfl, fooocus
from farm.auth import issue_token
from farm.models import User
from farm.spec import RequestError
from tests.unit.test_api import env as api_env  # noqa: F401  (a fixture)


def png(side: int = 64, color: str = "red") -> str:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (side, side), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def fooocus_request(model=fooocus.FooocusText2Img, **fields):
    return model.model_validate({"prompt": "a red fox", **fields})


def refused_field(call) -> str:
    with pytest.raises(RequestError) as caught:
        call()
    return caught.value.problems[0].field


# --------------------------------------------------------------------------- Fooocus translation

def test_fooocus_text_fields_map_to_farms():
    req = fooocus_request(
        negative_prompt="blurry", style_selections=["Fooocus V2", "paint-classical-oil"],
        performance_selection="Extreme Speed", aspect_ratios_selection="1152*896 | 9:7", image_number=3,
        image_seed=42, guidance_scale=5.5, sharpness=9, base_model_name="juggernaut.safetensors",
        refiner_model_name="None", refiner_switch=0.6,
        loras=[{"model_name": "None", "weight": 1}, {"model_name": "detail.safetensors", "weight": 0.4},
               {"model_name": "off", "weight": 1, "enabled": False}],
        advanced_params={"sampler_name": "dpmpp_2m_sde_gpu", "scheduler_name": "karras", "overwrite_step": 12,
                         "adm_scaler_positive": 1.5, "freeu_enabled": True},
        save_extension="jpg", webhook_url="https://hooks.example.com/fooocus")
    t = fooocus.translate(req, "text")
    assert t.payload == {
        "prompt": "a red fox", "negative_prompt": "blurry", "prompt_expansion": True, "styles": ["paint-classical-oil"],
        "performance": "extreme_speed", "num_images": 3, "seed": 42, "guidance_scale": 5.5, "model": "juggernaut",
        "loras": [{"name": "detail", "weight": 0.4}], "output_format": "jpeg",
        "webhook": {"url": "https://hooks.example.com/fooocus"}, "sampler": "dpmpp_2m_sde", "scheduler": "karras",
        "steps": 12, "freeu": True, "aspect_ratio": "1152*896"}
    assert not t.images
    # Errors about farm's fields reach the client under its own names.
    assert t.fields["num_images"] == "image_number" and t.fields["loras.0.name"] == "loras.1.model_name"
    assert t.fields["steps"] == "advanced_params.overwrite_step" and t.fields["styles"] == "style_selections"


def test_fooocus_defaults_leave_farms_defaults():
    payload = fooocus.translate(fooocus_request(image_seed=-1, refiner_model_name="None"), "text").payload
    assert payload == {"prompt": "a red fox", "negative_prompt": ""}  # Speed, -1 and 'None' are Fooocus' defaults


def test_fooocus_refiner_and_overwritten_size():
    t = fooocus.translate(fooocus_request(refiner_model_name="refiner-xl", refiner_switch=0.7, aspect_ratios_selection="1024*1024",
                                          advanced_params={"overwrite_width": 640, "overwrite_height": 512}), "text")
    assert t.payload["refiner"] == "refiner-xl" and t.payload["refiner_switch"] == 0.7
    assert (t.payload["width"], t.payload["height"]) == (640, 512) and "aspect_ratio" not in t.payload


@pytest.mark.parametrize("method,value,mode", [
    ("Vary (Subtle)", None, "vary_subtle"), ("Vary (Strong)", None, "vary_strong"),
    ("Upscale (1.5x)", None, "upscale_1.5x"), ("Upscale (2x)", None, "upscale_2x"),
    ("Upscale (Fast 2x)", None, "upscale_2x"), ("Upscale (Custom)", 1.5, "upscale_1.5x")])
def test_fooocus_upscale_or_vary_methods(method, value, mode):
    req = fooocus_request(fooocus.FooocusUpscaleVary, input_image=png(), uov_method=method, upscale_value=value,
                          aspect_ratios_selection="1152*896", advanced_params={"overwrite_vary_strength": 0.4,
                                                                                 "overwrite_upscale_strength": 0.3})
    t = fooocus.translate(req, "uov")
    assert t.payload["image_mode"] == mode and "aspect_ratio" not in t.payload  # the size follows the source
    assert t.payload["denoise"] == (0.4 if mode.startswith("vary") else 0.3)
    assert [(i.client_field, i.path) for i in t.images] == [("input_image", ("image",))]
    assert t.images[0].data.startswith(b"\x89PNG")


@pytest.mark.parametrize("fields,where", [
    ({"uov_method": "Disabled"}, "uov_method"),
    ({"uov_method": "Upscale (Custom)", "upscale_value": 3}, "upscale_value"),
    ({"input_image": "not an image!"}, "input_image"),
])
def test_fooocus_upscale_or_vary_refusals_name_the_field(fields, where):
    req = fooocus_request(fooocus.FooocusUpscaleVary, **{"input_image": png(), **fields})
    assert refused_field(lambda: fooocus.translate(req, "uov")) == where


def test_fooocus_inpaint_and_outpaint():
    inpaint = fooocus.translate(fooocus_request(fooocus.FooocusInpaintOutpaint, input_image=png(), input_mask=png(color="white"),
                                                inpaint_additional_prompt="a hat"), "inpaint")
    assert inpaint.payload["image_mode"] == "inpaint" and inpaint.payload["prompt"] == "a hat\na red fox"
    assert {i.client_field for i in inpaint.images} == {"input_image", "input_mask"}
    outpaint = fooocus.translate(fooocus_request(fooocus.FooocusInpaintOutpaint, input_image=png(),
                                                 outpaint_selections=["Left", "Top"]), "inpaint")
    assert outpaint.payload["image_mode"] == "outpaint" and outpaint.payload["outpaint"] == ["left", "top"]


@pytest.mark.parametrize("fields,where", [
    ({}, "input_mask"),  # neither a mask nor directions
    ({"input_mask": png(), "outpaint_selections": ["Left"]}, "input_mask"),
    ({"outpaint_selections": ["Left"], "outpaint_distance_left": 64}, "outpaint_distance_left"),
])
def test_fooocus_painting_refusals_name_the_field(fields, where):
    req = fooocus_request(fooocus.FooocusInpaintOutpaint, input_image=png(), **fields)
    assert refused_field(lambda: fooocus.translate(req, "inpaint")) == where


def test_fooocus_image_prompts():
    slots = [{"cn_img": None}, {"cn_img": png(), "cn_weight": 0.8, "cn_stop": 0.4}, {"cn_img": png(color="blue"), "cn_weight": 0.8}]
    t = fooocus.translate(fooocus_request(fooocus.FooocusImagePromptRequest, image_prompts=slots), "prompt")
    assert t.payload["image_prompts"] == [{"image": None}, {"image": None}] and t.payload["image_prompt_weight"] == 0.8
    assert [i.client_field for i in t.images] == ["image_prompts.1.cn_img", "image_prompts.2.cn_img"]
    assert t.fields["image_prompts.0.image"] == "image_prompts.1.cn_img"
    for prompts, where in (([{"cn_img": png(), "cn_type": "FaceSwap"}], "image_prompts.0.cn_type"),
                           ([{"cn_img": png(), "cn_weight": 0.5}, {"cn_img": png(), "cn_weight": 0.9}], "image_prompts.1.cn_weight"),
                           ([{"cn_img": None}], "image_prompts")):
        req = fooocus_request(fooocus.FooocusImagePromptRequest, image_prompts=prompts)
        assert refused_field(lambda: fooocus.translate(req, "prompt")) == where


def test_fooocus_v1_multipart_form_reads_as_the_json_body():
    image = base64.b64decode(png())
    values = fooocus.form_values(
        {"prompt": "a red fox", "style_selections": "paint-classical-oil, Fooocus V2", "outpaint_selections": "",
         "loras": '[{"model_name": "detail", "weight": 0.3}]', "advanced_params": "", "refiner_model_name": "None",
         "image_number": "2", "cn_stop1": "0.5", "cn_weight1": "0.7", "cn_type1": "ImagePrompt", "cn_type2": "ImagePrompt"},
        {"input_image": image, "cn_img1": image, "cn_img2": b""})
    assert values["style_selections"] == ["paint-classical-oil", "Fooocus V2"] and "outpaint_selections" not in values
    assert values["loras"] == [{"model_name": "detail", "weight": 0.3}] and "advanced_params" not in values
    assert "refiner_model_name" not in values and values["input_image"] == base64.b64encode(image).decode()
    assert values["image_prompts"] == [{"cn_stop": "0.5", "cn_weight": "0.7", "cn_type": "ImagePrompt", "cn_img": values["input_image"]},
                                       {"cn_type": "ImagePrompt"}]
    req = fooocus.FooocusImagePromptRequest.model_validate(values)
    assert req.image_number == 2 and req.image_prompts[0].cn_weight == 0.7
    assert refused_field(lambda: fooocus.form_values({"loras": "[{"}, {})) == "loras"


# --------------------------------------------------------------------------- BFL translation

def test_bfl_fields_map_to_farms():
    body = bfl.BflRequest.model_validate({"prompt": "a lighthouse", "width": 1024, "height": 768, "seed": 9, "steps": 20,
                                          "guidance": 3.5, "output_format": "png", "prompt_upsampling": True,
                                          "safety_tolerance": 6, "webhook_url": "https://hooks.example.com/bfl"})
    payload, fields = bfl.translate(body, "my-flux")
    assert payload == {"prompt": "a lighthouse", "output_format": "png", "model": "my-flux", "width": 1024, "height": 768,
                       "seed": 9, "steps": 20, "guidance_scale": 3.5, "prompt_expansion": True,
                       "webhook": {"url": "https://hooks.example.com/bfl"}}
    assert fields["guidance_scale"] == "guidance" and fields["webhook.secret"] == "webhook_secret"
    default, _ = bfl.translate(bfl.BflRequest.model_validate({"prompt": "x"}), None)
    assert default == {"prompt": "x", "output_format": "jpeg"}  # BFL's default format; farm's default model


@pytest.mark.parametrize("ratio,size", [("1:1", (1024, 1024)), ("16:9", (1376, 768)), ("9:16", (768, 1376)), ("21:9", (1568, 672))])
def test_bfl_aspect_ratio_gives_a_megapixel_frame(ratio, size):
    payload, fields = bfl.translate(bfl.BflRequest.model_validate({"prompt": "x", "aspect_ratio": ratio}), None)
    width, height = payload["width"], payload["height"]
    assert (width, height) == size and width % 32 == height % 32 == 0
    assert abs(width * height / (1024 * 1024) - 1) < 0.1 and fields["width"] == "aspect_ratio"


@pytest.mark.parametrize("body,where", [
    ({"aspect_ratio": "16:9", "width": 512}, "aspect_ratio"),
    ({"aspect_ratio": "9:1"}, "aspect_ratio"),
    ({"image_prompt_strength": 0.5}, "image_prompt_strength"),
    ({"webhook_secret": "whsec_abc"}, "webhook_secret"),
])
def test_bfl_refusals_name_the_field(body, where):
    req = bfl.BflRequest.model_validate({"prompt": "x", **body})
    assert refused_field(lambda: bfl.translate(req, None)) == where


def test_bfl_input_images_are_flux2_references_or_the_image_an_editing_model_edits():
    three = bfl.BflRequest.model_validate({"prompt": "x", "input_image": "AAAA", "input_image_2": "BBBB", "input_image_3": "CCCC"})
    payload, fields = bfl.translate(three, "m-f2", "flux2")
    assert payload["references"] == [{"image": None}] * 3 and "image_mode" not in payload
    assert fields["references.1"] == "input_image_2" and fields["references.2.image"] == "input_image_3"
    one = bfl.BflRequest.model_validate({"prompt": "make it night", "input_image": "AAAA"})
    payload, fields = bfl.translate(one, "m-kontext", "flux_kontext")
    assert payload["image_mode"] == "edit" and "image" in payload and "references" not in payload
    assert fields["image"] == "input_image"
    assert refused_field(lambda: bfl.translate(three, "m-kontext", "flux_kontext")) == "input_image_2"
    assert refused_field(lambda: bfl.translate(one, "m-sd", "sd")) == "input_image"
    gap = bfl.BflRequest.model_validate({"prompt": "x", "input_image": "AAAA", "input_image_3": "CCCC"})
    assert refused_field(lambda: bfl.translate(gap, "m-f2", "flux2")) == "input_image_2"
    url = bfl.BflRequest.model_validate({"prompt": "x", "input_image": "https://example.com/a.png"})
    with pytest.raises(RequestError, match="does not fetch images from URLs"):
        bfl.translate(url, "m-f2", "flux2")


def test_bfl_model_names():
    assert bfl.farm_model("my-flux", {"my-flux"}) == "my-flux"
    assert bfl.farm_model("flux-pro-1.1", {"my-flux"}) is None  # farm's default model
    with pytest.raises(Exception, match="no model 'dalle'"):
        bfl.farm_model("dalle", {"my-flux"})


# --------------------------------------------------------------------------- the routes, on the embedded database

@pytest.fixture()
def env(api_env):
    """test_api's farm (model m-sd; alice, bob, root), with a read-only token of alice's."""
    ctx, client, tokens = api_env
    with ctx.db.transaction() as session:
        alice = session.execute(select(User).where(User.name == "alice")).scalar_one()
        reader = issue_token(session, alice, "reader", scope="read")
        alice_id = alice.id
    return ctx, client, {**tokens, "reader": reader, "alice_id": alice_id}


def fooocus_job(client, token, **body):
    return client.post("/v1/generation/text-to-image", headers={"X-API-KEY": token},
                       json={"prompt": "a red fox", "aspect_ratios_selection": "64*64", "async_process": True, **body})


def test_fooocus_routes_answer_in_fooocus_shapes(env):
    _, client, tokens = env
    job = fooocus_job(client, tokens["alice"]).get_json()
    assert job["job_stage"] == "WAITING" and job["job_type"] == "Text to Image" and job["job_result"] is None
    found = client.get("/v1/generation/query-job", query_string={"job_id": job["job_id"]}, headers={"X-API-KEY": tokens["alice"]})
    assert found.status_code == 200 and found.get_json()["job_id"] == job["job_id"]
    # Another user's job, and a job id that is none: Fooocus-API's not-found job, 404.
    for job_id in (job["job_id"], "nope"):
        other = client.get("/v1/generation/query-job", query_string={"job_id": job_id}, headers={"X-API-KEY": tokens["bob"]})
        assert other.status_code == 404 and other.get_json() == fooocus.NOT_FOUND
    assert client.get("/v1/engines/all-models", headers={"Authorization": f"Bearer {tokens['bob']}"}).get_json() == \
        {"model_filenames": ["m-sd"], "lora_filenames": []}
    styles = client.get("/v1/engines/styles", headers={"X-API-KEY": tokens["bob"]}).get_json()
    assert styles[0] == "Fooocus V2" and "paint-classical-oil" in styles


def test_fooocus_unknown_style_is_422_listing_close_ones(env):
    _, client, tokens = env
    response = fooocus_job(client, tokens["alice"], style_selections=["paint-clasical-oil"])
    assert response.status_code == 422
    [problem] = response.get_json()["detail"]
    assert problem["loc"] == ["body", "style_selections"] and "did you mean 'paint-classical-oil'" in problem["msg"]


def test_fooocus_errors_name_fooocus_fields_and_keep_statuses(env):
    _, client, tokens = env
    detail = fooocus_job(client, tokens["alice"], image_number=20).get_json()["detail"]
    assert detail[0]["loc"] == ["body", "image_number"] and "at most 8" in detail[0]["msg"]
    detail = fooocus_job(client, tokens["alice"], base_model_name="juggernaut.safetensors").get_json()["detail"]
    assert detail[0]["loc"] == ["body", "base_model_name"] and "unknown model 'juggernaut'" in detail[0]["msg"]
    unauthenticated = client.post("/v1/generation/text-to-image", json={"prompt": "x"})
    assert unauthenticated.status_code == 401 and "X-API-KEY" in unauthenticated.get_json()["detail"]
    read_only = fooocus_job(client, tokens["reader"])
    assert read_only.status_code == 403 and read_only.get_json() == {"detail": "this token is read-only"}
    malformed = client.post("/v1/generation/text-to-image", data="{", content_type="application/json", headers={"X-API-KEY": tokens["alice"]})
    assert malformed.status_code == 400 and malformed.get_json()["detail"][0]["loc"] == ["body"]


def test_fooocus_v1_multipart_upscale_is_a_job(env):
    ctx, client, tokens = env
    form = {"prompt": "a red fox", "uov_method": "Upscale (2x)", "async_process": "true", "style_selections": "",
            "input_image": (io.BytesIO(base64.b64decode(png())), "fox.png")}
    response = client.post("/v1/generation/image-upscale-vary", data=form, content_type="multipart/form-data",
                           headers={"X-API-KEY": tokens["alice"]})
    assert response.status_code == 200, response.get_data(as_text=True)
    job = response.get_json()
    assert job["job_type"] == "Image Upscale or Variation"
    from farm.services.jobs import get_job

    with ctx.db.session() as session:
        alice = session.get(User, tokens["alice_id"])
    stored = get_job(ctx, alice, job["job_id"])
    assert stored.interface == "fooocus" and stored.params["image_task"]["mode"] == "upscale_2x"
    assert (stored.width, stored.height) == (128, 128)


def test_bfl_routes_answer_in_bfl_shapes(env):
    _, client, tokens = env
    response = client.post("/v1/flux-dev", json={"prompt": "a lighthouse", "width": 64, "height": 64}, headers={"x-key": tokens["alice"]})
    assert response.status_code == 200
    accepted = response.get_json()
    assert set(accepted) == {"id", "polling_url"} and accepted["polling_url"].endswith(f"/v1/get_result?id={accepted['id']}")
    pending = client.get(accepted["polling_url"], headers={"x-key": tokens["alice"]}).get_json()
    assert pending["status"] == "Pending" and pending["result"] is None and pending["progress"] == 0.0
    for token in (tokens["bob"],):
        assert client.get("/v1/get_result", query_string={"id": accepted["id"]}, headers={"x-key": token}).get_json() == \
            {"id": accepted["id"], "status": "Task not found", "result": None, "progress": None, "details": None}
    unknown = client.post("/v1/dalle-3", json={"prompt": "x"}, headers={"x-key": tokens["alice"]})
    assert unknown.status_code == 404 and "no model 'dalle-3'" in unknown.get_json()["detail"]
    invalid = client.post("/v1/m-sd", json={"prompt": "x", "guidance": "lots"}, headers={"x-key": tokens["alice"]})
    assert invalid.status_code == 422 and invalid.get_json()["detail"][0]["loc"] == ["body", "guidance"]


def test_bfl_input_images_reach_the_job_as_references_and_an_edit_source(env):
    from farm.services.jobs import get_job
    from tests.support.factories import ensure_model

    ctx, client, tokens = env
    with ctx.db.transaction() as session:
        ensure_model(session, "m-f2", family="flux2_klein", vram_gb=8.0)
        ensure_model(session, "m-kontext", family="flux_kontext", vram_gb=12.0)
    headers = {"x-key": tokens["alice"]}
    image = png(64)
    response = client.post("/v1/m-f2", json={"prompt": "the cat from the first in the room of the second", "width": 512,
                                             "height": 512, "input_image": image, "input_image_2": image}, headers=headers)
    assert response.status_code == 200, response.get_json()
    with ctx.db.session() as session:
        alice = session.get(User, tokens["alice_id"])
    job = get_job(ctx, alice, response.get_json()["id"])
    assert [ref["upload"] for ref in job.params["references"]] != [None, None] and len(job.params["references"]) == 2
    edit = client.post("/v1/m-kontext", json={"prompt": "make it night", "input_image": image}, headers=headers)
    assert edit.status_code == 200, edit.get_json()
    assert get_job(ctx, alice, edit.get_json()["id"]).params["image_task"]["mode"] == "edit"
    # [klein] takes four references: a fifth is refused, the error naming BFL's field.
    five = {"input_image": image, **{f"input_image_{n}": image for n in range(2, 6)}}
    too_many = client.post("/v1/m-f2", json={"prompt": "x", "width": 512, "height": 512, **five}, headers=headers)
    assert too_many.status_code == 422
    assert too_many.get_json()["detail"][0]["loc"] == ["body", "input_image"] and "at most 4" in too_many.get_json()["detail"][0]["msg"]
    none = client.post("/v1/m-sd", json={"prompt": "x", "input_image": image}, headers=headers)
    assert none.status_code == 422 and none.get_json()["detail"][0]["loc"] == ["body", "input_image"]


def test_other_v1_routes_win_over_bfl_models(env):
    _, client, tokens = env
    # Without the converter's exclusions a POST to these would queue a BFL job for model "models".
    for path in ("/v1/models", "/v1/get_result"):
        response = client.post(path, json={"prompt": "x"}, headers={"x-key": tokens["alice"], "Authorization": f"Bearer {tokens['alice']}"})
        assert response.status_code == 405, (path, response.get_data(as_text=True))
    assert client.get("/v1/get_result", query_string={"id": "x"}, headers={"x-key": tokens["alice"]}).status_code == 200


def test_quota_refusals_come_in_each_interfaces_shape(env):
    _, client, tokens = env
    quota = client.put(f"/api/v1/users/{tokens['alice_id']}/quota", json={"images_per_day": 0},
                       headers={"Authorization": f"Bearer {tokens['root']}"})
    assert quota.status_code == 200, quota.get_data(as_text=True)
    for response in (fooocus_job(client, tokens["alice"]),
                     client.post("/v1/flux-dev", json={"prompt": "x", "width": 64, "height": 64}, headers={"x-key": tokens["alice"]})):
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 0
        assert set(response.get_json()) == {"detail"} and "images today" in response.get_json()["detail"]


def test_fooocus_sync_request_that_outlasts_the_wait_is_504_naming_the_job(env, monkeypatch):
    ctx, client, tokens = env
    monkeypatch.setattr(ctx.settings, "adapter_wait_s", 0.2)  # no worker here: the job stays queued
    response = fooocus_job(client, tokens["alice"], async_process=False)
    assert response.status_code == 504
    detail = response.get_json()["detail"]
    assert "is still queued after 0.2 s" in detail and "query-job?job_id=" in detail
    job_id = detail.split("job_id=")[1].split(",")[0]
    found = client.get("/v1/generation/query-job", query_string={"job_id": job_id}, headers={"X-API-KEY": tokens["alice"]})
    assert found.get_json()["job_stage"] == "WAITING"  # it goes on


def test_bfl_malformed_model_name_is_400_in_bfl_shape(env):
    _, client, tokens = env
    response = client.post("/v1/null,null", json={"prompt": "x"}, headers={"x-key": tokens["alice"]})
    assert response.status_code == 400
    assert response.get_json()["detail"][0]["loc"] == ["path", "model"]


def test_fooocus_form_with_odd_field_names_is_422_naming_them(env):
    # Found by the API fuzz test: a field named '³' passed isdigit() and broke int() (a 500).
    _, client, tokens = env
    response = client.post("/v1/generation/image-inpaint-outpaint", data={"³": "{}", "input_image": "x"},
                           content_type="multipart/form-data", headers={"X-API-KEY": tokens["alice"]})
    assert response.status_code == 422
    assert ["body", "³"] in [problem["loc"] for problem in response.get_json()["detail"]]


def test_webhook_urls_become_the_jobs_webhook(env, monkeypatch):
    ctx, client, tokens = env
    monkeypatch.setattr(ctx.settings, "webhook_allow", "127.0.0.1")
    from farm.models import Job

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    fooocus_id = fooocus_job(client, tokens["alice"], webhook_url="http://127.0.0.1:9/fooocus").get_json()["job_id"]
    bfl_id = client.post("/v1/flux-dev", json={"prompt": "x", "width": 64, "height": 64, "webhook_url": "http://127.0.0.1:9/bfl",
                                               "webhook_secret": secret}, headers={"x-key": tokens["alice"]}).get_json()["id"]
    with ctx.db.session() as session:
        fooocus_row, bfl_row = session.get(Job, uuid.UUID(fooocus_id)), session.get(Job, uuid.UUID(bfl_id))
        assert fooocus_row.webhook_url == "http://127.0.0.1:9/fooocus" and fooocus_row.webhook_secret.startswith("whsec_")
        assert (bfl_row.webhook_url, bfl_row.webhook_secret) == ("http://127.0.0.1:9/bfl", secret)
        assert fooocus_row.interface == "fooocus" and bfl_row.interface == "bfl"


def test_fooocus_form_part_without_a_name_is_left_out(env):
    # Found by the API fuzz test: werkzeug keys a nameless file part None, which broke the cn_img slot lookup (a 500).
    _, client, tokens = env
    body = (b"--b\r\nContent-Disposition: form-data; filename=\"x.png\"\r\n\r\n\x89PNG\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na red fox\r\n--b--\r\n")
    response = client.post("/v1/generation/image-prompt", data=body, headers={
        "X-API-KEY": tokens["alice"], "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == ["body", "image_prompts"]
