"""Stable Diffusion 1.x / 2.x: a UNet on 4-channel latents with one CLIP text encoder."""

from __future__ import annotations

import logging

from farm.families.family import NOISE_PREDICTION, Family
from farm.families.latent_rgb import SD_4
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

# FreeU re-weights the UNet decoder's backbone (b1, b2) and skip (s1, s2)
# features; the values are the FreeU authors' recommended settings for SD and
# SDXL (Si et al., "FreeU: Free Lunch in Diffusion U-Net", CVPR 2024).
UNET_FREEU = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
# Guidance extras of the UNet families' pipelines (diffusers 0.42): CLIP skip,
# FreeU, and perturbed-attention guidance ("detail guidance") in every mode.
UNET_EXTRAS = frozenset({"clip_skip", "freeu", "detail_guidance", "detail_guidance_inpaint"})
# Self-attention guidance (Hong et al., "Improving Sample Quality of Diffusion
# Models Using Self-Attention Guidance", ICCV 2023) has a diffusers pipeline
# for SD 1.x/2.x only (StableDiffusionSAGPipeline).


def load(path: str, dtype, **extras):
    return from_pretrained("StableDiffusionPipeline", path, dtype, safety_checker=None, feature_extractor=None,
                           requires_safety_checker=False, **extras)


def build_tiny(seed: int, variant: str | None = None):
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from farm.families import tiny_parts as parts

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64 // parts.vae_scale_factor(),
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=parts.UNET_CHANNELS,
        layers_per_block=1,
        cross_attention_dim=parts.TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = parts.tiny_vae()
    tokenizer = parts.build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(parts.text_config(tokenizer))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=parts.tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


FAMILY = Family(
    name="sd",
    title="Stable Diffusion 1.5",
    pipeline_class="StableDiffusionPipeline",
    load=load,
    build_tiny=build_tiny,
    **NOISE_PREDICTION,
    side_range=(64, 2048),
    side_multiple=8,  # the VAE's factor
    native_side=512,
    # The buckets SD 1.5 was trained near (around 512 px).
    aspect_ratios=("512*512", "768*512", "512*768", "640*512", "512*640", "256*256", "384*256", "256*384"),
    default_vram_gb=2.2,
    default_steps=25,
    default_guidance=7.0,
    step_s=0.05,
    latent_rgb=SD_4,
    extras=UNET_EXTRAS | {"sag"},
    freeu=UNET_FREEU,
    sag_pipeline_class="StableDiffusionSAGPipeline",
    ip_adapter_layout="unet",
)
