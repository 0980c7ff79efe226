"""FLUX.2 [klein] (4B and 9B; step-distilled, and the undistilled "base"
models): a FLUX.2 flow transformer with a Qwen3 text encoder, conditioning on
up to 4 reference images.

The distilled models run in 4 steps without guidance (the pipeline ignores
a guidance scale above 1 and warns); the base models take classifier-free
guidance against an empty prompt and about 50 steps. Which one a folder
holds is its pipeline config's ``is_distilled``.
"""

from __future__ import annotations

import logging

from farm.families.family import Family
from farm.families.flux2_common import FLUX2, build_tiny_flux2
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

# Variants: size (4B on Qwen3-4B, 9B on Qwen3-8B) times distilled or base.
VARIANTS = ("4b", "9b", "base-4b", "base-9b")
# Qwen3's hidden states that FLUX.2 [klein] stacks into its prompt embedding
# (the pipeline's text_encoder_out_layers default): the tiny encoder needs as many layers.
_TEXT_LAYERS_READ = (9, 18, 27)


def load(path: str, dtype, **extras):
    return from_pretrained("Flux2KleinPipeline", path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    """A tiny klein: the same classes and config keys, random weights; the
    "base-" variants are undistilled (is_distilled False: real guidance)."""
    from farm.families import tiny_parts as parts

    variant = variant or VARIANTS[0]
    return build_tiny_flux2("Flux2KleinPipeline", seed, _TEXT_LAYERS_READ, parts.tiny_qwen3, guidance_embeds=False,
                            is_distilled=not variant.startswith("base-"))


_DISTILLED = {"default_steps": 4, "default_guidance": 1.0}
_BASE = {"default_steps": 50, "default_guidance": 4.0}

FAMILY = Family(
    name="flux2_klein",
    title="FLUX.2 [klein]",
    pipeline_class="Flux2KleinPipeline",
    load=load,
    build_tiny=build_tiny,
    tiny_variants=VARIANTS,
    tiny_defaults={variant: _BASE if variant.startswith("base-") else _DISTILLED for variant in VARIANTS},
    **FLUX2,
    # 4B transformer and Qwen3-4B in bf16 (about 8 + 8 GB) and the VAE; the
    # 9B variant (9B + Qwen3-8B) needs about twice that, measured from its files.
    default_vram_gb=17.0,
    default_steps=_DISTILLED["default_steps"],
    default_guidance=_DISTILLED["default_guidance"],
    step_s=0.12,
    # BFL's limit for [klein]: up to 4 reference images in one render.
    max_references=4,
    # Each reference holds a megapixel of tokens at most (the pipeline shrinks larger ones).
    working_gb_per_megapixel=2.4,
)
