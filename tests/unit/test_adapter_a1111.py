"""The AUTOMATIC1111 adapter (/sdapi/v1) on the embedded database: how A1111's
fields translate into farm jobs, its error shapes, Basic auth, options, progress,
interrupt and png-info. Renders themselves are in tests/e2e/test_adapter_a1111.py."""

from __future__ import annotations

import base64
import io
import json

import PIL.Image
import pytest
from PIL.PngImagePlugin import PngInfo

from farm.api import create_app
from farm.api.adapters import a1111
from farm.auth import create_user, issue_token
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, ModelEntry, Quota
from farm.spec import RequestError
from tests.support.factories import ensure_model


@pytest.fixture()
def env(sqlite_settings):
    # Jobs stay queued here (no worker): a render answers 504 after this short wait.
    settings = sqlite_settings.model_copy(update={"adapter_wait_s": 0.2})
    ctx = build_context(settings, events=LocalEvents(live_dir=settings.home / "live"))
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd").weights_sha256 = "ab" * 32
        ensure_model(session, "m-two")
        alice, alice_token = create_user(session, "alice")
        _, bob_token = create_user(session, "bob")
        reader = issue_token(session, alice, name="reader", scope="read")
    app = create_app(settings, context=ctx)
    return ctx, app.test_client(), {"alice": alice_token, "bob": bob_token, "reader": reader}


def basic(token: str, user: str = "alice") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def png_b64(size=(64, 64), colour="teal", mode="RGB", text: dict | None = None) -> str:
    buffer = io.BytesIO()
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    PIL.Image.new(mode, size, colour).save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def only_job(ctx) -> Job:
    with ctx.db.session() as session:
        (job,) = session.query(Job).all()
        return job


# --------------------------------------------------------------------------- translation

@pytest.mark.parametrize("sampler,scheduler,family,expected", [
    ("Euler a", "automatic", "sd", ("euler_ancestral", None)),
    ("k_euler_a", None, "sd", ("euler_ancestral", None)),
    ("DPM++ 2M", "automatic", "sd", ("dpmpp_2m", "karras")),  # A1111's Automatic picks Karras for it
    ("DPM++ 2M", "automatic", "flux", ("dpmpp_2m", None)),  # flow sigmas take no Karras spacing
    ("DPM++ 2M Karras", None, "sd", ("dpmpp_2m", "karras")),  # the names before A1111 1.9
    ("DPM++ 2M SDE", "Exponential", "sd", ("dpmpp_2m_sde", "exponential")),
    ("euler", "Uniform", "sd", ("euler", "normal")),
    (None, "karras", "sd", (None, "karras")),
])
def test_sampler_and_scheduler_names(sampler, scheduler, family, expected):
    assert a1111.parse_sampler(sampler, scheduler, family) == expected


@pytest.mark.parametrize("sampler,scheduler,field", [
    ("DPM2 a", None, "sampler_name"), ("Euler", "align_your_steps", "scheduler"), ("DPM++ 2M Bogus", None, "sampler_name"),
])
def test_unknown_sampler_or_scheduler_names_the_field(sampler, scheduler, field):
    with pytest.raises(RequestError) as caught:
        a1111.parse_sampler(sampler, scheduler, "sd")
    assert caught.value.problems[0].field == field and "farm has" in caught.value.problems[0].message


def test_checkpoint_names_a_client_may_send():
    entries = [ModelEntry(id="Tiny-SD", source="/m", family="sd", vram_gb=1, weights_sha256="0123456789" + "f" * 54),
               ModelEntry(id="other", source="/o", family="sd", vram_gb=1)]
    assert a1111.checkpoint_title(entries[0]) == "Tiny-SD [0123456789]" and a1111.checkpoint_title(entries[1]) == "other"
    for name in ("Tiny-SD", "Tiny-SD [0123456789]", "0123456789", "0123456789" + "f" * 54, "tiny-sd", "tiny-sd [0123456789]"):
        assert a1111.find_checkpoint(entries, name) is entries[0], name
    assert a1111.find_checkpoint(entries, "missing") is None


def test_txt2img_fields_become_one_job_request():
    entries = [ModelEntry(id="m-sd", source="/m", family="sd", vram_gb=1), ModelEntry(id="m-two", source="/t", family="sd", vram_gb=1)]
    body = a1111.A1111Txt2Img(prompt="a fox", negative_prompt="blur", seed=-1, batch_size=2, n_iter=3, steps=12, cfg_scale=5.5,
                              width=256, height=192, sampler_name="DPM++ 2M", scheduler="automatic", styles=["3d-low-poly"],
                              override_settings={"sd_model_checkpoint": "m-two", "CLIP_stop_at_last_layers": 2},
                              eta=0.5, s_churn=1, do_not_save_samples=True, hr_upscaler="Latent", denoising_strength=0.7)
    payload, names = a1111.job_payload(body, entries, default_model="m-sd")
    assert payload == {"prompt": "a fox", "negative_prompt": "blur", "steps": 12, "guidance_scale": 5.5, "num_images": 6,
                       "output_format": "png", "model": "m-two", "sampler": "dpmpp_2m", "scheduler": "karras",
                       "styles": ["3d-low-poly"], "clip_skip": 2, "width": 256, "height": 192}
    assert "seed" not in payload and names["model"] == "override_settings.sd_model_checkpoint"
    # Without an override the user's default model applies; a seed is passed on.
    payload, names = a1111.job_payload(a1111.A1111Txt2Img(prompt="x", seed=7), entries, default_model="m-two")
    assert payload["model"] == "m-two" and payload["seed"] == 7 and names["model"] == "sd_model_checkpoint"
    # A default model removed since is passed over (farm's default applies).
    assert "model" not in a1111.job_payload(a1111.A1111Txt2Img(prompt="x"), entries, default_model="gone")[0]


@pytest.mark.parametrize("fields,field", [
    ({"enable_hr": True}, "enable_hr"),
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"subseed_strength": 0.3}, "subseed_strength"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face"}]}}}, "alwayson_scripts.ADetailer"),
    ({"override_settings": {"sd_vae": "kl-f8.safetensors"}}, "override_settings.sd_vae"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
])
def test_what_farm_cannot_honour_is_refused_naming_the_field(fields, field):
    entries = [ModelEntry(id="m-sd", source="/m", family="sd", vram_gb=1)]
    with pytest.raises(RequestError) as caught:
        a1111.job_payload(a1111.A1111Txt2Img(prompt="x", **fields), entries, None)
    assert [p.field for p in caught.value.problems] == [field]


def test_switched_off_scripts_are_accepted():
    entries = [ModelEntry(id="m-sd", source="/m", family="sd", vram_gb=1)]
    body = a1111.A1111Txt2Img(prompt="x", alwayson_scripts={"ADetailer": {"args": [False]}, "ControlNet": {"args": []}})
    assert a1111.job_payload(body, entries, None)[0]["prompt"] == "x"


def test_img2img_pixels_resize_modes_masks_and_fills():
    wide = PIL.Image.new("RGB", (200, 100), "red")
    for mode in a1111.RESIZE_MODES:
        assert a1111.resize_to(wide, 64, 64, mode).size == (64, 64)
    # Crop and resize keeps the middle; resize and fill keeps all of it, centred.
    assert a1111.resize_to(wide, 64, 64, 2).getpixel((32, 32)) == (255, 0, 0)
    # A mask: white repaints; inverted, black does; an RGBA mask with transparency by its opaque (painted) part.
    mask = PIL.Image.new("L", (4, 4), 0)
    mask.putpixel((0, 0), 255)
    assert a1111.binary_mask(mask, False).getpixel((0, 0)) == 255 and a1111.binary_mask(mask, True).getpixel((0, 0)) == 0
    rgba = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    marked = a1111.binary_mask(rgba, False)
    assert marked.getpixel((1, 1)) == 255 and marked.getpixel((0, 0)) == 0
    # Fill: the masked part takes the colours around it; latent nothing: grey; original: unchanged.
    image = PIL.Image.new("RGB", (32, 32), (0, 0, 255))
    image.paste((255, 255, 255), (8, 8, 24, 24))
    hole = PIL.Image.new("L", (32, 32), 0)
    hole.paste(255, (8, 8, 24, 24))
    assert a1111.filled(image, hole, 0).getpixel((16, 16)) == (0, 0, 255)
    assert a1111.filled(image, hole, 3).getpixel((16, 16)) == (127, 127, 127)
    assert a1111.filled(image, hole, 1).getpixel((16, 16)) == (255, 255, 255)
    assert a1111.filled(image, hole, 0).getpixel((0, 0)) == (0, 0, 255)  # outside the mask: untouched


def test_infotext_parses_back():
    text = 'a fox, "quoted"\nsecond line\nNegative prompt: blur\nSteps: 12, Sampler: euler, Lora hashes: "a: 1, b: 2", Size: 64x64'
    parsed = a1111.parse_infotext(text)
    assert parsed["Prompt"] == 'a fox, "quoted"\nsecond line' and parsed["Negative prompt"] == "blur"
    assert parsed["Steps"] == "12" and parsed["Sampler"] == "euler" and parsed["Size"] == "64x64"
    assert parsed["Lora hashes"] == '"a: 1, b: 2"'
    # A prompt alone, even with a colon, stays the prompt.
    assert a1111.parse_infotext("photo: a cat, style: ink") == {"Prompt": "photo: a cat, style: ink", "Negative prompt": ""}


# --------------------------------------------------------------------------- over HTTP

def test_basic_auth_like_api_auth_clients_and_errors_in_a1111_shape(env):
    _, client, tokens = env
    answer = client.get("/sdapi/v1/options", headers=basic(tokens["alice"]))
    assert answer.status_code == 200 and answer.get_json()["sd_model_checkpoint"] == "m-sd [abababab" + "ab]"
    assert client.get("/sdapi/v1/sd-models", headers={"Authorization": f"Bearer {tokens['alice']}"}).status_code == 200
    wrong = client.get("/sdapi/v1/options", headers=basic("farm_wrong"))
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    body = wrong.get_json()
    assert body["error"] == "HTTPException" and "invalid or revoked" in body["detail"] and body["errors"].startswith("401: ")
    assert client.get("/sdapi/v1/samplers").status_code == 401
    # Basic stays on these routes: farm's own API takes bearer tokens only.
    assert client.get("/api/v1/me", headers=basic(tokens["alice"])).status_code == 401


def test_validation_errors_name_a1111_fields(env):
    ctx, client, tokens = env
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "cfg_scale": 31}, headers=basic(tokens["alice"]))
    assert answer.status_code == 422
    assert answer.get_json()["detail"][0]["loc"] == ["body", "cfg_scale"]
    # farm's own limits come back under A1111's names: 3 x 3 images is over FARM_MAX_IMAGES_PER_JOB (8).
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "batch_size": 3, "n_iter": 3, "steps": 2},
                         headers=basic(tokens["alice"]))
    assert answer.status_code == 422
    (item,) = answer.get_json()["detail"]
    assert item["loc"] == ["body", "batch_size"] and "at most 8" in item["msg"]
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "DPM2 a"}, headers=basic(tokens["alice"]))
    assert answer.get_json()["detail"][0]["loc"] == ["body", "sampler_name"]
    with ctx.db.session() as session:
        assert session.query(Job).count() == 0


def test_txt2img_submits_an_a1111_job_and_times_out_naming_it(env):
    ctx, client, tokens = env
    answer = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a fox", "seed": 11, "steps": 3, "width": 128, "height": 64, "batch_size": 2, "sampler_name": "Euler a",
        "scheduler": "automatic", "cfg_scale": 4, "send_images": True, "save_images": False, "eta": 1.0, "unknown_extension_key": 1,
    }, headers=basic(tokens["alice"]))
    job = only_job(ctx)
    assert answer.status_code == 504 and str(job.id) in answer.get_json()["detail"]
    assert job.interface == "a1111" and job.num_images == 2 and job.seed == 11 and (job.width, job.height) == (128, 64)
    assert job.params["sampler"] == "euler_ancestral" and job.params["guidance_scale"] == 4 and job.model_id == "m-sd"


def test_options_set_the_users_default_model(env):
    ctx, client, tokens = env
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "m-nope"}, headers=basic(tokens["alice"])).status_code == 422
    refused = client.post("/sdapi/v1/options", json={"samples_format": "jpg"}, headers=basic(tokens["alice"]))
    assert refused.status_code == 422 and refused.get_json()["detail"][0]["loc"] == ["body", "samples_format"]
    answer = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "m-two", "samples_format": "png"},
                         headers=basic(tokens["alice"]))
    assert answer.status_code == 200 and answer.get_json() is None
    assert client.get("/sdapi/v1/options", headers=basic(tokens["alice"])).get_json()["sd_model_checkpoint"] == "m-two"
    # Bob's is his own.
    assert client.get("/sdapi/v1/options", headers=basic(tokens["bob"], "bob")).get_json()["sd_model_checkpoint"].startswith("m-sd")
    client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}, headers=basic(tokens["alice"]))
    assert only_job(ctx).model_id == "m-two"
    # farm's own API keeps its default.
    native = client.post("/api/v1/jobs", json={"prompt": "x", "steps": 2, "width": 64, "height": 64},
                         headers={"Authorization": f"Bearer {tokens['alice']}"})
    with ctx.db.session() as session:
        assert session.get(Job, __import__("uuid").UUID(native.get_json()["id"])).model_id == "m-sd"


def test_read_only_tokens_read_png_info_but_do_not_render(env):
    _, client, tokens = env
    image = png_b64(text={"parameters": "a fox\nNegative prompt: blur\nSteps: 3, Seed: 5, Model: m-sd", "farm": '{"params": {}}'})
    answer = client.post("/sdapi/v1/png-info", json={"image": image}, headers=basic(tokens["reader"]))
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["info"].startswith("a fox") and body["items"] == {"farm": '{"params": {}}'}
    assert body["parameters"]["Seed"] == "5" and body["parameters"]["Negative prompt"] == "blur"
    refused = client.post("/sdapi/v1/txt2img", json={"prompt": "x"}, headers=basic(tokens["reader"]))
    assert refused.status_code == 403 and refused.get_json()["detail"] == "this token is read-only"
    bad = client.post("/sdapi/v1/png-info", json={"image": "not base64!"}, headers=basic(tokens["reader"]))
    assert bad.status_code == 422 and bad.get_json()["detail"][0]["loc"] == ["body", "image"]


def test_img2img_with_a_mask_becomes_an_inpaint_job_at_the_asked_size(env):
    ctx, client, tokens = env
    mask = PIL.Image.new("L", (32, 32), 255)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    answer = client.post("/sdapi/v1/img2img", json={
        "prompt": "a fox", "init_images": [png_b64((32, 32))], "mask": base64.b64encode(buffer.getvalue()).decode(),
        "width": 64, "height": 64, "denoising_strength": 0.6, "inpainting_fill": 1, "inpainting_mask_invert": 0,
        "inpaint_full_res": True, "mask_blur": 4, "steps": 2,
    }, headers=basic(tokens["alice"]))
    assert answer.status_code == 504
    job = only_job(ctx)
    task = job.params["image_task"]
    assert task["mode"] == "inpaint" and task["strength"] == 0.6 and task["source_size"] == [64, 64] and task["mask_key"]
    assert (job.width, job.height) == (64, 64) and job.interface == "a1111"
    with PIL.Image.open(io.BytesIO(ctx.storage.get(task["mask_key"]))) as stored:
        assert stored.size == (64, 64) and stored.getextrema() == (255, 255)
    # Without a mask: a variation at the asked strength; two init images are refused.
    client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png_b64((64, 64))], "width": 64, "height": 64,
                                           "denoising_strength": 0.8, "steps": 2}, headers=basic(tokens["alice"]))
    with ctx.db.session() as session:
        vary = session.query(Job).filter(Job.id != job.id).one()
    assert vary.params["image_task"]["mode"] == "vary_strong" and vary.params["image_task"]["strength"] == 0.8
    two = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png_b64(), png_b64()]}, headers=basic(tokens["alice"]))
    assert two.status_code == 422 and two.get_json()["detail"][0]["loc"] == ["body", "init_images"]
    odd = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [png_b64()], "width": 60}, headers=basic(tokens["alice"]))
    assert odd.get_json()["detail"][0]["loc"] == ["body", "width"]


def test_progress_and_interrupt_see_only_the_callers_jobs(env):
    ctx, client, tokens = env
    idle = client.get("/sdapi/v1/progress", headers=basic(tokens["alice"])).get_json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    client.post("/sdapi/v1/txt2img", json={"prompt": "bob's", "steps": 2, "width": 64, "height": 64}, headers=basic(tokens["bob"], "bob"))
    assert client.get("/sdapi/v1/progress", headers=basic(tokens["alice"])).get_json()["state"]["job_count"] == 0
    client.post("/sdapi/v1/txt2img", json={"prompt": "alice's", "steps": 2, "width": 64, "height": 64}, headers=basic(tokens["alice"]))
    with ctx.db.session() as session:
        mine = session.query(Job).filter(Job.params["prompt"].as_string() == "alice's").one()
    seen = client.get("/sdapi/v1/progress", headers=basic(tokens["alice"])).get_json()
    assert seen["state"]["job_count"] == 1 and seen["current_task"] == f"task({mine.id})" and seen["textinfo"].startswith("Waiting")
    assert client.post("/sdapi/v1/interrupt", headers=basic(tokens["alice"])).get_json() == {}
    with ctx.db.session() as session:
        statuses = {job.params["prompt"]: job.status for job in session.query(Job)}
    assert statuses == {"alice's": "canceled", "bob's": "queued"}


def test_quota_refusal_is_a_429_in_a1111_shape(env):
    ctx, client, tokens = env
    with ctx.db.transaction() as session:
        from farm.models import User

        alice = session.query(User).filter_by(name="alice").one()
        session.add(Quota(user_id=alice.id, max_steps=4))
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 20, "width": 64, "height": 64},
                         headers=basic(tokens["alice"]))
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 0
    body = answer.get_json()
    assert set(body) == {"error", "detail", "body", "errors"} and "at most 4 steps" in body["detail"]


def test_listings_clients_ask_for_before_rendering(env):
    _, client, tokens = env
    get = lambda path: client.get(f"/sdapi/v1/{path}", headers=basic(tokens["alice"]))  # noqa: E731
    styles = get("prompt-styles").get_json()
    assert styles and all(set(style) == {"name", "prompt", "negative_prompt"} for style in styles)
    assert "3d-low-poly" in {style["name"] for style in styles}
    assert [u["name"] for u in get("upscalers").get_json()] == ["None"]
    assert get("sd-vae").get_json() == [] and get("latent-upscale-modes").get_json() == []
    assert get("scripts").get_json() == {"txt2img": [], "img2img": []}


def test_automatic_schedule_follows_the_model_that_will_render():
    sd = ModelEntry(id="m-sd", source="/m", family="sd", vram_gb=1)
    flux = ModelEntry(id="m-flux", source="/f", family="flux", vram_gb=1)
    body = a1111.A1111Txt2Img(prompt="x", sampler_name="DPM++ 2M", scheduler="automatic")
    assert a1111.job_payload(body, [flux, sd], None, fallback=sd)[0]["scheduler"] == "karras"
    # farm's default is a FLUX model: no Karras spacing on flow sigmas.
    assert "scheduler" not in a1111.job_payload(body, [flux, sd], None, fallback=flux)[0]
    # The user's checkpoint decides over farm's default.
    assert a1111.job_payload(body, [flux, sd], "m-sd", fallback=flux)[0]["scheduler"] == "karras"


def test_progress_of_a_running_job_shows_its_live_step_and_latest_preview(env):
    from farm import states
    from farm.models import Worker

    ctx, client, tokens = env
    client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 20, "width": 64, "height": 64}, headers=basic(tokens["alice"]))
    job = only_job(ctx)
    with ctx.db.transaction() as session:
        session.add(Worker(id="gpu0", host="h", queue="q", device="cpu", device_name="cpu", vram_total_gb=8, vram_free_gb=8,
                           max_pixels=10**7))
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, "gpu0", 30)
        states.start_job(session, job.id, 1, "gpu0", 30)
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (16, 16), "navy").save(jpeg, format="JPEG")
    preview = base64.b64encode(jpeg.getvalue()).decode()
    ctx.events.publish_live(job.id, None, {"type": "preview", "step": 4, "total": 20, "eta_s": 3.0, "jpeg": preview})
    # A progress message after the preview: the image shown is still the latest preview.
    ctx.events.publish_live(job.id, None, {"type": "progress", "step": 5, "total": 20, "eta_s": 2.5})
    seen = client.get("/sdapi/v1/progress", headers=basic(tokens["alice"])).get_json()
    assert seen["progress"] == 0.25 and seen["eta_relative"] == 2.5 and seen["current_image"] == preview
    assert seen["state"]["sampling_step"] == 5 and seen["state"]["sampling_steps"] == 20 and seen["textinfo"] == "Step 5 of 20"
    skipped = client.get("/sdapi/v1/progress?skip_current_image=true", headers=basic(tokens["alice"])).get_json()
    assert skipped["current_image"] is None and skipped["progress"] == 0.25
    # The running job falls to its owner's interrupt.
    client.post("/sdapi/v1/interrupt", headers=basic(tokens["alice"]))
    assert only_job(ctx).status == "canceled"
