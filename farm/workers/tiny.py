"""Tiny random-weight diffusers pipelines written to folders, with LoRAs and IP-Adapters for them.

Each family builds its own tiny pipeline (``Family.build_tiny`` in
``farm/families``: the same pipeline classes, components and config keys as
the real models, a few hundred thousand random parameters); this module saves
them as model folders the registry and workers load like real ones, and makes
random LoRAs and IP-Adapters that fit them. The images they make are noise.
Nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer

from farm.families import family_names, get_family
from farm.families.tiny_parts import TEXT_HIDDEN, build_tiny_t5_tokenizer, build_tiny_tokenizer, write_tokenizer_files

from .pipelines import quiet_progress_bars

logger = logging.getLogger(__name__)

#: Families this module can build.
TINY_FAMILIES = family_names()

FARM_MODEL_FILE = "farm_model.json"
TINY_NOTE = "random weights, for tests and the offline demo; images are noise"

__all__ = ["FARM_MODEL_FILE", "TINY_FAMILIES", "TINY_NOTE", "build_tiny_pipeline", "build_tiny_t5_tokenizer",
           "build_tiny_tokenizer", "write_tiny_ip_adapter", "write_tiny_lora", "write_tiny_model"]


def _check_family(family: str, variant: str | None = None) -> None:
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; tiny builders exist for: {', '.join(TINY_FAMILIES)}")
    variants = get_family(family).tiny_variants
    if variant is not None and variant not in variants:
        raise ValueError(f"tiny {family} has no variant {variant!r} (variants: {', '.join(variants) or 'none'})")


def build_tiny_pipeline(family: str, seed: int = 0, variant: str | None = None) -> DiffusionPipeline:
    """Build a tiny random-weight pipeline of ``family`` ("sd", "sdxl", "flux" or "sd3").

    The same ``seed`` gives the same weights. The pipeline is on the CPU in
    float32, in eval mode (as from_pretrained leaves it), with the progress bar off.
    ``variant`` picks one of the family's ``tiny_variants`` (FLUX: "dev", the default, or "schnell").
    """
    _check_family(family, variant)
    pipe = get_family(family).build_tiny(seed, variant)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    logger.debug("built tiny %s pipeline (seed %d)", family, seed)
    return pipe


def write_tiny_model(directory: str | os.PathLike, family: str = "sd", seed: int = 0,
                     variant: str | None = None) -> pathlib.Path:
    """Build a tiny pipeline and save it as a diffusers model directory.

    The directory loads again with ``DiffusionPipeline.from_pretrained`` and
    holds a ``farm_model.json`` that marks it as a tiny random model.
    """
    _check_family(family, variant)
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(family, seed=seed, variant=variant)
    with quiet_progress_bars():  # transformers 5 draws a bar per saved text encoder
        pipe.save_pretrained(path, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; the slow CLIPTokenizer of
    # transformers 4 needs vocab.json and merges.txt, so write those as well.
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if isinstance(getattr(pipe, name, None), CLIPTokenizer) and not (path / name / "vocab.json").exists():
            write_tokenizer_files(path / name)
    meta = {"family": family, "tiny": True, "note": TINY_NOTE}
    if variant:
        meta["variant"] = variant
        meta.update(get_family(family).tiny_defaults.get(variant, {}))
    (path / FARM_MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote tiny %s model to %s", family, path)
    return path


def write_tiny_lora(directory: str | os.PathLike, family: str = "sd", seed: int = 0) -> pathlib.Path:
    """A random LoRA (rank 4 on the attention projections) for the tiny ``family`` pipeline.

    Saved with the pipeline class's ``save_lora_weights``, so it loads with
    ``load_lora_weights`` like a published LoRA. Needs peft.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    _check_family(family)
    pipe = build_tiny_pipeline(family, seed=seed)
    denoiser_name = get_family(family).denoiser
    denoiser = getattr(pipe, denoiser_name)
    torch.manual_seed(seed)
    # init_lora_weights=False: random B as well as A, so the LoRA changes the output.
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    key = f"{denoiser_name}_lora_layers"
    type(pipe).save_lora_weights(path, **{key: layers})
    logger.info("wrote tiny %s LoRA to %s", family, path)
    return path


def write_tiny_ip_adapter(directory: str | os.PathLike, family: str = "sd", seed: int = 0) -> pathlib.Path:
    """A random IP-Adapter for the tiny ``family`` pipeline, with a tiny CLIP image encoder.

    The layout is what ``load_ip_adapter`` reads: ``ip_adapter.safetensors``
    and ``image_encoder/``. The file holds an ``image_proj`` projection of the
    image embedding to 4 tokens, and key/value projections for those tokens:
    on SD and SDXL ``to_k_ip``/``to_v_ip`` for every UNet cross-attention
    layer, numbered 1, 3, 5, ... in processor order; on FLUX the same pair,
    with biases, for every double-stream transformer block, numbered 0, 1, ...
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _check_family(family)
    layout = get_family(family).ip_adapter_layout
    if layout is None:
        raise ValueError(f"tiny IP-Adapters exist for {', '.join(families_with_ip_adapters())}, not {family!r}")
    pipe = build_tiny_pipeline(family, seed=seed)
    embed, tokens = TEXT_HIDDEN, 4
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    if layout == "xlabs":
        cross = pipe.transformer.config.joint_attention_dim
        layers = _flux_ip_layers(pipe.transformer, cross, randn)
    else:
        cross = pipe.unet.config.cross_attention_dim
        layers = _unet_ip_layers(pipe.unet, cross, randn)
    weights = {"image_proj.proj.weight": randn(tokens * cross, embed), "image_proj.proj.bias": torch.zeros(tokens * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross), **layers}
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "ip_adapter.safetensors"))
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, projection_dim=embed, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=4))
    with quiet_progress_bars():
        encoder.save_pretrained(path / "image_encoder")
    logger.info("wrote tiny %s IP-Adapter to %s", family, path)
    return path


def _unet_ip_layers(unet, cross: int, randn) -> dict[str, torch.Tensor]:
    channels = list(unet.config.block_out_channels)
    weights = {}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention takes no image tokens
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        weights[f"ip_adapter.{key}.to_k_ip.weight"] = randn(hidden, cross)
        weights[f"ip_adapter.{key}.to_v_ip.weight"] = randn(hidden, cross)
        key += 2
    return weights


def _flux_ip_layers(transformer, cross: int, randn) -> dict[str, torch.Tensor]:
    hidden = transformer.inner_dim
    weights = {}
    for key in range(len(transformer.transformer_blocks)):  # the single-stream blocks take no image tokens
        for name in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key}.{name}.weight"] = randn(hidden, cross)
            weights[f"ip_adapter.{key}.{name}.bias"] = torch.zeros(hidden)
    return weights


def families_with_ip_adapters() -> tuple[str, ...]:
    return tuple(name for name in TINY_FAMILIES if get_family(name).ip_adapter_layout is not None)
