"""Every model family renders through the worker's job path with every sampler it supports.

Each family gets a tiny random-weight pipeline written to disk and registered;
jobs are submitted through the job service (the API's validation and
resolution), assigned, and run by a WorkerRuntime exactly as a Celery task
runs them: fenced start, load from disk, render, encode, upload, record.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from farm import states
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job
from farm.registry import add_model
from farm.services import jobs as job_service
from farm.spec import RequestError
from farm.workers import render as render_module
from farm.families import available_samplers, get_family
from farm.workers.pipelines import read_image_text
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model

FAMILIES = ("sd", "sdxl", "flux", "sd3")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    dirs = {family: write_tiny_model(root / family, family=family) for family in FAMILIES}
    dirs["flux-schnell"] = write_tiny_model(root / "flux-schnell", family="flux", variant="schnell")
    return dirs


@pytest.fixture()
def farm(sqlite_settings, tiny_dirs):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        for model_id, path in tiny_dirs.items():
            add_model(session, f"tiny-{model_id}", str(path))
        user, _ = create_user(session, "ana")
    return ctx, user, WorkerRuntime(ctx, name="w1")


def run_job(ctx, user, runtime, request: dict) -> Job:
    job = job_service.submit_job(ctx, user, request)
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, "w1", 30)
    outcome = render_module.execute_job(runtime, job.id, 1)
    with ctx.db.session() as session:
        row = session.get(Job, job.id)
        assert outcome == "succeeded", row.error
        session.expunge(row)
        row.loaded_outputs = [(o.object_key, o.lineage) for o in session.get(Job, job.id).outputs]
    return row


CASES = [(model, sampler) for model, family in
         (("sd", "sd"), ("sdxl", "sdxl"), ("flux", "flux"), ("flux-schnell", "flux"), ("sd3", "sd3"))
         for sampler in available_samplers(family)]


@pytest.mark.parametrize(("model", "sampler"), CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_every_family_renders_every_sampler_through_the_worker(farm, model, sampler):
    ctx, user, runtime = farm
    job = run_job(ctx, user, runtime, {"prompt": "a lighthouse at dawn", "model": f"tiny-{model}", "width": 64,
                                       "height": 80, "steps": 2, "sampler": sampler, "seed": 5})
    [(key, lineage)] = job.loaded_outputs
    image = Image.open(io.BytesIO(ctx.storage.get(key)))
    assert image.size == (64, 80)
    resolved = lineage["params"]
    assert resolved["sampler"] == sampler and resolved["steps"] == 2 and resolved["seed"] == 5
    assert lineage["model"]["id"] == f"tiny-{model}"


def test_each_family_lists_its_samplers():
    # Every sampler a family admits is available here (torchsde is installed).
    for family in FAMILIES:
        assert available_samplers(family) == get_family(family).samplers


@pytest.mark.parametrize(("model", "request_fields", "field", "message"), [
    ("flux", {"sampler": "heun"}, "sampler", "not available for flux models"),
    ("sd3", {"sampler": "ddim"}, "sampler", "not available for sd3 models"),
    ("flux", {"sampler": "dpmpp_2m", "scheduler": "karras"}, "sampler", "'karras' is not available with sampler 'dpmpp_2m' on flux"),
    ("flux", {"width": 72, "height": 64}, "width", "not a multiple of 16"),
    ("sd3", {"width": 64, "height": 88}, "height", "not a multiple of 16"),
])
def test_what_a_family_cannot_do_is_refused_with_the_field(farm, model, request_fields, field, message):
    ctx, user, _ = farm
    request = {"prompt": "a cat", "model": f"tiny-{model}", "width": 64, "height": 64, **request_fields}
    with pytest.raises(RequestError) as caught:
        job_service.submit_job(ctx, user, request)
    problems = {p.field: p.message for p in caught.value.problems}
    assert field in problems and message in problems[field], problems


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_every_output_format_carries_the_parameters(farm, fmt, magic):
    ctx, user, runtime = farm
    job = run_job(ctx, user, runtime, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2,
                                       "seed": 9, "output_format": fmt})
    [(key, lineage)] = job.loaded_outputs
    data = ctx.storage.get(key)
    assert data.startswith(magic) and key.endswith("." + ("jpg" if fmt == "jpeg" else fmt))
    text = read_image_text(data)
    assert "Seed: 9" in text["parameters"] and "Steps: 2" in text["parameters"]
    assert '"seed":9' in text["farm"] and lineage["params"]["output_format"] == fmt


@pytest.mark.parametrize("model", ["sd", "sdxl", "flux", "sd3"])
@pytest.mark.parametrize("mode", ["quality", "speed", "extreme_speed", "lightning"])
def test_every_performance_mode_resolves_for_every_family(farm, model, mode):
    ctx, user, _ = farm
    job = job_service.submit_job(ctx, user, {"prompt": "a cat", "model": f"tiny-{model}", "width": 64, "height": 64,
                                            "performance": mode})
    assert job.params["performance"] == mode
    assert job.params["sampler"] in get_family(model).samplers


def test_variants_are_listed_and_picked_by_base_and_variant(farm):
    from farm.api import create_app

    ctx, user, runtime = farm
    with ctx.db.transaction() as session:
        _, token = create_user(session, "vera")
    client = create_app(ctx.settings, context=ctx).test_client()
    models = {m["id"]: m for m in client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"}).get_json()["models"]}
    schnell = models["tiny-flux-schnell"]
    assert schnell["base"] == "tiny-flux" and schnell["variant"] == "schnell" and schnell["default_steps"] == 4
    assert [v["id"] for v in schnell["variants"]] == ["tiny-flux-schnell"]
    assert schnell["weights_sha256"] and schnell["vram_gb"] > 0 and schnell["family"] == "flux"
    assert models["tiny-sd"]["variants"] == [] and models["tiny-sd"]["variant"] is None
    # A bare base name with a single variant picks it; the variant's defaults apply.
    job = run_job(ctx, user, runtime, {"prompt": "a cat", "model": "tiny-flux", "variant": "schnell", "width": 64, "height": 64})
    assert job.model_id == "tiny-flux-schnell" and job.params["variant"] == "schnell" and job.params["steps"] == 4
    assert job.params["guidance_scale"] == 0.0


def test_variant_mistakes_are_refused_with_the_choices(farm, tiny_dirs):
    ctx, user, _ = farm
    from farm.registry import RegistryError

    with ctx.db.transaction() as session:
        add_model(session, "flux-dev", str(tiny_dirs["flux"]), variant="dev", base="flux")
        add_model(session, "flux-schnell", str(tiny_dirs["flux-schnell"]))
        with pytest.raises(RegistryError, match="already has a variant 'schnell'"):
            add_model(session, "flux-fast", str(tiny_dirs["flux-schnell"]), base="flux")

    def problems(request):
        with pytest.raises(RequestError) as caught:
            job_service.submit_job(ctx, user, {"prompt": "a cat", "width": 64, "height": 64, **request})
        return {p.field: p.message for p in caught.value.problems}

    assert "has variants dev, schnell; pick one" in problems({"model": "flux"})["variant"]
    assert "no variant 'pro'; choose one of dev, schnell" in problems({"model": "flux", "variant": "pro"})["variant"]
    assert "has no variants" in problems({"model": "tiny-sd", "variant": "dev"})["variant"]
    assert "unknown model 'nope'" in problems({"model": "nope"})["model"]
    ok = job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "flux", "variant": "dev", "width": 64, "height": 64})
    assert ok.model_id == "flux-dev"
    # Naming a variant's id picks it directly.
    assert job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "flux-schnell", "width": 64, "height": 64}).params["steps"] == 4


def test_guidance_extras_go_through_the_worker_into_the_lineage(farm):
    ctx, user, runtime = farm
    plain = run_job(ctx, user, runtime, {"prompt": "a cat", "model": "tiny-sdxl", "width": 64, "height": 64, "steps": 2, "seed": 4})
    extra = run_job(ctx, user, runtime, {"prompt": "a cat", "model": "tiny-sdxl", "width": 64, "height": 64, "steps": 2,
                                         "seed": 4, "clip_skip": 2, "freeu": True, "detail_guidance": 2.5})
    [(plain_key, plain_lineage)] = plain.loaded_outputs
    [(key, lineage)] = extra.loaded_outputs
    assert {k: lineage["params"][k] for k in ("clip_skip", "freeu", "detail_guidance")} == \
        {"clip_skip": 2, "freeu": True, "detail_guidance": 2.5}
    assert "clip_skip" not in plain_lineage["params"]
    assert ctx.storage.get(key) != ctx.storage.get(plain_key)


@pytest.mark.parametrize(("model", "fields", "field"), [
    ("flux", {"freeu": True}, "freeu"),
    ("flux", {"detail_guidance": 2.0}, "detail_guidance"),
    ("flux", {"clip_skip": 2}, "clip_skip"),
    ("sd3", {"freeu": True}, "freeu"),
    ("sd", {"clip_skip": 0}, "clip_skip"),
])
def test_extras_a_family_cannot_use_are_refused(farm, model, fields, field):
    ctx, user, _ = farm
    with pytest.raises(RequestError) as caught:
        job_service.submit_job(ctx, user, {"prompt": "a cat", "model": f"tiny-{model}", "width": 64, "height": 64, **fields})
    assert field in {p.field for p in caught.value.problems}
