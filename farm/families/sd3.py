"""Stable Diffusion 3: a flow-matching MMDiT on 2x2 latent patches, two CLIP encoders and T5."""

from __future__ import annotations

import logging

from farm.families.family import FLOW_MATCHING, Family
from farm.families.latent_rgb import SD3_16
from farm.families.loading import from_pretrained
from farm.families.sdxl import MEGAPIXEL_FRAMES

logger = logging.getLogger(__name__)


def load(path: str, dtype, **extras):
    return from_pretrained("StableDiffusion3Pipeline", path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from farm.families import tiny_parts as parts

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=64 // parts.vae_scale_factor(),
        patch_size=2,
        in_channels=4,
        num_layers=2,  # perturbed-attention guidance perturbs block 1 by default
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=parts.TEXT_HIDDEN,
        joint_attention_dim=parts.T5_HIDDEN,
        pooled_projection_dim=2 * parts.TEXT_HIDDEN,  # both CLIP encoders' pooled, projected outputs
        out_channels=4,
    )
    torch.manual_seed(seed)
    vae = parts.tiny_flow_vae()
    tokenizer, tokenizer_2 = parts.build_tiny_tokenizer(), parts.build_tiny_tokenizer()
    tokenizer_3 = parts.build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(parts.text_config(tokenizer, projection_dim=parts.TEXT_HIDDEN))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(parts.text_config(tokenizer_2, projection_dim=parts.TEXT_HIDDEN))
    torch.manual_seed(seed)
    text_encoder_3 = parts.tiny_t5(tokenizer_3)
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, transformer=transformer,
    )


FAMILY = Family(
    name="sd3",
    title="Stable Diffusion 3",
    pipeline_class="StableDiffusion3Pipeline",
    load=load,
    build_tiny=build_tiny,
    **FLOW_MATCHING,
    samplers=("euler", "euler_ancestral", "heun", "dpmpp_2m", "unipc", "lcm"),
    side_range=(64, 4096),
    side_multiple=16,  # the VAE's 8, times the 2x2 patches the transformer works on
    native_side=1024,
    aspect_ratios=MEGAPIXEL_FRAMES,
    default_vram_gb=16.0,
    default_steps=28,
    default_guidance=5.0,
    step_s=0.3,
    quantize=("transformer", "text_encoder_3"),  # the T5-XXL encoder is 9.5 GB in 16-bit
    latent_rgb=SD3_16,
    # CLIP skip on its CLIP encoders; perturbed-attention pipelines exist for
    # SD3 except inpainting; FreeU needs a UNet.
    extras=frozenset({"clip_skip", "detail_guidance"}),
)
