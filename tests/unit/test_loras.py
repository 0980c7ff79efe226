"""LoRAs: registry, request checks, accelerator LoRAs of performance modes, and rendering through the worker."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.loras import add_lora
from farm.registry import RegistryError, add_model
from farm.services import jobs as job_service
from farm.spec import RequestError
from farm.workers.pipelines import LoraIntegrityError, RenderParams, apply_loras, render
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import build_tiny_pipeline, write_tiny_lora, write_tiny_model
from tests.support.worker_jobs import submit_and_execute


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "sd-model": write_tiny_model(root / "sd", family="sd"),
        "flux-model": write_tiny_model(root / "flux", family="flux"),
        "sd-a": write_tiny_lora(root / "sd-a", family="sd", seed=1),
        "sd-b": write_tiny_lora(root / "sd-b", family="sd", seed=2),
        "flux-a": write_tiny_lora(root / "flux-a", family="flux", seed=3),
        "sdxl-fast": write_tiny_lora(root / "sdxl-fast", family="sdxl", seed=4),
    }


@pytest.fixture()
def farm(sqlite_settings, files):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0,
                                                  "accelerator_loras": {"sd": {"lightning": "sd-a"}}})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(files["sd-model"]))
        add_model(session, "tiny-flux", str(files["flux-model"]))
        for name, family in (("sd-a", "sd"), ("sd-b", "sd"), ("flux-a", "flux"), ("sdxl-fast", "sdxl")):
            add_lora(session, name, str(files[name]), family=family)
        user, token = create_user(session, "ana")
    return ctx, user, token, WorkerRuntime(ctx, name="w1")


def run(farm, request):
    ctx, user, _, runtime = farm
    job, output, data = submit_and_execute(ctx, user, runtime, request)
    return job, output.lineage, data


def params(**overrides):
    base = dict(prompt="a cat", negative_prompt="", width=64, height=64, steps=2, guidance_scale=5.0,
                sampler="euler", scheduler="normal", seed=3)
    return RenderParams(**{**base, **overrides})


def test_a_lora_changes_the_image_by_its_weight_and_comes_off_again(files):
    from farm.loras import file_sha256

    pipe = build_tiny_pipeline("sd")
    weights = next(files["sd-a"].glob("*.safetensors"))
    lora = {"name": "sd-a", "weight": 1.0, "sha256": file_sha256(weights), "source": str(files["sd-a"]), "file": weights.name}
    plain = np.asarray(render(pipe, params())[0], dtype=np.int16)
    full = np.asarray(render(pipe, params(loras=(lora,)))[0], dtype=np.int16)
    half = np.asarray(render(pipe, params(loras=({**lora, "weight": 0.5},)))[0], dtype=np.int16)
    after = np.asarray(render(pipe, params())[0], dtype=np.int16)
    assert np.abs(full - plain).mean() > np.abs(half - plain).mean() > 0
    assert np.array_equal(after, plain)
    # Loaded once, kept for the next job.
    assert list(pipe._farm_loras.values()) == ["lora_0"]
    with pytest.raises(LoraIntegrityError, match="not the registered"):
        apply_loras(build_tiny_pipeline("sd"), ({**lora, "sha256": "0" * 64},))


def test_loras_render_through_the_worker_and_are_in_the_lineage(farm):
    plain_job, _, plain = run(farm, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2, "seed": 5})
    job, lineage, data = run(farm, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2, "seed": 5,
                                    "loras": [{"name": "sd-a", "weight": 0.8}, {"name": "sd-b", "weight": -0.5}]})
    assert [(l["name"], l["weight"]) for l in lineage["params"]["loras"]] == [("sd-a", 0.8), ("sd-b", -0.5)]
    assert all(len(l["sha256"]) == 64 for l in lineage["params"]["loras"])
    assert data != plain
    assert "Loras: sd-a:0.8, sd-b:-0.5" in Image.open(io.BytesIO(data)).text["parameters"]
    # The same job without LoRAs on the same worker is the bare model again.
    _, _, again = run(farm, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2, "seed": 5})
    assert again == plain


def test_flux_loras_work_too(farm):
    _, lineage, _ = run(farm, {"prompt": "a cat", "model": "tiny-flux", "width": 64, "height": 64, "steps": 2,
                               "loras": [{"name": "flux-a"}]})
    assert lineage["params"]["loras"][0]["weight"] == 1.0


def test_a_performance_mode_adds_its_accelerator_lora(farm):
    _, lineage, _ = run(farm, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "performance": "lightning"})
    [lora] = lineage["params"]["loras"]
    assert lora["name"] == "sd-a" and lora["accelerator"] is True and lineage["params"]["steps"] == 4
    # Named by the request already: not added twice.
    job = job_service.submit_job(farm[0], farm[1], {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64,
                                                    "performance": "lightning", "loras": [{"name": "sd-a", "weight": 0.3}]})
    assert [(l["name"], l["weight"], l["accelerator"]) for l in job.params["loras"]] == [("sd-a", 0.3, False)]


@pytest.mark.parametrize(("loras", "message"), [
    ([{"name": "nope"}], "unknown LoRA 'nope'; sd LoRAs: sd-a, sd-b"),
    ([{"name": "flux-a"}], "is for flux models, not sd"),
    ([{"name": "sd-a"}, {"name": "sd-a"}], "listed twice"),
    ([{"name": "sd-a", "weight": 5}], "less than or equal to 2"),
    ([{"name": "sd-a", "scale": 1}], "unknown field"),
    ([{"name": f"x{i}"} for i in range(6)], "at most 5"),
])
def test_lora_mistakes_are_refused(farm, loras, message):
    ctx, user, _, _ = farm
    with pytest.raises(RequestError) as caught:
        job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "loras": loras})
    assert message in str(caught.value)


def test_an_unregistered_accelerator_is_reported(farm):
    ctx, user, _, _ = farm
    ctx.settings = ctx.settings.model_copy(update={"accelerator_loras": {"sd": {"lightning": "gone"}}})
    with pytest.raises(RequestError, match="accelerator LoRA 'gone' configured for sd lightning is not registered"):
        job_service.submit_job(ctx, user, {"prompt": "a cat", "model": "tiny-sd", "width": 64, "height": 64, "performance": "lightning"})


def test_registry_checks(farm, files, tmp_path):
    ctx = farm[0]
    with ctx.db.transaction() as session:
        with pytest.raises(RegistryError, match="already registered"):
            add_lora(session, "sd-a", str(files["sd-a"]), family="sd")
        with pytest.raises(RegistryError, match="exactly one .safetensors"):
            add_lora(session, "empty", str(tmp_path), family="sd")
        with pytest.raises(RegistryError, match="unknown family"):
            add_lora(session, "x", str(files["sd-a"]), family="sd4")
    from farm.api import create_app

    client = create_app(ctx.settings, context=ctx).test_client()
    listed = client.get("/api/v1/loras", headers={"Authorization": f"Bearer {farm[2]}"}).get_json()["loras"]
    assert [l["id"] for l in listed] == ["flux-a", "sd-a", "sd-b", "sdxl-fast"]
