"""FLUX.1 Kontext [dev]: FLUX.1 that also sees a source image and edits it from an instruction.

The source image is encoded by the same VAE and its packed latent tokens are
appended to the tokens being denoised (with their own position ids), so the
transformer attends to it at every step; without a source it renders from
text alone like FLUX.1 [dev]. Guidance-distilled like [dev]: the guidance
scale is an input of the transformer, and there is no negative prompt.
"""

from __future__ import annotations

import logging

from farm.families import flux
from farm.families.family import FLOW_OWN_SIGMAS, Family
from farm.families.latent_rgb import FLUX_16
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "FluxKontextPipeline"


def load(path: str, dtype, **extras):
    return from_pretrained(PIPELINE_CLASS, path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    """The tiny FLUX.1 [dev] components under Kontext's pipeline: the weights
    are random either way, and the structure (a guidance-embedding FLUX
    transformer, CLIP, T5, the 16-channel VAE) is Kontext's."""
    import diffusers

    return getattr(diffusers, PIPELINE_CLASS)(**flux.tiny_components(seed, "dev"))


def call_kwargs(negative_prompt: str, guidance_scale: float, width: int, height: int) -> dict:
    # The pipeline rescales the output to max_area (1024 x 1024 unless told)
    # at the requested aspect ratio; the farm has already fixed the size.
    # The source itself is resized by the pipeline to the nearest of the
    # resolutions Kontext was trained at, as its authors recommend.
    return {"max_area": width * height}


FAMILY = Family(
    name="flux_kontext",
    title="FLUX.1 Kontext",
    pipeline_class=PIPELINE_CLASS,
    load=load,
    build_tiny=build_tiny,
    **FLOW_OWN_SIGMAS,  # its own sigma list: no heun, no dpmpp_2m, UniPC for quality
    dynamic_shift=True,
    side_range=(64, 4096),
    side_multiple=16,  # the VAE's 8, times the 2x2 patches it packs
    native_side=1024,
    # Some of the resolutions Kontext was trained at (the pipeline's PREFERRED_KONTEXT_RESOLUTIONS).
    aspect_ratios=("1024*1024", "1184*880", "880*1184", "1248*832", "832*1248", "1392*752", "752*1392"),
    # 16-bit weights: the 12B transformer (23.8 GB), T5-XXL (9.5 GB), CLIP-L and
    # the VAE (0.4 GB): 33.7 GB, 31.4 GiB.
    default_vram_gb=31.4,
    default_steps=28,
    default_guidance=2.5,  # the guidance its authors use for edits
    # An edit denoises the output's tokens while attending to as many source
    # tokens again: about twice a FLUX.1 step at the same size, until measured.
    step_s=0.9,
    latent_rgb=FLUX_16,  # FLUX.1's VAE, so FLUX.1's (hand-set) preview matrix
    working_gb_per_megapixel=3.2,  # twice the tokens of a FLUX.1 render at the same size
    negative_prompt=False,
    call_kwargs=call_kwargs,
    # Text to image as FLUX.1 [dev]; the plain image-to-image modes have no
    # Kontext pipeline (it does not take a strength), so edits only.
    image_to_image=False,
    edits=True,
)
