"""Instruction editing (image_mode "edit": FLUX.1 Kontext, Qwen-Image-Edit) and
Qwen-Image: the families' declarations, the request check's refusals, and
renders through the API and the worker's job path (parent in the lineage,
every declared sampler)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from farm import families
from farm.families import available_samplers, get_family
from farm.settings import Settings
from farm.spec import ModelInfo, RequestError, SourceImage, parse_request, resolve_request
from farm.workers.tiny import write_tiny_model
# The image-to-image tests' farm (context, API client, two users' tokens, a
# worker) over this module's tiny_dirs, and their helpers.
from tests.unit.test_image_to_image import auth, farm, image_of, lineage_of, submit_and_run  # noqa: F401
from tests.unit.test_image_to_image import upload as upload_image

EDITING = ("flux_kontext", "qwen_image_edit")

# ---------------------------------------------------------------------------- declarations


def test_the_editing_families_and_what_each_takes():
    assert families.editing_names() == EDITING
    kontext, qwen, qwen_edit = (get_family(n) for n in ("flux_kontext", "qwen_image", "qwen_image_edit"))
    assert (kontext.edits, kontext.text_to_image, kontext.image_to_image) == (True, True, False)
    assert (qwen.edits, qwen.text_to_image, qwen.image_to_image) == (False, True, True)
    assert (qwen_edit.edits, qwen_edit.text_to_image, qwen_edit.image_to_image) == (True, False, False)
    for family in (kontext, qwen, qwen_edit):
        # Their pipelines pass their own sigmas, which Heun and DPM++ 2M refuse (test_every_declared_sampler_renders).
        assert family.flow and family.dynamic_shift and family.samplers == ("euler", "euler_ancestral", "unipc", "lcm")
        assert family.performance["quality"].sampler == "unipc"
    assert families.detect_family({"_class_name": "FluxKontextPipeline"}) == "flux_kontext"
    assert families.detect_family({"_class_name": "QwenImagePipeline"}) == "qwen_image"
    assert families.detect_family({"_class_name": "QwenImageEditPlusPipeline"}) == "qwen_image_edit"
    # An edit attends to the source's tokens too: more working memory than a render of the same size.
    assert kontext.working_memory_gb(1024, 1024) > get_family("flux").working_memory_gb(1024, 1024)


def test_qwen_guidance_is_true_cfg_with_a_negative_prompt():
    for name in ("qwen_image", "qwen_image_edit"):
        family = get_family(name)
        assert family.render_kwargs("blurry", 4.0, 64, 64) == {
            "true_cfg_scale": 4.0, "guidance_scale": None, "negative_prompt": "blurry"}
        # No negative prompt given: a blank one, as Qwen's authors use, so guidance still runs.
        assert family.render_kwargs("", 4.0, 64, 64)["negative_prompt"] == " "
        assert family.render_kwargs("blurry", 1.0, 64, 64) == {"true_cfg_scale": 1.0, "guidance_scale": None}
    # Kontext is guidance-distilled: no negative prompt; the output keeps the size asked for.
    assert get_family("flux_kontext").render_kwargs("blurry", 2.5, 64, 48) == {"max_area": 64 * 48}


def test_image_mode_check_by_family():
    assert families.check_image_mode("flux_kontext", "edit") is None
    assert families.check_image_mode("flux_kontext", None) is None
    assert "do not take image_mode 'vary_subtle'" in families.check_image_mode("flux_kontext", "vary_subtle")
    assert "flux_kontext, qwen_image_edit" in families.check_image_mode("sd", "edit")
    assert "set image_mode 'edit'" in families.check_image_mode("qwen_image_edit", None)
    assert families.check_image_mode("qwen_image", "vary_strong") is None


# ---------------------------------------------------------------------------- the request check

MODELS = {m.id: m for m in (ModelInfo("m-sd", "sd", 20, 7.0), ModelInfo("m-kontext", "flux_kontext", 28, 2.5),
                            ModelInfo("m-qwen", "qwen_image", 50, 4.0), ModelInfo("m-qedit", "qwen_image_edit", 40, 4.0))}
SETTINGS = Settings(max_pixels=4096 * 4096, max_steps=100, max_prompt_chars=200, max_images_per_job=4)
SOURCE = SourceImage(object_key="k", width=100, height=75, parent_output=str(uuid.UUID(int=1)))


def resolve(source=SOURCE, **payload):
    return resolve_request(parse_request(payload), MODELS, SETTINGS, source=source)


def problems(source=SOURCE, **payload) -> dict[str, str]:
    with pytest.raises(RequestError) as info:
        resolve(source, **payload)
    assert info.value.status == 422
    return {p.field: p.message for p in info.value.problems}


def test_edit_on_a_family_that_cannot_edit_names_image_mode_and_the_editing_families():
    found = problems(prompt="make it night", model="m-sd", image_mode="edit", parent_output=SOURCE.parent_output)
    assert set(found) == {"image_mode"}
    assert "m-sd" in found["image_mode"] and "flux_kontext, qwen_image_edit" in found["image_mode"]
    assert "image_mode" in problems(prompt="x", model="m-qwen", image_mode="edit", parent_output=SOURCE.parent_output)


def test_editing_families_refuse_what_they_cannot_do():
    found = problems(source=None, prompt="a cat", model="m-qedit")
    assert "set image_mode 'edit'" in found["image_mode"]
    found = problems(prompt="a cat", model="m-kontext", image_mode="vary_subtle", parent_output=SOURCE.parent_output)
    assert "vary_subtle" in found["image_mode"] and "use image_mode edit" in found["image_mode"]
    found = problems(prompt="x", model="m-kontext", image_mode="edit", parent_output=SOURCE.parent_output, denoise=0.5)
    assert set(found) == {"denoise"} and "leave denoise out" in found["denoise"]
    found = problems(prompt="x", model="m-kontext", image_mode="edit", parent_output=SOURCE.parent_output, width=64, height=64)
    assert "follows from its source" in found["width"]
    found = problems(source=None, prompt="x", model="m-kontext", image_mode="edit")
    assert "needs a source" in found["parent_output"]
    for model in ("m-kontext", "m-qwen", "m-qedit"):
        for sampler in ("heun", "dpmpp_2m"):
            found = problems(prompt="x", model=model, sampler=sampler, image_mode="edit" if model != "m-qwen" else None,
                             parent_output=SOURCE.parent_output if model != "m-qwen" else None,
                             source=SOURCE if model != "m-qwen" else None)
            assert f"sampler {sampler!r} is not available" in found["sampler"]


def test_an_edit_follows_its_source_size_and_records_it():
    r = resolve(prompt="make it night", model="m-kontext", image_mode="edit", parent_output=SOURCE.parent_output, seed=1)
    assert (r.width, r.height) == (96, 80)  # 100 x 75 rounded to multiples of 16
    task = r.params["image_task"]
    assert task["mode"] == "edit" and task["parent_output"] == SOURCE.parent_output and task["source_key"] == "k"
    assert r.params["guidance_scale"] == 2.5 and r.params["final_prompt"] == "make it night"
    # A source beyond the family's native area is edited at about that area, in its aspect ratio.
    big = SourceImage(object_key="k", width=3000, height=2000, upload=str(uuid.UUID(int=2)))
    r = resolve(big, prompt="x", model="m-qedit", image_mode="edit", image=big.upload)
    assert (r.width, r.height) == (1248, 832)
    assert abs(r.width * r.height / 1024**2 - 1) < 0.02


def test_kontext_and_qwen_image_render_from_text():
    r = resolve(source=None, prompt="a cat", model="m-qwen", width=1328, height=1328)
    assert (r.steps, r.params["guidance_scale"]) == (50, 4.0) and "image_task" not in r.params
    assert resolve(source=None, prompt="a cat", model="m-kontext").params["family"] == "flux_kontext"


# ---------------------------------------------------------------------------- through the worker


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    return {name: write_tiny_model(root / name, family=name) for name in ("sd", "flux_kontext", "qwen_image", "qwen_image_edit")}


def submit(farm, body: dict, token=None):
    _, client, own, _, _ = farm
    return client.post("/api/v1/jobs", json=body, headers=auth(token or own))


def upload(farm, image: Image.Image, token=None) -> str:
    answer = upload_image(farm, image, token=token)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["id"]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def gradient(width: int, height: int, flip: bool = False) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x] if not flip else [255 - y, x, y], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_kontext_edits_a_parent_output_and_records_the_parent(farm):
    parent = submit_and_run(farm, {"prompt": "a lighthouse at dawn", "model": "tiny-sd", "width": 80, "height": 64,
                                   "steps": 2, "seed": 21})
    parent_id = parent["outputs"][0]["id"]
    view = submit_and_run(farm, {"prompt": "make it night", "model": "tiny-flux_kontext", "image_mode": "edit",
                                 "parent_output": parent_id, "steps": 2, "seed": 3})
    lineage = lineage_of(farm, view)
    assert lineage["parent_output"] == parent_id and lineage["source_upload"] is None
    assert lineage["params"]["image_task"]["mode"] == "edit" and lineage["model"]["family"] == "flux_kontext"
    assert image_of(farm, view["outputs"][0]["id"]).size == (80, 64)
    # One render of the whole source: 80 x 64 is above this farm's 64 x 64 tiles, which only re-noising modes use.
    assert view["progress"]["total"] == 2


def test_the_source_steers_an_edit(farm):
    # Same instruction, seed and model; only the source differs, so the
    # pictures differ only if the pipeline really conditions on it.
    outputs = []
    for flip in (False, True):
        source = upload(farm, gradient(80, 64, flip))
        view = submit_and_run(farm, {"prompt": "make it night", "model": "tiny-flux_kontext", "image_mode": "edit",
                                     "image": source, "steps": 2, "seed": 3})
        outputs.append(pixels(image_of(farm, view["outputs"][0]["id"])))
    assert not np.array_equal(*outputs)


def test_qwen_image_edit_edits_an_upload_and_records_it(farm):
    source = upload(farm, gradient(96, 64))
    view = submit_and_run(farm, {"prompt": "add a red boat", "negative_prompt": "blurry", "model": "tiny-qwen_image_edit",
                                 "image_mode": "edit", "image": source, "steps": 2, "seed": 4})
    lineage = lineage_of(farm, view)
    assert lineage["source_upload"] == source and lineage["parent_output"] is None
    assert lineage["params"]["final_negative_prompt"] == "blurry" and lineage["params"]["guidance_scale"] == 4.0
    assert image_of(farm, view["outputs"][0]["id"]).size == (96, 64)


def test_an_edit_of_someone_elses_upload_is_refused(farm):
    _, _, _, other, _ = farm
    theirs = upload(farm, gradient(80, 64), token=other)
    answer = submit(farm, {"prompt": "x", "model": "tiny-qwen_image_edit", "image_mode": "edit", "image": theirs})
    assert answer.status_code in (404, 422)
    assert "image" in str(answer.get_json()["error"])


def test_qwen_image_uses_the_negative_prompt_through_true_cfg(farm):
    def render(negative: str, guidance: float) -> np.ndarray:
        view = submit_and_run(farm, {"prompt": "a lighthouse", "negative_prompt": negative, "model": "tiny-qwen_image",
                                     "width": 80, "height": 64, "steps": 2, "seed": 9, "guidance_scale": guidance})
        return pixels(image_of(farm, view["outputs"][0]["id"]))

    assert not np.array_equal(render("", 4.0), render("stormy sea", 4.0))
    # Guidance 1: one pass, no negative prompt at all.
    assert np.array_equal(render("", 1.0), render("stormy sea", 1.0))


def test_qwen_image_varies_an_image_through_its_image_to_image_pipeline(farm):
    source = upload(farm, gradient(64, 64))  # one tile on this farm (64 x 64 tiles)
    view = submit_and_run(farm, {"prompt": "a lighthouse", "model": "tiny-qwen_image", "image_mode": "vary_subtle",
                                 "image": source, "steps": 4, "seed": 2})
    assert view["progress"]["total"] == 2  # half the schedule: the strength reached the pipeline
    assert image_of(farm, view["outputs"][0]["id"]).size == (64, 64)


CASES = [(name, sampler) for name in ("qwen_image", "flux_kontext", "qwen_image_edit") for sampler in available_samplers(name)]


@pytest.mark.parametrize(("name", "sampler"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_every_declared_sampler_renders(farm, name, sampler):
    body = {"prompt": "a lighthouse at dawn", "model": f"tiny-{name}", "steps": 2, "sampler": sampler, "seed": 5}
    if get_family(name).text_to_image:
        body.update(width=80, height=64)
    else:
        body.update(image_mode="edit", image=upload(farm, gradient(80, 64)))
    view = submit_and_run(farm, body)
    lineage = lineage_of(farm, view)
    assert lineage["params"]["sampler"] == sampler and lineage["model"]["family"] == name
    image = pixels(image_of(farm, view["outputs"][0]["id"]))
    assert image.shape == (64, 80, 3) and image.std() > 0  # decoded something, not a flat (NaN) frame
