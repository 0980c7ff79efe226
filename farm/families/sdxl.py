"""Stable Diffusion XL: a UNet with size micro-conditioning and two CLIP text encoders; a refiner may finish it."""

from __future__ import annotations

import logging

from farm.families.family import NOISE_PREDICTION, Family
from farm.families.latent_rgb import SDXL_4
from farm.families.loading import from_pretrained
from farm.families.sd import UNET_EXTRAS, UNET_FREEU

logger = logging.getLogger(__name__)

#: Frames near one megapixel, the buckets SDXL, FLUX and SD3 were trained near.
MEGAPIXEL_FRAMES = ("1024*1024", "1152*896", "896*1152", "1216*832", "832*1216", "1344*768", "768*1344", "1536*640",
                    "640*1536")


def load(path: str, dtype, **extras):
    # SDXL has no safety checker; its invisible watermark is left at diffusers' default.
    return from_pretrained("StableDiffusionXLPipeline", path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from farm.families import tiny_parts as parts

    projection_dim = parts.TEXT_HIDDEN
    torch.manual_seed(seed)
    # SDXL concatenates the penultimate hidden states of both encoders.
    unet = parts.sdxl_unet(2 * parts.TEXT_HIDDEN, parts.SDXL_TIME_IDS, projection_dim)
    torch.manual_seed(seed)
    vae = parts.tiny_vae()
    tokenizer = parts.build_tiny_tokenizer()
    tokenizer_2 = parts.build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(parts.text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(parts.text_config(tokenizer_2, projection_dim=projection_dim))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=parts.tiny_scheduler(),
        add_watermarker=False,
    )


FAMILY = Family(
    name="sdxl",
    title="Stable Diffusion XL",
    pipeline_class="StableDiffusionXLPipeline",
    load=load,
    build_tiny=build_tiny,
    **NOISE_PREDICTION,
    side_range=(64, 4096),
    side_multiple=8,
    native_side=1024,
    aspect_ratios=MEGAPIXEL_FRAMES,
    default_vram_gb=7.0,
    default_steps=30,
    default_guidance=7.0,
    step_s=0.12,
    latent_rgb=SDXL_4,
    extras=UNET_EXTRAS | {"refiner"},
    freeu=UNET_FREEU,
    ip_adapter_layout="unet",
)
