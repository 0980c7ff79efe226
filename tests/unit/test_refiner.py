"""SDXL refiner: a registered sdxl_refiner model finishes the last part of an SDXL render."""

from __future__ import annotations

import pytest

from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.lineage import parameters_text
from farm.registry import add_model, detect_family
from farm.services import jobs as job_service
from farm.services.uploads import store_upload
from farm.spec import RequestError
from farm.families import available_samplers, get_family
from farm.workers.pipelines import Refiner, RenderParams, read_image_text, render
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import build_tiny_pipeline, write_tiny_model
from tests.support.worker_jobs import cpu_farm_context, submit_and_execute


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    return {"sdxl": write_tiny_model(root / "sdxl", family="sdxl"), "sd": write_tiny_model(root / "sd", family="sd"),
            "refiner": write_tiny_model(root / "refiner", family="sdxl_refiner")}


@pytest.fixture()
def farm(sqlite_settings, files):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sdxl", str(files["sdxl"]))
        add_model(session, "tiny-sd", str(files["sd"]))
        add_model(session, "tiny-refiner", str(files["refiner"]))
        user, _ = create_user(session, "ana")
    return ctx, user, WorkerRuntime(ctx, name="w1")


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    return buf.getvalue()


BASE = {"prompt": "a lighthouse at dawn", "model": "tiny-sdxl", "width": 64, "height": 64, "steps": 6, "seed": 11}


def test_a_refiner_folder_registers_as_its_own_family(files):
    assert detect_family(files["refiner"]) == "sdxl_refiner"


def test_the_refiner_changes_the_image_and_is_recorded(farm):
    ctx, user, runtime = farm
    _, _, plain = submit_and_execute(ctx, user, runtime, BASE)
    _, output, refined = submit_and_execute(ctx, user, runtime, {**BASE, "refiner": "tiny-refiner"})
    _, late, later = submit_and_execute(ctx, user, runtime, {**BASE, "refiner": "tiny-refiner", "refiner_switch": 0.5})
    assert len({plain, refined, later}) == 3
    assert output.lineage["params"]["refiner"] == {"model": "tiny-refiner", "switch": 0.8}
    assert late.lineage["params"]["refiner"]["switch"] == 0.5
    assert output.lineage["model"]["refiner"]["id"] == "tiny-refiner"
    assert output.lineage["model"]["refiner"]["weights_sha256"]
    text = read_image_text(refined)["parameters"]
    assert "Refiner: tiny-refiner" in text and "Refiner switch at: 0.8" in text
    # The worker holds both models; a job without the refiner renders as before.
    assert set(runtime.held_model_ids()) == {"tiny-sdxl", "tiny-refiner"}
    _, _, again = submit_and_execute(ctx, user, runtime, BASE)
    assert again == plain


def test_a_refined_output_rerenders_to_the_same_bytes(farm):
    ctx, user, runtime = farm
    _, output, data = submit_and_execute(ctx, user, runtime, {**BASE, "refiner": "tiny-refiner"})
    rerun = job_service.rerender_output(ctx, user, str(output.id))
    from farm import states
    from farm.models import Job
    from farm.workers import render as render_module

    with ctx.db.transaction() as session:
        states.assign_job(session, rerun.id, 1, runtime.name, 30)
    assert render_module.execute_job(runtime, rerun.id, 1) == "succeeded"
    with ctx.db.session() as session:
        again = session.get(Job, rerun.id).outputs[0]
        assert again.content_sha256 == output.content_sha256
        assert again.lineage["params"]["refiner"] == output.lineage["params"]["refiner"]


def test_every_sdxl_sampler_runs_through_the_refiner():
    base, refiner = build_tiny_pipeline("sdxl"), build_tiny_pipeline("sdxl_refiner")
    assert get_family("sdxl_refiner").samplers == get_family("sdxl").samplers
    for sampler in available_samplers("sdxl"):
        params = RenderParams(prompt="a cat", negative_prompt="blurry", width=64, height=64, steps=4, guidance_scale=5.0,
                              sampler=sampler, scheduler="normal", seed=3)
        steps: list[tuple[int, int]] = []
        plain = render(base, params)[0]
        refined = render(base, RenderParams(**{**params.__dict__, "refiner": Refiner(refiner, 0.7)}),
                         on_step=lambda done, total: steps.append((done, total)))[0]
        assert refined.tobytes() != plain.tobytes(), sampler
        # Progress runs over both phases, in base steps, and ends complete.
        assert steps[-1] == (4, 4) and all(b[0] >= a[0] for a, b in zip(steps, steps[1:])), (sampler, steps)


def test_refiner_mistakes_are_refused(farm):
    ctx, user, _ = farm

    def refused(**fields):
        with pytest.raises(RequestError) as caught:
            job_service.submit_job(ctx, user, {**BASE, **fields})
        return {p.field: p.message for p in caught.value.problems}

    assert "unknown refiner 'nope'; refiners: tiny-refiner" in refused(refiner="nope")["refiner"]
    assert "tiny-sd is a sd model, not a refiner" in refused(refiner="tiny-sd")["refiner"]
    assert "finishes sdxl renders; tiny-sd is a sd model" in refused(model="tiny-sd", refiner="tiny-refiner")["refiner"]
    assert "only finishes renders: ask for a model of family sdxl" in refused(model="tiny-refiner")["model"]
    assert "name the \"refiner\" too" in refused(refiner_switch=0.5)["refiner_switch"]
    assert "less than 1" in refused(refiner="tiny-refiner", refiner_switch=1.0)["refiner_switch"]
    upload = store_upload(ctx, user, png()).id
    assert "text-to-image" in refused(refiner="tiny-refiner", image_mode="vary_subtle", image=upload)["refiner"]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_refiner_counts_in_the_jobs_vram_need(request, sqlite_settings, files, database):
    """The scheduler reads the refiner out of the job's params (JSON on SQLite, JSONB on Postgres)."""
    import uuid

    from farm.models import ModelEntry
    from farm.scheduler.service import Scheduler

    ctx = cpu_farm_context(request, sqlite_settings, database)
    tag = uuid.uuid4().hex[:8]
    with ctx.db.transaction() as session:
        add_model(session, f"sdxl-{tag}", str(files["sdxl"]))
        add_model(session, f"refiner-{tag}", str(files["refiner"]), vram_gb=1.5)
        user, _ = create_user(session, f"ana-{tag}")
    WorkerRuntime(ctx, name=f"w-{tag}").register()
    request_ = {**BASE, "model": f"sdxl-{tag}"}
    refined = job_service.submit_job(ctx, user, {**request_, "refiner": f"refiner-{tag}"})
    plain = job_service.submit_job(ctx, user, request_)
    snapshot, _ = Scheduler(ctx, dispatcher=None).load_snapshot()
    with ctx.db.session() as session:
        base_gb = session.get(ModelEntry, f"sdxl-{tag}").vram_gb
    needs = {job.id: job.model_gb for job in snapshot.jobs}
    if database == "postgres":  # the run's shared database: leave it empty for the tests that count rows
        from tests.support.api import truncate_all

        truncate_all(ctx)
    assert needs[plain.id] == pytest.approx(base_gb)
    assert needs[refined.id] == pytest.approx(base_gb + 1.5)


def test_the_parameters_text_names_the_refiner():
    params = {"steps": 30, "sampler": "euler", "scheduler": "normal", "guidance_scale": 7.0, "seed": 1, "width": 1024,
              "height": 1024, "final_prompt": "a cat", "refiner": {"model": "sdxl-refiner", "switch": 0.8}}
    text = parameters_text(params, "sdxl")
    assert "Refiner: sdxl-refiner, Refiner switch at: 0.8, Model: sdxl" in text
