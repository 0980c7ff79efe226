"""Request validation: every bad input says what to fix."""

from __future__ import annotations

import pytest

from farm.settings import Settings
from farm.spec import ModelInfo, RequestError, parse_request, resolve_request

MODELS = {"m-sd": ModelInfo("m-sd", "sd", 20, 7.0), "m-xl": ModelInfo("m-xl", "sdxl", 30, 6.0)}
SETTINGS = Settings(max_pixels=1024 * 1024, max_steps=100, max_prompt_chars=100, max_images_per_job=4)


def resolve(**payload):
    return resolve_request(parse_request(payload), MODELS, SETTINGS)


def problems(**payload) -> dict[str, str]:
    with pytest.raises(RequestError) as info:
        resolve(**payload)
    return {p.field: p.message for p in info.value.problems}


def test_defaults_are_resolved_and_seed_is_always_recorded():
    r = resolve(prompt="a cat", model="m-xl")
    assert (r.width, r.height, r.steps, r.num_images) == (512, 512, 30, 1)
    assert r.params["guidance_scale"] == 6.0
    assert 0 <= r.seed < 2**32 and r.params["seed"] == r.seed
    assert r.request == {"prompt": "a cat", "model": "m-xl"}
    assert r.params["final_prompt"] == "a cat"
    # Without a model the first registered one is used.
    assert resolve(prompt="x").model_id == "m-sd"


def test_explicit_seed_and_aspect_ratio():
    r = resolve(prompt="x", seed=42, aspect_ratio="1152*896", model="m-xl", steps=4)
    assert (r.seed, r.width, r.height) == (42, 1152, 896)


def test_missing_prompt():
    assert problems(model="m-sd") == {"prompt": "this field is required"}
    assert "must not be empty" in problems(prompt="   ")["prompt"]


def test_unknown_fields_are_refused():
    assert "unknown field" in problems(prompt="x", colour="red")["colour"]


def test_unknown_model_lists_the_known_ones():
    message = problems(prompt="x", model="nope")["model"]
    assert "unknown model 'nope'" in message and "m-sd" in message and "m-xl" in message


@pytest.mark.parametrize("width,height,field,text", [
    (500, 512, "width", "not a multiple of 8"),
    (512, 516, "height", "not a multiple of 8"),
    (32, 512, "width", "outside 64..2048"),
    (4096, 64, "width", "outside 64..2048"),
    (2048, 2048, "width", "the limit is 1048576"),
])
def test_sizes(width, height, field, text):
    assert text in problems(prompt="x", width=width, height=height)[field]


def test_size_needs_both_sides_or_aspect_ratio():
    assert "both" in problems(prompt="x", width=512)["height"]
    assert "not both" in problems(prompt="x", width=512, height=512, aspect_ratio="512*512")["aspect_ratio"]
    assert "not like" in problems(prompt="x", aspect_ratio="wide")["aspect_ratio"]


def test_limits():
    assert "the limit is 100" in problems(prompt="x" * 101)["prompt"]
    assert "the limit is 100" in problems(prompt="x", steps=101)["steps"]
    assert "at most 4" in problems(prompt="x", num_images=5)["num_images"]
    assert "greater than or equal to 0" in problems(prompt="x", seed=-1)["seed"]
    assert "unknown value 'warp'" in problems(prompt="x", sampler="warp")["sampler"]
    assert "png" in problems(prompt="x", output_format="gif")["output_format"]


def test_image_fields_without_a_mode_or_a_looked_up_source_are_refused_not_ignored():
    assert "only used with image_mode" in problems(prompt="x", parent_output="abc")["parent_output"]
    # Without the job service's look-up (a campaign row, say) a source cannot be used.
    assert "one by one" in problems(prompt="x", image_mode="vary_subtle", parent_output="abc")["image_mode"]


def test_styles_preset_and_expansion_shape_the_final_prompt():
    from farm.generation.resources import generation_resources

    resources = generation_resources(SETTINGS)
    style = resources.styles.all()[0]
    r = resolve_request(parse_request({"prompt": "a red bicycle", "styles": [style.name, "random"], "seed": 7}),
                        MODELS, SETTINGS, resources=resources)
    assert r.params["final_prompt"] != "a red bicycle" and "red bicycle" in r.params["final_prompt"]
    assert r.params["styles"][0] == style.name and len(r.params["styles"]) == 2
    again = resolve_request(parse_request({"prompt": "a red bicycle", "styles": [style.name, "random"], "seed": 7}),
                            MODELS, SETTINGS, resources=resources)
    assert again.params["final_prompt"] == r.params["final_prompt"]  # the random pick follows the seed
    expanded = resolve_request(parse_request({"prompt": "a red bicycle", "prompt_expansion": True, "seed": 7}),
                               MODELS, SETTINGS, resources=resources)
    assert expanded.params["final_prompt"].startswith("a red bicycle") and len(expanded.params["final_prompt"]) > 20
    preset = resources.presets.all()[0]
    with_preset = resolve_request(parse_request({"prompt": "a red bicycle", "preset": preset.name}), MODELS, SETTINGS,
                                  resources=resources)
    assert with_preset.params["preset"] == preset.name
    assert with_preset.request == {"prompt": "a red bicycle", "preset": preset.name}  # as submitted
    bad = problems(prompt="x", styles=["no-such-style-anywhere"])
    assert "no-such-style-anywhere" in bad["styles"]
    assert "'nope'" in problems(prompt="x", preset="nope")["preset"]


def test_body_must_be_an_object():
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(["prompt"])


def test_many_problems_are_reported_together():
    found = problems(prompt="x", width=501, height=503, steps=1000)
    assert set(found) == {"width", "height", "steps"}


def test_performance_modes_fill_steps_sampler_and_guidance():
    quality = resolve(prompt="x", model="m-xl", performance="quality")
    assert (quality.steps, quality.params["sampler"], quality.params["scheduler"]) == (45, "dpmpp_2m", "karras")
    lightning = resolve(prompt="x", performance="lightning")
    assert (lightning.steps, lightning.params["sampler"], lightning.params["scheduler"], lightning.params["guidance_scale"]) == (4, "euler", "sgm_uniform", 1.0)
    extreme = resolve(prompt="x", performance="extreme_speed")
    assert (extreme.steps, extreme.params["sampler"]) == (8, "lcm")
    # What the request sets itself wins over the mode.
    mine = resolve(prompt="x", performance="lightning", steps=6, sampler="dpmpp_2m", guidance_scale=3.0)
    assert (mine.steps, mine.params["sampler"], mine.params["guidance_scale"]) == (6, "dpmpp_2m", 3.0)
    assert mine.params["performance"] == "lightning"
    assert "unknown value 'turbo'" in problems(prompt="x", performance="turbo")["performance"]


def test_self_attention_guidance_is_checked_and_recorded_when_used():
    r = resolve(prompt="a cat", model="m-sd", sampler="dpmpp_2m", sag_scale=0.75)
    assert r.params["sag_scale"] == 0.75
    # 0 is off: nothing recorded, so the render and its metadata are a plain one's.
    assert "sag_scale" not in resolve(prompt="a cat", model="m-sd", sag_scale=0).params
    assert "sag_scale" in problems(prompt="a cat", model="m-sd", sampler="ddim", sag_scale=3.5)
    assert "sag_scale" in problems(prompt="a cat", model="m-sd", sampler="ddim", sag_scale=-1)
    assert problems(prompt="a cat", model="m-xl", sampler="ddim", sag_scale=1) == {
        "sag_scale": "self-attention guidance is available for sd models, not for sdxl models; leave sag_scale out"}
    # A sampler the request did not choose is one SAG takes; one it named that SAG cannot use is refused.
    assert resolve(prompt="a cat", model="m-sd", sag_scale=1).params["sampler"] == "dpmpp_2m"
    assert "choose one of dpmpp_2m" in problems(prompt="a cat", model="m-sd", sag_scale=1, sampler="euler")["sampler"]
    assert "detail guidance" in problems(prompt="a cat", model="m-sd", sampler="ddim", sag_scale=1,
                                         detail_guidance=2)["sag_scale"]
    assert "image_mode" in problems(prompt="a cat", model="m-sd", sampler="ddim", sag_scale=1, image_mode="vary_subtle",
                                    image="u1")["sag_scale"]
