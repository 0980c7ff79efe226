"""What FLUX.2 [dev] and [klein] share: their flow schedule and the samplers their pipelines can drive."""

from __future__ import annotations

import logging
from typing import Any

from farm.families.family import FLOW_MATCHING
from farm.families.latent_rgb import FLUX2_32
from farm.families.sdxl import MEGAPIXEL_FRAMES

logger = logging.getLogger(__name__)

# Both pipelines hand the scheduler a sigma list and a resolution- and
# step-dependent mu (the empirical shift of FLUX.2); FlowMatchHeunDiscreteScheduler
# takes no sigma list, so heun is left out, as for FLUX.1. The multistep
# solvers run on their own flow sigmas (the pipelines drop the list then) and
# take mu through dynamic shifting. Each is rendered on tiny models in
# tests/unit/test_flux2_families.py.
FLUX2_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "unipc", "lcm")

# What a FLUX.2 family declaration spreads in (``Family(**FLUX2, ...)``).
FLUX2: dict[str, Any] = dict(
    **FLOW_MATCHING,
    samplers=FLUX2_SAMPLERS,
    dynamic_shift=True,
    side_range=(64, 4096),
    side_multiple=16,  # the VAE's 8, times the 2x2 patches the transformer works on
    native_side=1024,
    aspect_ratios=MEGAPIXEL_FRAMES,
    latent_rgb=FLUX2_32,
    # Neither pipeline takes a negative prompt ([dev] is guidance-distilled;
    # klein's base models guide against an empty prompt): a request's
    # negative prompt is recorded, not used.
    negative_prompt=False,
    # Quantized variants quantize the LLM text encoder too (Mistral Small 24B
    # for [dev], Qwen3 for klein): 16-bit, it alone fills most of a 24 GB GPU.
    quantize=("transformer", "text_encoder"),
)


def build_flux2_scheduler():
    """The FLUX.2 training schedule: shift 3, dynamically shifted by image size."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096, time_shift_type="exponential")


def build_tiny_flux2(pipeline_class: str, seed: int, text_layers_read: tuple[int, ...], make_text_encoder,
                     guidance_embeds: bool, **config):
    """A tiny FLUX.2 pipeline of diffusers class ``pipeline_class``: the tiny
    FLUX.2 transformer and VAE, the tiny chat-templated tokenizer, and
    ``make_text_encoder(tokenizer, layers)`` deep enough for the hidden states
    the pipeline reads (``text_layers_read``); ``config`` goes to the pipeline
    (klein's ``is_distilled``)."""
    import diffusers
    import torch

    from farm.families import tiny_parts as parts

    torch.manual_seed(seed)
    transformer = parts.tiny_flux2_transformer(parts.QWEN_HIDDEN, len(text_layers_read), guidance_embeds=guidance_embeds)
    torch.manual_seed(seed)
    vae = parts.tiny_flux2_vae()
    tokenizer = parts.build_tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = make_text_encoder(tokenizer, max(text_layers_read) + 1)
    return getattr(diffusers, pipeline_class)(scheduler=build_flux2_scheduler(), vae=vae, text_encoder=text_encoder,
                                              tokenizer=tokenizer, transformer=transformer, **config)
