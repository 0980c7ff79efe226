"""Live previews (issue 19): the fixed latent-to-RGB projection and the
worker's step callback that publishes them."""

from __future__ import annotations

import base64
import io

import numpy as np
import PIL.Image
import pytest
import torch

from farm.workers.previews import PROJECTIONS, latents_to_rgb, preview_jpeg, unpack_latents


def test_zero_latents_are_mid_grey_and_brightness_is_channel_0():
    grey = latents_to_rgb(torch.zeros(1, 4, 6, 8), "sd", 64, 48)
    assert grey.shape == (6, 8, 3) and grey.dtype == np.uint8
    assert np.all(grey == 128)
    bright = torch.zeros(1, 4, 6, 8)
    bright[:, 0] = 1.0
    pixel = latents_to_rgb(bright, "sd", 64, 48)[0, 0]
    assert all(value > 200 for value in pixel)  # 0.5 + ~0.33 of each colour


def test_a_warm_latent_is_red_and_values_stay_in_range():
    warm = torch.zeros(1, 4, 2, 2)
    warm[:, 1] = 2.0
    r, g, b = (int(v) for v in latents_to_rgb(warm, "sdxl", 16, 16)[0, 0])
    assert r > 200 and b < 100 and r > g > b
    wild = latents_to_rgb(torch.randn(1, 4, 8, 8) * 50, "sd", 64, 64)
    assert wild.min() >= 0 and wild.max() <= 255 and {0, 255} <= set(np.unique(wild))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_sixteen_channel_families_give_the_colour_of_the_four_channel_role(family):
    assert len(PROJECTIONS[family]) == 16
    ones = torch.zeros(1, 16, 2, 2)
    ones[:, 0:4] = 1.0  # the brightness group
    pixel = latents_to_rgb(ones, family, 16, 16)[0, 0]
    assert all(190 < value < 230 for value in pixel)


def test_flux_packed_latents_are_unpacked_in_row_order():
    # 4 rows x 8 columns of latent pixels are 2 x 4 tokens of 2x2 patches.
    latents = torch.zeros(1, 4, 4, 8)
    latents[0, 0, 0, 7] = 1.0  # top right latent pixel
    latents[0, 2, 3, 0] = 1.0  # bottom left, channel 2
    packed = latents.view(1, 4, 2, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 8, 16)
    assert torch.equal(unpack_latents(packed, 128, 64), latents)
    with pytest.raises(ValueError):
        unpack_latents(torch.zeros(1, 7, 16), 128, 64)


def test_preview_is_a_small_jpeg_in_the_image_aspect():
    data = preview_jpeg(torch.randn(1, 4, 96, 64), "sd", 512, 768, side=128)
    image = PIL.Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (85, 128)
    assert len(data) < 16_000


class _Events:
    def __init__(self):
        self.messages = []

    def publish_live(self, job_id, campaign_id, message):
        self.messages.append(message)


def test_the_step_callback_publishes_previews_every_n_steps_during_a_tiny_render(tmp_path):
    from types import SimpleNamespace

    from farm.settings import Settings
    from farm.workers.pipelines import RenderParams, render
    from farm.workers.render import ProgressReporter
    from farm.workers.tiny import build_tiny_pipeline

    events = _Events()
    settings = Settings(home=tmp_path, preview_every_steps=2)
    runtime = SimpleNamespace(ctx=SimpleNamespace(settings=settings, events=events), stop_deadline=None, name="w")
    reporter = ProgressReporter(runtime, "job-1", 1)
    reporter.family, reporter.width, reporter.height = "flux", 64, 32

    def on_step(step, total):  # the reporter's bookkeeping without its database write
        reporter.step, reporter.total = step, total
    params = RenderParams(prompt="a fox", negative_prompt="", width=64, height=32, steps=5, guidance_scale=3.0,
                          sampler="euler", scheduler="normal", seed=1, num_images=1)
    render(build_tiny_pipeline("flux"), params, on_step=on_step, on_latents=reporter.preview)
    previews = [m for m in events.messages if m["type"] == "preview"]
    assert [m["step"] for m in previews] == [2, 4, 5]
    image = PIL.Image.open(io.BytesIO(base64.b64decode(previews[0]["jpeg"])))
    assert image.size == (128, 64) and previews[0]["job"] == "job-1"


def test_fit_projection_recovers_a_linear_map_by_least_squares():
    from farm.workers.previews import fit_projection

    truth = torch.tensor(PROJECTIONS["sd"], dtype=torch.float32)
    latents = torch.randn(3, 4, 6, 6)
    # Each latent pixel stands for a 2x2 patch of a uniform colour here.
    colours = 0.5 + torch.einsum("bchw,cr->brhw", latents, truth)
    images = colours.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert np.allclose(fit_projection(latents, images), truth.numpy(), atol=1e-4)
