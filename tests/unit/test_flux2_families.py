"""FLUX.2 families and multi-reference generation: the declarations, every
declared sampler rendering a tiny model through the worker's job path, and
the ``references`` field (shape, per-family limits, ownership, lineage)."""

from __future__ import annotations

import hashlib
import io
import uuid

import pytest
from PIL import Image

from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.families import available_samplers, check_references, check_sampler, get_family, reference_families
from farm.families.samplers import SIGMA_SCHEDULES
from farm.registry import add_model
from farm.services import jobs as job_service
from farm.services.uploads import store_upload
from farm.spec import RequestError, parse_request
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model
from tests.support.worker_jobs import cpu_farm_context, submit_and_execute

KLEIN = "flux2_klein"
DEV = "flux2"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2")
    return {"klein": write_tiny_model(root / "klein", family=KLEIN), "dev": write_tiny_model(root / "dev", family=DEV),
            "klein-base": write_tiny_model(root / "klein-base", family=KLEIN, variant="base-4b"),
            "sd": write_tiny_model(root / "sd", family="sd")}


@pytest.fixture()
def farm(sqlite_settings, tiny_dirs):
    ctx = build_context(sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0}), events=LocalEvents())
    with ctx.db.transaction() as session:
        for model_id, path in tiny_dirs.items():
            add_model(session, f"tiny-{model_id}", str(path))
        user, _ = create_user(session, "ana")
        other, _ = create_user(session, "eve")
    return ctx, user, other, WorkerRuntime(ctx, name="w1")


def png(color, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def refused(ctx, user, **fields) -> dict[str, str]:
    with pytest.raises(RequestError) as caught:
        job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "tiny-klein", "width": 64, "height": 64, **fields})
    assert caught.value.status == 422
    return {p.field: p.message for p in caught.value.problems}


BASE = {"prompt": "the cat from the first image on the sofa of the second", "model": "tiny-klein", "width": 64,
        "height": 64, "steps": 2, "seed": 3}


# --------------------------------------------------------------------------- declarations


def test_klein_declares_its_reference_limit_variants_and_defaults():
    klein = get_family(KLEIN)
    assert klein.pipeline_class == "Flux2KleinPipeline" and klein.max_references == 4
    assert klein.tiny_variants == ("4b", "9b", "base-4b", "base-9b")
    assert klein.tiny_defaults["4b"] == {"default_steps": 4, "default_guidance": 1.0}
    assert klein.tiny_defaults["base-9b"] == {"default_steps": 50, "default_guidance": 4.0}
    assert len(klein.latent_rgb) == 32 and not klein.negative_prompt and klein.render_kwargs("blurry") == {}
    assert KLEIN in reference_families() and "sd" not in reference_families()
    assert check_references(KLEIN, 4) is None
    assert check_references(KLEIN, 5) == "5 reference images; flux2_klein models take at most 4"
    assert "sd models take no reference images; families that do: " in check_references("sd", 1)


def test_dev_declares_its_reference_limit_and_guidance():
    dev = get_family(DEV)
    assert dev.pipeline_class == "Flux2Pipeline" and dev.max_references == 10
    assert (dev.default_steps, dev.default_guidance) == (50, 4.0) and not dev.negative_prompt
    assert dev.samplers == get_family(KLEIN).samplers and dev.default_vram_gb > get_family(KLEIN).default_vram_gb
    assert check_references(DEV, 10) is None and "at most 10" in check_references(DEV, 11)


def test_the_base_variant_is_undistilled_and_the_default_is_distilled(tiny_dirs):
    from diffusers import Flux2KleinPipeline

    assert Flux2KleinPipeline.from_pretrained(str(tiny_dirs["klein"])).config.is_distilled is True
    assert Flux2KleinPipeline.from_pretrained(str(tiny_dirs["klein-base"])).config.is_distilled is False


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("sampler", available_samplers(KLEIN))
def test_every_declared_sampler_renders_tiny_klein_through_the_worker(farm, sampler):
    ctx, user, _, runtime = farm
    _, output, data = submit_and_execute(ctx, user, runtime, {**BASE, "sampler": sampler, "width": 64, "height": 80})
    assert Image.open(io.BytesIO(data)).size == (64, 80)
    assert output.lineage["params"]["sampler"] == sampler and output.lineage["model"]["family"] == KLEIN


@pytest.fixture(scope="module")
def klein_pipe(tiny_dirs):
    import torch

    from farm.workers.pipelines import load_pipeline

    return load_pipeline(tiny_dirs["klein"], KLEIN, torch.device("cpu"), torch.float32)


SCHEDULES = [(sampler, schedule) for sampler in available_samplers(KLEIN) for schedule in SIGMA_SCHEDULES
             if check_sampler(KLEIN, sampler, schedule) is None]


@pytest.mark.parametrize(("sampler", "schedule"), SCHEDULES, ids=[f"{a}-{b}" for a, b in SCHEDULES])
def test_every_sampler_and_schedule_klein_admits_steps_to_finite_latents(klein_pipe, sampler, schedule):
    import torch

    from farm.workers.pipelines import RenderParams, render

    seen = []
    params = RenderParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=3, guidance_scale=1.0,
                          sampler=sampler, scheduler=schedule, seed=1)
    [image] = render(klein_pipe, params, on_latents=seen.append)
    assert image.size == (64, 64) and len(seen) == 3
    assert all(torch.isfinite(latents).all() for latents in seen)


@pytest.fixture(scope="module")
def dev_pipe(tiny_dirs):
    import torch

    from farm.workers.pipelines import load_pipeline

    return load_pipeline(tiny_dirs["dev"], DEV, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("sampler", available_samplers(DEV))
def test_every_sampler_dev_admits_renders_with_a_reference(dev_pipe, sampler):
    import torch

    from farm.workers.pipelines import RenderParams, render

    seen = []
    params = RenderParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=2, guidance_scale=4.0,
                          sampler=sampler, scheduler="normal", seed=1, references=(Image.new("RGB", (64, 64), "red"),))
    [image] = render(dev_pipe, params, on_latents=seen.append)
    assert image.size == (64, 64) and all(torch.isfinite(latents).all() for latents in seen)


def test_dev_guidance_is_an_input_and_references_change_the_render(dev_pipe):
    from farm.workers.pipelines import RenderParams, render

    def pixels(**fields):
        params = RenderParams(**{"prompt": "a cat", "negative_prompt": "", "width": 64, "height": 64, "steps": 2,
                                 "guidance_scale": 4.0, "sampler": "euler", "scheduler": "normal", "seed": 1, **fields})
        return render(dev_pipe, params)[0].tobytes()

    plain = pixels()
    assert pixels(guidance_scale=1.0) != plain
    assert pixels(references=(Image.new("RGB", (64, 64), "red"),)) != plain


def test_the_render_call_refuses_more_references_than_the_family_takes(klein_pipe):
    from farm.workers.pipelines import RenderParams, render

    red = Image.new("RGB", (64, 64), "red")
    params = RenderParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=1, guidance_scale=1.0,
                          sampler="euler", scheduler="normal", seed=1, references=(red,) * 5)
    with pytest.raises(ValueError, match="flux2_klein models take at most 4 reference images"):
        render(klein_pipe, params)


def test_dev_takes_references_through_the_worker(farm):
    ctx, user, _, runtime = farm
    upload_bytes = png("green", (64, 96))
    upload = store_upload(ctx, user, upload_bytes).id
    _, output, _ = submit_and_execute(ctx, user, runtime, {**BASE, "model": "tiny-dev", "references": [{"image": upload}]})
    [recorded] = output.lineage["params"]["references"]
    assert recorded["upload"] == upload and recorded["sha256"] == hashlib.sha256(upload_bytes).hexdigest()
    assert output.lineage["model"]["family"] == DEV


def test_klein_refuses_what_its_pipeline_cannot_drive():
    assert "not available for flux2_klein models" in check_sampler(KLEIN, "heun", "normal")
    assert "'karras' is not available with sampler 'dpmpp_2m'" in check_sampler(KLEIN, "dpmpp_2m", "karras")


def test_the_base_variant_renders_with_guidance(farm):
    ctx, user, _, runtime = farm
    _, distilled, a = submit_and_execute(ctx, user, runtime, {**BASE, "model": "tiny-klein-base", "guidance_scale": 1.0})
    _, guided, b = submit_and_execute(ctx, user, runtime, {**BASE, "model": "tiny-klein-base", "guidance_scale": 4.0})
    assert a != b and guided.lineage["params"]["guidance_scale"] == 4.0


def test_two_references_steer_the_render_and_the_lineage_hashes_the_bytes_used(farm):
    ctx, user, _, runtime = farm
    upload_bytes = png("red", (80, 64))
    upload = store_upload(ctx, user, upload_bytes).id
    _, parent, parent_bytes = submit_and_execute(ctx, user, runtime, BASE)
    _, _, plain = submit_and_execute(ctx, user, runtime, BASE)
    references = [{"image": upload}, {"parent_output": str(parent.id)}]
    _, output, steered = submit_and_execute(ctx, user, runtime, {**BASE, "references": references})
    assert steered != plain
    recorded = output.lineage["params"]["references"]
    assert [r["upload"] for r in recorded] == [upload, None]
    assert [r["parent_output"] for r in recorded] == [None, str(parent.id)]
    assert recorded[1]["key"] == parent.object_key
    assert [r["sha256"] for r in recorded] == [hashlib.sha256(upload_bytes).hexdigest(),
                                               hashlib.sha256(parent_bytes).hexdigest()]
    # Their order is part of what was rendered.
    _, _, swapped = submit_and_execute(ctx, user, runtime, {**BASE, "references": references[::-1]})
    assert swapped != steered


# --------------------------------------------------------------------------- the references field


def test_references_beyond_the_model_limit_are_refused_naming_the_limit(farm):
    ctx, user, _, _ = farm
    upload = store_upload(ctx, user, png("red")).id
    problems = refused(ctx, user, references=[{"image": upload}] * 5)
    assert problems["references"] == "5 reference images; flux2_klein models take at most 4"


def test_a_family_without_references_refuses_them(farm):
    ctx, user, _, _ = farm
    upload = store_upload(ctx, user, png("red")).id
    problems = refused(ctx, user, model="tiny-sd", references=[{"image": upload}])
    assert problems["references"].startswith("sd models take no reference images; families that do: flux2, flux2_klein")


@pytest.mark.parametrize(("reference", "field", "message"), [
    ({}, "references.0", "give image (an upload id) or parent_output (an output id), one of them"),
    ({"image": "f" * 64, "parent_output": str(uuid.uuid4())}, "references.0", "one of them"),
    ({"image": "not-an-id"}, "references.0.image", "is not an upload id"),
    ({"image": "f" * 64}, "references.0.image", "no upload"),
    ({"parent_output": "nope"}, "references.0.parent_output", "is not an output id"),
    ({"parent_output": str(uuid.uuid4())}, "references.0.parent_output", "no output"),
    ({"upload": "x"}, "references.0.upload", "unknown field"),
])
def test_reference_mistakes_name_the_field(farm, reference, field, message):
    ctx, user, _, _ = farm
    problems = refused(ctx, user, references=[reference])
    assert message in problems[field], problems


def test_the_shape_allows_ten_references_at_most():
    with pytest.raises(RequestError) as caught:
        parse_request({"prompt": "a cat", "references": [{"image": "f" * 64}] * 11})
    assert [p.field for p in caught.value.problems] == ["references"]


def test_a_reference_too_small_for_the_model_is_refused(farm):
    ctx, user, _, _ = farm
    small = store_upload(ctx, user, png("red", (48, 64))).id
    problems = refused(ctx, user, references=[{"image": small}])
    assert problems["references.0"] == "is 48x64; flux2_klein references need at least 64 pixels a side"


def test_references_do_not_go_with_an_image_mode(farm):
    ctx, user, _, _ = farm
    upload = store_upload(ctx, user, png("red")).id
    problems = refused(ctx, user, references=[{"image": upload}], image_mode="vary_subtle", image=upload,
                       width=None, height=None)
    assert "leave image_mode out" in problems["references"]


def test_another_owners_reference_answers_like_a_missing_one(farm):
    ctx, user, other, runtime = farm
    theirs = store_upload(ctx, other, png("blue")).id
    _, their_output, _ = submit_and_execute(ctx, other, runtime, BASE)
    upload_problem = refused(ctx, user, references=[{"image": theirs}])["references.0.image"]
    missing_upload = refused(ctx, user, references=[{"image": "e" * 64}])["references.0.image"]
    assert upload_problem.replace(theirs, "ID") == missing_upload.replace("e" * 64, "ID")
    missing_id = str(uuid.uuid4())
    output_problem = refused(ctx, user, references=[{"parent_output": str(their_output.id)}])["references.0.parent_output"]
    missing_output = refused(ctx, user, references=[{"parent_output": missing_id}])["references.0.parent_output"]
    assert output_problem.replace(str(their_output.id), "ID") == missing_output.replace(missing_id, "ID")


def test_a_campaign_row_cannot_carry_references(farm):
    from farm.generation.resources import generation_resources
    from farm.registry import model_infos
    from farm.spec import resolve_request

    ctx, _, _, _ = farm
    with ctx.db.session() as session:
        infos = model_infos(session)
    req = parse_request({"prompt": "a cat", "model": "tiny-klein", "width": 64, "height": 64,
                         "references": [{"image": "f" * 64}]})
    with pytest.raises(RequestError) as caught:
        resolve_request(req, infos, ctx.settings, resources=generation_resources(ctx.settings))
    assert "one job at a time" in {p.field: p.message for p in caught.value.problems}["references"]


def test_the_cli_builds_and_registers_tiny_flux2_models(run, tmp_path):
    for family, variant in ((DEV, None), (KLEIN, "base-9b")):
        args = ["models", "tiny", str(tmp_path / family), "--family", family] + (["--variant", variant] if variant else [])
        built = run(*args)
        assert built.exit_code == 0 and f"tiny random-weight {family}" in built.output
        added = run("models", "add", f"tiny-{family}", str(tmp_path / family))
        assert added.exit_code == 0, added.output
    listed = run("models", "list").output
    assert "flux2_klein:base-9b" in listed and "50 steps" in listed
    bad = run("models", "tiny", str(tmp_path / "pro"), "--family", KLEIN, "--variant", "pro")
    assert bad.exit_code == 1 and "has no variant 'pro'" in bad.output and "Traceback" not in bad.output


def test_reference_pixels_count_toward_a_jobs_working_memory():
    from dataclasses import replace

    from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState, place

    # 6 GB of weights and a megapixel render fit in 10 GB; four megapixel references do not.
    plain = QueuedJob(id="j", attempt=1, user_id=1, model_id="k", family=KLEIN, model_gb=6.0, width=1024, height=1024,
                      priority=0, queued_at=0.0)
    referenced = replace(plain, reference_pixels=4 * 1024 * 1024)
    assert referenced.working_gb == pytest.approx(plain.working_gb + 4 * 1024 * 1024 / 1e6 * get_family(KLEIN).working_gb_per_megapixel)
    gpu = WorkerState(id="w1", families=frozenset({KLEIN}), max_pixels=2048 * 2048, vram_total_gb=10.0,
                      vram_free_gb=10.0, loaded_models={}, serves_models=None, busy=0)
    assert [a.job_id for a in place(Snapshot([plain], [gpu], now=1.0)).assignments] == ["j"]
    decisions = place(Snapshot([referenced], [gpu], now=1.0))
    assert decisions.assignments == [] and "needs" in decisions.unplaceable["j"]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_scheduler_reads_a_jobs_reference_pixels(request, sqlite_settings, tiny_dirs, database):
    """Each reference counts as its pipeline sees it (shrunk to a megapixel at most), read out of the
    job's params (JSON on SQLite, JSONB on Postgres)."""
    from farm.scheduler.service import Scheduler

    ctx = cpu_farm_context(request, sqlite_settings, database)
    tag = uuid.uuid4().hex[:8]
    with ctx.db.transaction() as session:
        add_model(session, f"klein-{tag}", str(tiny_dirs["klein"]))
        user, _ = create_user(session, f"ana-{tag}")
    WorkerRuntime(ctx, name=f"w-{tag}").register()
    small, large = store_upload(ctx, user, png("red", (80, 64))).id, store_upload(ctx, user, png("blue", (1100, 1000))).id
    request_ = {**BASE, "model": f"klein-{tag}"}
    referenced = job_service.submit_job(ctx, user, {**request_, "references": [{"image": small}, {"image": large}]})
    plain = job_service.submit_job(ctx, user, request_)
    snapshot, _ = Scheduler(ctx, dispatcher=None).load_snapshot()
    pixels = {job.id: job.reference_pixels for job in snapshot.jobs}
    if database == "postgres":  # the run's shared database: leave it empty for the tests that count rows
        from tests.support.api import truncate_all

        truncate_all(ctx)
    assert referenced.params["references"][1]["width"] == 1100
    assert pixels == {plain.id: 0, referenced.id: 80 * 64 + 1024 * 1024}


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_a_preempted_render_on_references_continues_to_the_same_bytes(tiny_dirs, klein_pipe, sampler):
    """The checkpoint holds the image's latents; the references' latents are
    encoded again (deterministically) by the continuing call."""
    import torch

    from farm.workers.pipelines import RenderParams, RenderPreempted, StepCheckpoint, load_pipeline, render

    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (80, 64), "blue")
    params = RenderParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=4, guidance_scale=1.0,
                          sampler=sampler, scheduler="normal", seed=5, references=(red, blue))
    whole = render(klein_pipe, params)[0].tobytes()
    asked = []
    with pytest.raises(RenderPreempted) as raised:
        render(klein_pipe, params, stop_requested=lambda: asked.append(1) or len(asked) == 2)
    checkpoint = StepCheckpoint.from_bytes(raised.value.checkpoint.to_bytes())
    fresh = load_pipeline(tiny_dirs["klein"], KLEIN, torch.device("cpu"), torch.float32)
    assert render(fresh, params, resume=checkpoint)[0].tobytes() == whole
