"""The SDXL refiner: an image-to-image UNet that denoises the last part of an SDXL render's schedule."""

from __future__ import annotations

import dataclasses
import logging

from farm.families import sdxl
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)


def load(path: str, dtype, **extras):
    # The published SDXL refiner is saved as an image-to-image pipeline.
    return from_pretrained("StableDiffusionXLImg2ImgPipeline", path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    """An image-to-image pipeline with only the second text encoder,
    conditioned on an aesthetic score instead of the target size, denoising
    the last part of the schedule in the base model's latent space."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    from farm.families import tiny_parts as parts

    projection_dim = parts.TEXT_HIDDEN
    torch.manual_seed(seed + 100)
    # The second encoder's penultimate hidden states only.
    unet = parts.sdxl_unet(parts.TEXT_HIDDEN, parts.SDXL_REFINER_TIME_IDS, projection_dim)
    torch.manual_seed(seed)
    vae = parts.tiny_vae()  # the base's latent space: a refiner takes the base's latents as they are
    tokenizer_2 = parts.build_tiny_tokenizer()
    torch.manual_seed(seed + 100)
    text_encoder_2 = CLIPTextModelWithProjection(parts.text_config(tokenizer_2, projection_dim=projection_dim))
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=parts.tiny_scheduler(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


# The base's latent space, samplers and sizes; only finishes its renders.
FAMILY = dataclasses.replace(
    sdxl.FAMILY,
    name="sdxl_refiner",
    title="Stable Diffusion XL refiner",
    pipeline_class="StableDiffusionXLImg2ImgPipeline",
    load=load,
    build_tiny=build_tiny,
    aspect_ratios=(),  # it takes the base's size
    default_vram_gb=6.1,
    extras=frozenset(),
    freeu=None,
    ip_adapter_layout=None,
    refines=sdxl.FAMILY.name,
)
