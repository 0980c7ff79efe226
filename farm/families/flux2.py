"""FLUX.2 [dev]: a 32B flow transformer, guidance-distilled (the guidance
scale is an input of the transformer), with a Mistral Small 3.1 text encoder,
conditioning on up to 10 reference images."""

from __future__ import annotations

import logging

from farm.families.family import Family
from farm.families.flux2_common import FLUX2, build_tiny_flux2
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

# Mistral's hidden states that FLUX.2 [dev] stacks into its prompt embedding
# (the pipeline's text_encoder_out_layers default): the tiny encoder needs as many layers.
_TEXT_LAYERS_READ = (10, 20, 30)


def load(path: str, dtype, **extras):
    # The published folder's tokenizer is a PixtralProcessor, which needs
    # torchvision installed on the worker.
    return from_pretrained("Flux2Pipeline", path, dtype, **extras)


def build_tiny(seed: int, variant: str | None = None):
    """A tiny [dev]. Its tokenizer is the tiny chat-templated tokenizer rather
    than a PixtralProcessor: the pipeline only calls its apply_chat_template
    on text, and the processor would need torchvision here."""
    from farm.families import tiny_parts as parts

    return build_tiny_flux2("Flux2Pipeline", seed, _TEXT_LAYERS_READ, parts.tiny_mistral3, guidance_embeds=True)


FAMILY = Family(
    name="flux2",
    title="FLUX.2 [dev]",
    pipeline_class="Flux2Pipeline",
    load=load,
    build_tiny=build_tiny,
    **FLUX2,
    # 32B transformer (64 GB in bf16) and Mistral Small 3.1 24B (48 GB), the VAE.
    default_vram_gb=112.0,
    default_steps=50,
    default_guidance=4.0,
    step_s=1.0,
    # BFL's limit for FLUX.2 [dev]: up to 10 reference images in one render.
    max_references=10,
    working_gb_per_megapixel=4.0,
)
