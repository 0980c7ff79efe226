"""Fooocus-style options through the REST API, down to the resolved parameters in each output's lineage.

Jobs are POSTed to the Flask app, run by an in-process worker runtime
(fenced start, render with a tiny model, store, record), and read back with
GET /api/v1/outputs/{id}: styles, both prompt expansion engines, presets,
performance modes, sizes and seeds.
"""

from __future__ import annotations

import uuid

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.generation.expansion import write_tiny_causal_lm
from farm.registry import add_model
from farm.workers import render as render_module
from farm.workers.pipelines import read_image_text
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model
from tests.support.api import auth


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    return {"sd": write_tiny_model(root / "sd", family="sd"), "sdxl": write_tiny_model(root / "sdxl", family="sdxl"),
            "lm": write_tiny_causal_lm(root / "lm")}


def make_farm(settings, files):
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(files["sd"]))
        add_model(session, "tiny-sdxl", str(files["sdxl"]))
        _, token = create_user(session, "ana")
    client = create_app(settings, context=ctx).test_client()
    return ctx, client, token, WorkerRuntime(ctx, name="w1")


@pytest.fixture()
def farm(sqlite_settings, files):
    return make_farm(sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0}), files)


def render_via_api(farm, **body) -> list[dict]:
    """POST the job, run it on the worker, GET each output: the lineage records of its images."""
    ctx, client, token, runtime = farm
    response = client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "model": "tiny-sd", "width": 64,
                                                 "height": 64, "steps": 2, **body}, headers=auth(token))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(job_id), 1, runtime.name, 30)
    assert render_module.execute_job(runtime, uuid.UUID(job_id), 1) == "succeeded"
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).get_json()
    return [client.get(f"/api/v1/outputs/{item['id']}", headers=auth(token)).get_json() for item in job["outputs"]]


def image_size(farm, record) -> tuple[int, int]:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(farm[0].storage.get(record["object_key"]))).size


def test_styles_are_resolved_into_the_recorded_prompt(farm):
    ctx, client, token, _ = farm
    styles = client.get("/api/v1/styles", headers=auth(token)).get_json()["styles"]
    with_placeholder = next(s for s in styles if "{prompt}" in s["positive"])
    words_only = next(s for s in styles if "{prompt}" not in s["positive"])
    [record] = render_via_api(farm, styles=[with_placeholder["name"], words_only["name"]], seed=4)
    params = record["params"]
    assert params["styles"] == [with_placeholder["name"], words_only["name"]]
    assert params["prompt"] == "a lighthouse" and "a lighthouse" in params["final_prompt"]
    assert with_placeholder["positive"].replace("{prompt}", "a lighthouse").split(",")[0].strip() in params["final_prompt"]
    assert words_only["positive"].split(",")[0].strip() in params["final_prompt"]
    # The random style is picked by the seed and recorded by name.
    [first] = render_via_api(farm, styles=["random"], seed=21)
    [again] = render_via_api(farm, styles=["random"], seed=21)
    assert first["params"]["styles"] == again["params"]["styles"] and first["params"]["styles"] != ["random"]
    assert first["params"]["final_prompt"] == again["params"]["final_prompt"]


def test_builtin_prompt_expansion_is_recorded_and_seeded(farm):
    [one] = render_via_api(farm, prompt="a lighthouse on a cliff", prompt_expansion=True, seed=8)
    [same] = render_via_api(farm, prompt="a lighthouse on a cliff", prompt_expansion=True, seed=8)
    [other] = render_via_api(farm, prompt="a lighthouse on a cliff", prompt_expansion=True, seed=9)
    params = one["params"]
    assert params["prompt_expansion"] is True and params["prompt_expansion_engine"] == "builtin"
    assert params["final_prompt"].startswith("a lighthouse on a cliff") and params["final_prompt"] != params["prompt"]
    assert same["params"]["final_prompt"] == params["final_prompt"] != other["params"]["final_prompt"]
    added = params["final_prompt"][len("a lighthouse on a cliff"):].replace(",", " ").split()
    assert not {"lighthouse", "cliff"} & set(added)


def test_language_model_expansion_is_recorded(sqlite_settings, files):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0,
                                                  "prompt_expansion_engine": "lm",
                                                  "prompt_expansion_model": str(files["lm"])})
    farm = make_farm(settings, files)
    [one] = render_via_api(farm, prompt="golden hour portrait of a fisherman", prompt_expansion=True, seed=5)
    [same] = render_via_api(farm, prompt="golden hour portrait of a fisherman", prompt_expansion=True, seed=5)
    params = one["params"]
    assert params["prompt_expansion_engine"] == "lm" and params["prompt_expansion_model"] == str(files["lm"])
    assert params["final_prompt"].startswith("golden hour portrait of a fisherman")
    assert params["final_prompt"] != params["prompt"] and same["params"]["final_prompt"] == params["final_prompt"]


def test_a_preset_fills_the_recorded_settings(farm):
    ctx, client, token, _ = farm
    preset = next(p for p in client.get("/api/v1/presets", headers=auth(token)).get_json()["presets"]
                  if p["name"] == "fast-draft")
    [record] = render_via_api(farm, preset="fast-draft", width=None, height=None, steps=None, seed=2)
    params = record["params"]
    assert params["preset"] == "fast-draft" and params["performance"] == preset["performance"] == "extreme_speed"
    width, height = (int(side) for side in preset["aspect_ratio"].split("*"))
    assert (params["width"], params["height"]) == (width, height) == image_size(farm, record)
    assert (params["sampler"], params["steps"], params["guidance_scale"]) == ("lcm", 8, 1.0)
    assert params["final_negative_prompt"] == preset["negative_prompt"]


@pytest.mark.parametrize(("mode", "sampler", "schedule", "steps"), [
    ("quality", "dpmpp_2m", "karras", 38), ("speed", "dpmpp_2m", "karras", 25), ("extreme_speed", "lcm", "normal", 8),
    ("lightning", "euler", "sgm_uniform", 4)])
def test_performance_modes_are_recorded(farm, mode, sampler, schedule, steps):
    [record] = render_via_api(farm, performance=mode, steps=None, seed=1)
    params = record["params"]
    assert (params["performance"], params["sampler"], params["scheduler"], params["steps"]) == (mode, sampler, schedule, steps)
    assert f"Steps: {steps}, Sampler: {sampler}" in read_image_text(
        farm[0].storage.get(record["object_key"]))["parameters"]


def test_sizes_from_an_aspect_ratio_and_explicit_sides(farm):
    [wide] = render_via_api(farm, model="tiny-sdxl", aspect_ratio="1728*576", width=None, height=None, steps=1)
    assert (wide["params"]["width"], wide["params"]["height"]) == (1728, 576) == image_size(farm, wide)
    [small] = render_via_api(farm, width=96, height=64)
    assert (small["params"]["width"], small["params"]["height"]) == (96, 64) == image_size(farm, small)


def test_seeds_random_when_absent_consecutive_or_the_same(farm):
    [drawn] = render_via_api(farm)
    assert isinstance(drawn["params"]["seed"], int)
    three = render_via_api(farm, seed=40, num_images=3)
    assert [r["params"]["seed"] for r in three] == [40, 41, 42]
    assert len({r["content_sha256"] for r in three}) == 3
    same = render_via_api(farm, seed=40, num_images=2, same_seed=True)
    assert [r["params"]["seed"] for r in same] == [40, 40] and all(r["params"]["same_seed"] for r in same)
    assert same[0]["content_sha256"] == same[1]["content_sha256"] != three[1]["content_sha256"]
