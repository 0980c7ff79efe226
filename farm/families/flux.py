"""FLUX.1 (dev, schnell): a flow-matching transformer on packed 2x2 latent patches, CLIP and T5 text encoders."""

from __future__ import annotations

import logging

from farm.families.family import FLOW_MATCHING, Family
from farm.families.latent_rgb import FLUX_16
from farm.families.loading import from_pretrained
from farm.families.sdxl import MEGAPIXEL_FRAMES

logger = logging.getLogger(__name__)


def load(path: str, dtype, **extras):
    return from_pretrained("FluxPipeline", path, dtype, **extras)


def tiny_components(seed: int, variant: str = "dev") -> dict:
    """The tiny FLUX.1 components (FLUX.1 Kontext shares them): "dev" is
    guidance-distilled (the guidance scale is an input of the transformer);
    "schnell" is not and runs in a few steps."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from farm.families import tiny_parts as parts

    torch.manual_seed(seed)
    # FLUX packs 2x2 latent patches, so the transformer sees 4 x 4 channels.
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=parts.T5_HIDDEN,
        pooled_projection_dim=parts.TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=variant == "dev",
    )
    torch.manual_seed(seed)
    vae = parts.tiny_flow_vae()
    tokenizer = parts.build_tiny_tokenizer()
    tokenizer_2 = parts.build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(parts.text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = parts.tiny_t5(tokenizer_2)
    # dev shifts its sigmas by image size; schnell uses them as they are.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if variant == "dev" else 1.0,
        use_dynamic_shifting=variant == "dev",
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny(seed: int, variant: str | None = None):
    from diffusers import FluxPipeline

    return FluxPipeline(**tiny_components(seed, variant or "dev"))


FAMILY = Family(
    name="flux",
    title="FLUX.1",
    pipeline_class="FluxPipeline",
    load=load,
    build_tiny=build_tiny,
    tiny_variants=("dev", "schnell"),
    # schnell is few-step, and guidance is not an input.
    tiny_defaults={"schnell": {"default_steps": 4, "default_guidance": 0.0}},
    **FLOW_MATCHING,
    # FLUX's pipeline hands the scheduler its own sigma list, which
    # FlowMatchHeunDiscreteScheduler cannot take, so FLUX has no heun.
    samplers=("euler", "euler_ancestral", "dpmpp_2m", "unipc", "lcm"),
    dynamic_shift=True,
    side_range=(64, 4096),
    side_multiple=16,  # the VAE's 8, times the 2x2 patches it packs
    native_side=1024,
    aspect_ratios=MEGAPIXEL_FRAMES,
    default_vram_gb=24.0,
    default_steps=28,
    default_guidance=3.5,
    step_s=0.45,
    quantize=("transformer", "text_encoder_2"),  # the T5-XXL encoder is 9.5 GB in 16-bit
    latent_rgb=FLUX_16,
    # Guidance-distilled: no negative prompt (diffusers would need a second,
    # "true CFG" pass), so a request's negative prompt is recorded, not used.
    # No CLIP skip, no FreeU (no UNet), no perturbed-attention pipeline.
    negative_prompt=False,
    ip_adapter_layout="xlabs",
)
