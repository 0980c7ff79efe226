"""Preemption at step boundaries: a render stopped after some iterations,
checkpointed through bytes and continued in a fresh pipeline object gives
the same PNG bytes as a render that never stopped (farm/workers/resume.py)."""

from __future__ import annotations

import hashlib
import io

import pytest

from farm.families import available_samplers, get_family, renderer_names, sampler_resumable
from farm.workers.pipelines import RenderParams, RenderPreempted, StepCheckpoint, encode_image, render
from farm.workers.resume import CheckpointError
from farm.workers.tiny import build_tiny_pipeline

FAMILIES = ("sd", "flux")
CASES = [(family, sampler) for family in FAMILIES for sampler in available_samplers(family)
         if sampler_resumable(family, sampler)]
# Two samplers with state beyond the latents (a multistep solver's history, an
# ancestral sampler's noise) on the other flow and noise families.
CASES += [(family, sampler) for family in ("sdxl", "sd3", "flux2", "flux2_klein")
          for sampler in ("dpmpp_2m", "euler_ancestral")]
# Kontext and Qwen-Image have no DPM++ 2M; UniPC is their multistep solver.
# (Qwen-Image-Edit only edits, and renders with image inputs are never
# stopped: test_an_edit_is_never_stopped.)
CASES += [(family, sampler) for family in ("flux_kontext", "qwen_image") for sampler in ("unipc", "euler_ancestral")]


@pytest.fixture(scope="module")
def pipes():
    """Per family: the pipeline that renders and is stopped, and a second,
    fresh object with the same weights that continues."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = (build_tiny_pipeline(family, seed=0), build_tiny_pipeline(family, seed=0))
        return cache[family]

    return get


def params(sampler: str, steps: int = 5, seed: int = 1234) -> RenderParams:
    return RenderParams(prompt="a lighthouse at dusk", negative_prompt="", width=64, height=64, steps=steps,
                        guidance_scale=3.0, sampler=sampler, scheduler="normal", seed=seed)


def png(image) -> bytes:
    return encode_image(image, "png", {"farm": "test"})


def stop_after(calls: int):
    """A stop_requested that says yes at its ``calls``-th question."""
    asked = {"n": 0}

    def stop() -> bool:
        asked["n"] += 1
        return asked["n"] == calls

    return stop


def stopped(pipe, render_params: RenderParams, at: int) -> StepCheckpoint:
    with pytest.raises(RenderPreempted) as raised:
        render(pipe, render_params, stop_requested=stop_after(at))
    # Through bytes, as it goes to the store and comes back on another worker.
    return StepCheckpoint.from_bytes(raised.value.checkpoint.to_bytes())


@pytest.mark.parametrize("family,sampler", CASES)
def test_stopped_and_continued_render_has_the_uninterrupted_bytes(pipes, family, sampler):
    first, fresh = pipes(family)
    render_params = params(sampler)
    whole = png(render(first, render_params)[0])
    checkpoint = stopped(first, render_params, at=2)
    assert checkpoint.step == 2 and checkpoint.total > 2
    continued = png(render(fresh, render_params, resume=checkpoint)[0])
    assert hashlib.sha256(continued).hexdigest() == hashlib.sha256(whole).hexdigest()


def test_every_rendering_family_is_checked_here():
    """The scheduler may preempt any family's render with a resumable sampler:
    a new family (its own denoising loop) needs its cases above first, or its
    samplers declared resumable=False."""
    # A family that renders nothing from text alone always has image inputs, which are never stopped.
    missing = {name for name in renderer_names() if get_family(name).text_to_image} - {family for family, _ in CASES}
    assert not missing, f"no resume test for {', '.join(sorted(missing))}: add it to CASES in {__file__}"


def test_an_edit_is_never_stopped(pipes):
    import PIL.Image

    from farm.workers.pipelines import ImageInputs

    first, _ = pipes("qwen_image_edit")
    source = ImageInputs(image=PIL.Image.new("RGB", (64, 64), (200, 40, 40)), strength=1.0, edit=True)
    (image,) = render(first, params("unipc", steps=3), inputs=source, stop_requested=lambda: True)
    assert image.size == (64, 64)


def test_continued_render_reports_progress_from_the_checkpoint(pipes):
    first, fresh = pipes("sd")
    checkpoint = stopped(first, params("dpmpp_2m"), at=3)
    steps: list[tuple[int, int]] = []
    render(fresh, params("dpmpp_2m"), on_step=lambda done, total: steps.append((done, total)), resume=checkpoint)
    assert steps == [(4, 5), (5, 5)]


def test_the_sampler_state_is_what_makes_the_bytes_equal(pipes):
    """Without DPM++'s remembered model outputs and counters the continued
    render takes a first-order step and ends elsewhere: the exactness test
    above can fail."""
    first, fresh = pipes("sd")
    whole = png(render(first, params("dpmpp_2m"))[0])
    checkpoint = stopped(first, params("dpmpp_2m"), at=2)
    checkpoint.scheduler_state = {}
    assert png(render(fresh, params("dpmpp_2m"), resume=checkpoint)[0]) != whole


def test_the_generator_state_is_what_makes_ancestral_bytes_equal(pipes):
    first, fresh = pipes("sd")
    whole = png(render(first, params("euler_ancestral"))[0])
    checkpoint = stopped(first, params("euler_ancestral"), at=2)
    other = stopped(first, params("euler_ancestral", seed=99), at=2)
    checkpoint.generator_states = other.generator_states
    assert png(render(fresh, params("euler_ancestral"), resume=checkpoint)[0]) != whole


def test_a_non_resumable_sampler_is_never_stopped(pipes):
    sampler = next(name for name, spec in get_family("sd").sampler_table.items() if not spec.resumable)
    assert not sampler_resumable("sd", sampler)
    if sampler not in available_samplers("sd"):
        pytest.skip(f"{sampler} needs a package this machine lacks")
    first, _ = pipes("sd")
    asked: list[int] = []
    images = render(first, params(sampler, steps=3), stop_requested=lambda: asked.append(1) or True)
    assert len(images) == 1 and asked == []
    with pytest.raises(CheckpointError):
        render(first, params(sampler, steps=3), resume=stopped(first, params("euler", steps=3), at=1))


def test_the_last_iteration_is_never_a_stop(pipes):
    first, _ = pipes("sd")
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 99  # never, but counts the questions

    render(first, params("euler", steps=4), stop_requested=stop)
    assert len(asked) == 3  # after iterations 1..3, not after the 4th


def test_a_checkpoint_of_another_format_is_refused():
    import torch

    buffer = io.BytesIO()
    torch.save({"version": 0}, buffer)
    with pytest.raises(CheckpointError, match="format"):
        StepCheckpoint.from_bytes(buffer.getvalue())
