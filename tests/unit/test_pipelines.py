"""Render path tests on tiny random-weight pipelines (CPU, offline, a few seconds)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from PIL import Image

from farm.families import get_family, samplers
from farm.workers import pipelines as P
from farm.workers.pipelines import (
    FAMILIES,
    SIGMA_SCHEDULES,
    RenderCanceled,
    RenderParams,
    available_samplers,
    build_scheduler,
    check_sampler,
    encode_image,
    estimate_vram_gb,
    load_pipeline,
    pick_device,
    pick_dtype,
    pipeline_family,
    quiet_progress_bars,
    read_image_text,
    render,
)
from farm.workers.tiny import build_tiny_pipeline, write_tiny_model

SECOND_ORDER = {"heun", "dpmpp_sde"}  # two model calls per step, 2 * steps - 1 iterations


@pytest.fixture(scope="module")
def pipes():
    return {family: build_tiny_pipeline(family, seed=0) for family in FAMILIES}


def params(**overrides) -> RenderParams:
    base = dict(
        prompt="a cat on the rug",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=3,
        guidance_scale=5.0,
        sampler="euler",
        scheduler="normal",
        seed=1234,
    )
    base.update(overrides)
    return RenderParams(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- rendering

# Families that render from a prompt alone; an editing-only family (Qwen-Image-Edit)
# renders every sampler from a source image in test_editing.py.
TEXT_FAMILIES = [f for f in FAMILIES if get_family(f).text_to_image]
SAMPLER_CASES = [(f, s) for f in TEXT_FAMILIES for s in available_samplers(f)]


@pytest.mark.parametrize(("family", "sampler"), SAMPLER_CASES, ids=[f"{f}-{s}" for f, s in SAMPLER_CASES])
def test_every_sampler_renders(pipes, family, sampler):
    steps = []
    images = render(pipes[family], params(sampler=sampler), on_step=lambda i, n: steps.append((i, n)))
    assert len(images) == 1
    image = images[0]
    assert isinstance(image, Image.Image)
    assert image.size == (64, 64)
    assert pixels(image).std() > 1.0, "image is constant"
    total = 2 * 3 - 1 if sampler in SECOND_ORDER else 3
    assert steps == [(i, total) for i in range(1, total + 1)]


SCHEDULE_CASES = [(f, s, sch) for f in FAMILIES for s in available_samplers(f) for sch in SIGMA_SCHEDULES
                  if check_sampler(f, s, sch) is None]


TEXT_SCHEDULE_CASES = [case for case in SCHEDULE_CASES if case[0] in TEXT_FAMILIES]


@pytest.mark.parametrize(("family", "sampler", "schedule"), TEXT_SCHEDULE_CASES,
                         ids=[f"{f}-{s}-{sch}" for f, s, sch in TEXT_SCHEDULE_CASES])
def test_every_accepted_schedule_renders_an_image(pipes, family, sampler, schedule):
    # Every combination check_sampler accepts must give a real image (NaN
    # latents decode to a constant black one).
    (image,) = render(pipes[family], params(sampler=sampler, scheduler=schedule, width=64, height=48 if family in ("sd", "sdxl") else 80))
    assert image.size == (64, 48 if family in ("sd", "sdxl") else 80)
    assert pixels(image).std() > 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_schedule_has_a_sampler_where_the_family_can_use_it(family):
    usable = {sch for _, _, sch in [c for c in SCHEDULE_CASES if c[0] == family]}
    expected = set(SIGMA_SCHEDULES) - ({"sgm_uniform"} if get_family(family).flow else set())
    assert usable == expected


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("sampler", ["euler_ancestral", "lcm"])
def test_stochastic_flow_samplers_are_seeded(pipes, family, sampler):
    a = render(pipes[family], params(sampler=sampler, seed=99))[0]
    torch.manual_seed(12345)  # the global generator's state must not matter
    b = render(pipes[family], params(sampler=sampler, seed=99))[0]
    c = render(pipes[family], params(sampler=sampler, seed=100))[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_flux_dev_takes_guidance_and_schnell_does_not():
    dev, schnell = build_tiny_pipeline("flux", variant="dev"), build_tiny_pipeline("flux", variant="schnell")
    assert dev.transformer.config.guidance_embeds and not schnell.transformer.config.guidance_embeds
    for pipe, changes in ((dev, True), (schnell, False)):
        low = render(pipe, params(guidance_scale=1.0))[0]
        high = render(pipe, params(guidance_scale=6.0))[0]
        assert (not np.array_equal(pixels(low), pixels(high))) is changes


def test_flux_ignores_the_negative_prompt_and_sd3_uses_it(pipes):
    for family, changes in (("flux", False), ("sd3", True)):
        a = render(pipes[family], params(negative_prompt="blurry"))[0]
        b = render(pipes[family], params(negative_prompt="sharp, detailed"))[0]
        assert (not np.array_equal(pixels(a), pixels(b))) is changes


def test_tiny_builder_refuses_unknown_variants():
    with pytest.raises(ValueError, match="has no variant 'pro'"):
        build_tiny_pipeline("flux", variant="pro")
    with pytest.raises(ValueError, match="unknown model family 'sd4'"):
        build_tiny_pipeline("sd4")


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_same_seed_same_pixels_other_seed_differs(pipes, family):
    pipe = pipes[family]
    a = render(pipe, params(seed=7))[0]
    b = render(pipe, params(seed=7))[0]
    c = render(pipe, params(seed=8))[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_stochastic_samplers_are_deterministic(pipes, sampler):
    if sampler not in available_samplers("sd"):
        pytest.skip(f"{sampler} is not available here")
    a = render(pipes["sd"], params(sampler=sampler, seed=99))[0]
    b = render(pipes["sd"], params(sampler=sampler, seed=99))[0]
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_batch_image_i_uses_seed_plus_i(pipes, sampler):
    pipe = pipes["sd"]
    batch = render(pipe, params(sampler=sampler, seed=50, num_images=2))
    single = render(pipe, params(sampler=sampler, seed=51))[0]
    assert len(batch) == 2
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))
    # Batched and single convolutions may round differently in the last bit.
    assert np.abs(pixels(batch[1]) - pixels(single)).max() <= 2


def test_same_seed_option_repeats_the_image(pipes):
    images = render(pipes["sd"], params(num_images=2, same_seed=True))
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() <= 2


def test_render_keeps_the_pipeline_scheduler(pipes):
    pipe = pipes["sdxl"]
    before = pipe.scheduler
    render(pipe, params(sampler="unipc", scheduler="karras"))
    assert pipe.scheduler is before
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_render_refuses_bad_sampler(pipes):
    with pytest.raises(ValueError, match="sigma schedule 'karras' is not available with sampler 'ddim'"):
        render(pipes["sd"], params(sampler="ddim", scheduler="karras"))


# --------------------------------------------------------------------------- progress and cancel


def test_on_step_reports_each_step(pipes):
    calls = []
    render(pipes["sdxl"], params(steps=4), on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_cancel_from_on_step_stops_the_render(pipes, family):
    calls = []

    def on_step(i, n):
        calls.append((i, n))
        if i == 2:
            raise RenderCanceled("job canceled")

    pipe = pipes[family]
    before = pipe.scheduler
    with pytest.raises(RenderCanceled, match="job canceled"):
        render(pipe, params(steps=4), on_step=on_step)
    assert calls == [(1, 4), (2, 4)]
    assert pipe.scheduler is before
    # The pipeline still works after a cancel.
    assert render(pipe, params(steps=2))[0].size == (64, 64)


# --------------------------------------------------------------------------- samplers


def test_check_sampler_accepts_good_combinations():
    assert check_sampler("sd", "euler", "normal") is None
    assert check_sampler("sdxl", "dpmpp_2m", "karras") is None
    assert check_sampler("sd", "ddim", "sgm_uniform") is None
    assert check_sampler("sdxl", "unipc", "exponential") is None


def test_check_sampler_messages():
    msg = check_sampler("sd", "x", "normal")
    assert msg is not None and msg.startswith("sampler 'x' is not known; choose one of ")
    assert "euler" in msg and "dpmpp_2m" in msg
    assert check_sampler("sd", "ddim", "karras") == "sigma schedule 'karras' is not available with sampler 'ddim'"
    assert check_sampler("sd", "euler_ancestral", "exponential") == (
        "sigma schedule 'exponential' is not available with sampler 'euler_ancestral'"
    )
    assert check_sampler("sd", "lcm", "karras") == "sigma schedule 'karras' is not available with sampler 'lcm'"
    msg = check_sampler("sd", "euler", "linear")
    assert msg is not None and msg.startswith("sigma schedule 'linear' is not known; choose one of normal")
    assert check_sampler("flux", "euler", "normal") is None
    assert check_sampler("flux", "heun", "normal") == (
        "sampler 'heun' is not available for flux models; choose one of euler, euler_ancestral, dpmpp_2m, unipc, lcm"
    )
    assert check_sampler("sd3", "ddim", "normal").startswith("sampler 'ddim' is not available for sd3 models")
    assert check_sampler("flux", "dpmpp_2m", "karras") == (
        "sigma schedule 'karras' is not available with sampler 'dpmpp_2m' on flux models"
    )
    msg = check_sampler("sd4", "euler", "normal")
    assert msg is not None and "family 'sd4'" in msg


def test_dpmpp_sde_without_torchsde_is_reported(monkeypatch):
    real = samplers._module_available
    monkeypatch.setattr(samplers, "_module_available", lambda name: False if name == "torchsde" else real(name))
    msg = check_sampler("sd", "dpmpp_sde", "normal")
    assert msg is not None and "torchsde" in msg and "'dpmpp_sde'" in msg
    assert "dpmpp_sde" not in available_samplers("sd")
    with pytest.raises(ValueError, match="torchsde"):
        build_scheduler({}, "dpmpp_sde", "normal")


def test_build_scheduler_settings(pipes):
    base = pipes["sd"].scheduler.config
    s = build_scheduler(base, "dpmpp_2m_sde", "karras")
    assert type(s).__name__ == "DPMSolverMultistepScheduler"
    assert s.config.algorithm_type == "sde-dpmsolver++"
    assert s.config.use_karras_sigmas is True
    assert s.config.beta_schedule == base.beta_schedule  # training schedule kept
    assert build_scheduler(base, "dpmpp_2m", "normal").config.algorithm_type == "dpmsolver++"
    assert build_scheduler(base, "euler", "sgm_uniform").config.timestep_spacing == "trailing"
    assert build_scheduler(base, "heun", "exponential").config.use_exponential_sigmas is True
    ddim = build_scheduler(base, "ddim", "normal")
    assert ddim.config.clip_sample is False
    # A base config with karras on does not leak into "normal".
    karras_base = build_scheduler(base, "euler", "karras").config
    assert build_scheduler(karras_base, "euler", "normal").config.use_karras_sigmas is False
    # A fresh instance each time.
    assert build_scheduler(base, "euler", "normal") is not build_scheduler(base, "euler", "normal")
    with pytest.raises(ValueError, match="not available with sampler 'ddim'"):
        build_scheduler(base, "ddim", "karras")


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("family", FAMILIES)
def test_write_tiny_model_round_trips(pipes, family, tmp_path):
    from diffusers import DiffusionPipeline

    path = write_tiny_model(tmp_path / family, family=family, seed=0)
    assert path == tmp_path / family
    meta = json.loads((path / "farm_model.json").read_text())
    assert meta["family"] == family and meta["tiny"] is True and "noise" in meta["note"]
    denoiser = "unet" if family in ("sd", "sdxl") else "transformer"
    assert list(path.glob(f"{denoiser}/*.safetensors")), "weights should be safetensors"

    with quiet_progress_bars():
        # Through the family's loader, as a worker loads it (Qwen-Image-Edit's
        # processor needs torchvision through diffusers' generic loader).
        loaded = get_family(family).load(str(path), torch.float32)
    assert isinstance(loaded, DiffusionPipeline) and type(loaded) is type(pipes[family])
    assert pipeline_family(loaded) == family
    for name, component in pipes[family].components.items():
        if isinstance(component, torch.nn.Module):
            assert state_equal(getattr(loaded, name), component), name
    if not get_family(family).text_to_image:
        return  # it renders only from a source image; test_editing.py renders a loaded folder

    via_loader = load_pipeline(path, family, torch.device("cpu"), torch.float32)
    a = render(via_loader, params(seed=3))[0]
    b = render(pipes[family], params(seed=3))[0]
    if isinstance(getattr(pipes[family], "transformer", None), FluxTransformer2DModel):
        # Same weights, yet FLUX's transformer (FLUX.1 and Kontext's) computes
        # ~2e-7 apart on tensors read from safetensors and on ones built in
        # memory (CPU kernels pick paths by alignment): one pixel value in
        # the image, on some CPUs for Kontext too. Two loads from disk agree
        # exactly (below).
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
        again = load_pipeline(path, family, torch.device("cpu"), torch.float32)
        assert np.array_equal(pixels(a), pixels(render(again, params(seed=3))[0]))
    else:
        assert np.array_equal(pixels(a), pixels(b))


def test_tiny_weights_follow_the_seed(pipes):
    again = build_tiny_pipeline("sd", seed=0)
    other = build_tiny_pipeline("sd", seed=1)
    assert state_equal(again.unet, pipes["sd"].unet)
    assert state_equal(again.vae, pipes["sd"].vae)
    assert not state_equal(other.unet, pipes["sd"].unet)


def test_tiny_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'sd4'"):
        write_tiny_model(tmp_path / "x", family="sd4")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="'nope'"):
        build_tiny_pipeline("nope")


def test_family_and_vram(pipes):
    for family, pipe in pipes.items():
        assert pipeline_family(pipe) == family
        n_bytes = sum(
            t.numel() * t.element_size()
            for c in pipe.components.values()
            if isinstance(c, torch.nn.Module)
            for t in (*c.parameters(), *c.buffers())
        )
        assert math.isclose(estimate_vram_gb(pipe), n_bytes / 2**30, rel_tol=1e-6)
        assert 0 < estimate_vram_gb(pipe) < 0.05
    with pytest.raises(ValueError):
        pipeline_family(object())
    with pytest.raises(ValueError, match="'sd4'"):
        load_pipeline("/nonexistent", "sd4", torch.device("cpu"), torch.float32)


# --------------------------------------------------------------------------- device / dtype


def test_pick_device_and_dtype():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(cpu, "fp16") == torch.float32
    cuda = torch.device("cuda")  # constructing the object needs no GPU
    assert pick_dtype(cuda) == torch.float16
    assert pick_dtype(cuda, "fp32") == torch.float32
    if not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
        assert pick_dtype(cuda, "bf16") == torch.bfloat16
        # Flow-matching families default to bf16 (their activations overflow fp16).
        assert pick_dtype(cuda, None, "flux") == torch.bfloat16
        assert pick_dtype(cuda, None, "sd3") == torch.bfloat16
    assert pick_dtype(cuda, None, "sdxl") == torch.float16
    assert pick_dtype(cuda, "fp16", "flux") == torch.float16
    assert pick_dtype(cpu, None, "flux") == torch.float32
    with pytest.raises(ValueError):
        pick_dtype(cuda, "int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


# --------------------------------------------------------------------------- encoding

TEXT = {"prompt": "a cät on the rug 🙂", "seed": "1234", "parameters": "steps: 3, sampler: euler"}


def test_encode_png_is_deterministic_and_text_reads_back(pipes):
    (image,) = render(pipes["sd"], params())
    data = encode_image(image, "png", TEXT)
    assert data == encode_image(image, "png", dict(reversed(list(TEXT.items()))))
    with Image.open(io.BytesIO(data)) as back:
        assert back.format == "PNG"
        assert back.text == TEXT
        assert np.array_equal(pixels(back), pixels(image))
    assert read_image_text(data) == TEXT
    assert encode_image(image, "png", {**TEXT, "seed": "1"}) != data


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_encode_lossy_formats(pipes, fmt):
    (image,) = render(pipes["sd"], params())
    data = encode_image(image, fmt, TEXT)
    assert data == encode_image(image, fmt, TEXT)
    with Image.open(io.BytesIO(data)) as back:
        assert back.format == fmt.upper()
        assert back.size == image.size
    assert read_image_text(data) == TEXT


def test_encode_rejects_unknown_format():
    with pytest.raises(ValueError, match="'gif'"):
        encode_image(Image.new("RGB", (8, 8)), "gif", {})


# --------------------------------------------------------------------------- guidance extras


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_clip_skip_changes_the_image_and_one_means_none(pipes, family):
    base = render(pipes[family], params())[0]
    assert np.array_equal(pixels(base), pixels(render(pipes[family], params(clip_skip=1))[0]))
    assert not np.array_equal(pixels(base), pixels(render(pipes[family], params(clip_skip=2))[0]))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_freeu_is_on_for_one_render_only(pipes, family):
    base = render(pipes[family], params())[0]
    with_freeu = render(pipes[family], params(freeu=True))[0]
    assert not np.array_equal(pixels(base), pixels(with_freeu))
    # The shared UNet is back to normal afterwards.
    assert np.array_equal(pixels(base), pixels(render(pipes[family], params())[0]))


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_detail_guidance_runs_the_perturbed_attention_pipeline(pipes, family):
    base = render(pipes[family], params())[0]
    detailed = render(pipes[family], params(detail_guidance=3.0))[0]
    assert not np.array_equal(pixels(base), pixels(detailed))
    assert np.array_equal(pixels(detailed), pixels(render(pipes[family], params(detail_guidance=3.0))[0]))
    assert "PAG" in type(P.derived_pipeline(pipes[family], "text2img", pag=True)).__name__
    # The base pipeline is untouched: its attention is not perturbed.
    assert np.array_equal(pixels(base), pixels(render(pipes[family], params())[0]))


def test_extras_a_family_lacks_are_refused(pipes):
    with pytest.raises(ValueError, match="FreeU works on UNets"):
        render(pipes["flux"], params(freeu=True))
    with pytest.raises(ValueError, match="not available for flux"):
        render(pipes["flux"], params(detail_guidance=2.0))
    with pytest.raises(ValueError, match="no CLIP text encoder"):
        render(pipes["flux"], params(clip_skip=2))
    assert P.check_extras("sd3", clip_skip=None, freeu=False, detail_guidance=2.0, inpainting=True) == [
        ("detail_guidance", "detail guidance is not available for sd3 inpainting or outpainting")]


# --------------------------------------------------------------------------- self-attention guidance


def test_self_attention_guidance_runs_the_sag_pipeline_on_the_shared_unet(pipes):
    pipe = pipes["sd"]
    base = render(pipe, params(sampler="dpmpp_2m"))[0]
    assert np.array_equal(pixels(base), pixels(render(pipe, params(sampler="dpmpp_2m", sag_scale=0.0))[0]))
    guided = render(pipe, params(sampler="dpmpp_2m", sag_scale=0.75))[0]
    assert not np.array_equal(pixels(base), pixels(guided))
    assert np.array_equal(pixels(guided), pixels(render(pipe, params(sampler="dpmpp_2m", sag_scale=0.75))[0]))
    sag = P.derived_pipeline(pipe, "sag")
    assert type(sag).__name__ == "StableDiffusionSAGPipeline" and sag.unet is pipe.unet and sag.vae is pipe.vae
    assert np.array_equal(pixels(base), pixels(render(pipe, params(sampler="dpmpp_2m"))[0]))


@pytest.mark.parametrize("sampler", samplers.SAG_SAMPLERS)
def test_self_attention_guidance_renders_with_each_integer_timestep_sampler(pipes, sampler):
    steps = []
    [image] = render(pipes["sd"], params(sampler=sampler, sag_scale=1.0, num_images=1),
                     on_step=lambda done, total: steps.append((done, total)))
    assert image.size == (64, 64) and steps == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("sampler", sorted(set(get_family("sd").samplers) - set(samplers.SAG_SAMPLERS)))
def test_self_attention_guidance_refuses_samplers_on_float_timesteps(pipes, sampler):
    with pytest.raises(ValueError, match="self-attention guidance needs a sampler on integer timesteps"):
        render(pipes["sd"], params(sampler=sampler, sag_scale=1.0))


def test_self_attention_guidance_combines_with_freeu_and_clip_skip(pipes):
    pipe = pipes["sd"]
    guided = pixels(render(pipe, params(sampler="unipc", sag_scale=1.0))[0])
    assert not np.array_equal(guided, pixels(render(pipe, params(sampler="unipc", sag_scale=1.0, freeu=True))[0]))
    assert not np.array_equal(guided, pixels(render(pipe, params(sampler="unipc", sag_scale=1.0, clip_skip=2))[0]))


def test_a_canceled_sag_render_gives_the_unet_its_attention_back(pipes):
    pipe = pipes["sd"]
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}

    def cancel(done, total):
        raise P.RenderCanceled()

    with pytest.raises(P.RenderCanceled):
        render(pipe, params(sampler="ddim", sag_scale=1.0), on_step=cancel)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before


def test_self_attention_guidance_is_refused_where_it_cannot_run(pipes):
    with pytest.raises(ValueError, match="available for sd models, not for sdxl"):
        render(pipes["sdxl"], params(sampler="dpmpp_2m", sag_scale=1.0))
    assert P.check_extras("sd", clip_skip=None, freeu=False, detail_guidance=2.0, inpainting=False, sag_scale=1.0,
                          sampler="euler", image_input=True, image_prompts=True) == [
        ("sag_scale", "self-attention guidance renders text to image only; leave sag_scale out with image_mode"),
        ("sag_scale", "self-attention guidance and detail guidance both replace the UNet's attention; use one of them"),
        ("sag_scale", "self-attention guidance does not combine with image prompts; leave one of them out"),
        ("sampler", "self-attention guidance needs a sampler on integer timesteps; choose one of "
                    "dpmpp_2m, dpmpp_2m_sde, unipc, ddim, lcm (not 'euler')"),
    ]


def test_large_images_decode_with_a_tiled_vae(pipes, monkeypatch):
    monkeypatch.setattr(P, "LARGE_IMAGE_PIXELS", 64 * 64)
    pipe = pipes["sd"]
    seen = []
    original_decode = pipe.vae.decode

    def spy(*args, **kwargs):
        seen.append(pipe.vae.use_tiling)
        return original_decode(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", spy)
    (image,) = render(pipe, params(width=160, height=128))
    assert image.size == (160, 128) and pixels(image).std() > 1.0
    render(pipe, params(width=64, height=64))
    assert seen == [True, False]
    assert pipe.vae.use_tiling is False
