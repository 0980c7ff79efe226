"""Qwen-Image: a 20B flow-matching MMDiT on packed 2x2 latent patches, prompts encoded by Qwen2.5-VL.

Not guidance-distilled: guidance is true classifier-free guidance, a second
transformer pass on the negative prompt each step (``true_cfg_scale`` in
diffusers), so the request's guidance scale is that scale and its negative
prompt is used.
"""

from __future__ import annotations

import logging

from farm.families.family import FLOW_OWN_SIGMAS, Family
from farm.families.latent_rgb import QWEN_16
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "QwenImagePipeline"


def load(path: str, dtype, **extras):
    return from_pretrained(PIPELINE_CLASS, path, dtype, **extras)


def tiny_scheduler():
    """Qwen-Image's schedule: sigmas shifted by image size (exponential time
    shift between 0.5 and 0.9) and stretched to end at 0.02."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                                           max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")


def tiny_components(seed: int) -> dict:
    """Tiny Qwen-Image components (Qwen-Image-Edit shares them)."""
    import torch

    from farm.families import tiny_parts as parts

    tokenizer = parts.build_tiny_qwen_vl_tokenizer()
    torch.manual_seed(seed)
    text_encoder = parts.tiny_qwen_vl(tokenizer)
    torch.manual_seed(seed)
    vae = parts.tiny_qwen_vae()
    torch.manual_seed(seed)
    transformer = parts.tiny_qwen_transformer()
    return dict(scheduler=tiny_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                transformer=transformer)


def build_tiny(seed: int, variant: str | None = None):
    import diffusers

    return getattr(diffusers, PIPELINE_CLASS)(**tiny_components(seed))


def true_cfg_kwargs(negative_prompt: str, guidance_scale: float, width: int, height: int) -> dict:
    """True classifier-free guidance: the guidance scale weighs the prompt
    against the negative prompt (a blank one when none is given, as the
    model's authors do); at 1 or below there is no second pass, and no
    negative prompt is passed (the pipeline would warn that it is unused).
    ``guidance_scale`` itself is for guidance-distilled transformers only."""
    if guidance_scale <= 1:
        return {"true_cfg_scale": 1.0, "guidance_scale": None}
    return {"true_cfg_scale": guidance_scale, "guidance_scale": None, "negative_prompt": negative_prompt or " "}


# Qwen-Image's recommended frames (its authors' list), sides floored to 16.
QWEN_FRAMES = ("1328*1328", "1664*928", "928*1664", "1472*1136", "1136*1472", "1584*1056", "1056*1584")

FAMILY = Family(
    name="qwen_image",
    title="Qwen-Image",
    pipeline_class=PIPELINE_CLASS,
    load=load,
    build_tiny=build_tiny,
    **FLOW_OWN_SIGMAS,  # its own sigma list: no heun, no dpmpp_2m, UniPC for quality
    dynamic_shift=True,
    side_range=(64, 2048),
    side_multiple=16,  # the VAE's 8, times the 2x2 patches it packs
    native_side=1328,
    aspect_ratios=QWEN_FRAMES,
    # 16-bit weights: the 20B transformer (40.9 GB), Qwen2.5-VL-7B (16.6 GB)
    # and the VAE (0.25 GB): 57.7 GB, 53.8 GiB.
    default_vram_gb=53.8,
    default_steps=50,
    default_guidance=4.0,
    # Two transformer passes per step (true CFG) of a 20B model at 1.76 MP.
    step_s=1.6,
    latent_rgb=QWEN_16,
    working_gb_base=0.8,
    working_gb_per_megapixel=3.2,  # a wider transformer than FLUX.1's, and the guidance pass batched beside it
    call_kwargs=true_cfg_kwargs,
)
