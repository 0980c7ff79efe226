"""Tiny random-weight diffusers pipelines, built entirely offline.

These pipelines have the same structure as the real model families (same
pipeline classes, same components, same config keys) but a few hundred
thousand parameters with random weights, so that tests and the offline demo
can exercise the whole render path in well under a second per image on a CPU.
The images they make are noise.

Nothing here touches the network: the tokenizer's vocab.json and merges.txt
are written by this module into a temporary directory and loaded from there.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .pipelines import quiet_progress_bars

logger = logging.getLogger(__name__)

#: Families this module can build.
TINY_FAMILIES = ("sd", "sdxl", "flux", "sd3", "sdxl_refiner")
#: Variants of a tiny family: FLUX "dev" is guidance-distilled (the guidance
#: scale is an input of the transformer), "schnell" is not and runs in a few steps.
TINY_VARIANTS = {"flux": ("dev", "schnell")}

FARM_MODEL_FILE = "farm_model.json"
TINY_NOTE = "random weights, for tests and the offline demo; images are noise"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# Sizes. The VAE has four blocks like the real ones, so its scale factor is 8
# and the same "multiple of 8" rules apply as for real models; a 64x64 image
# is an 8x8 latent.
_TEXT_HIDDEN = 32
_TEXT_LAYERS = 3  # SDXL reads hidden_states[-2], so at least 2
_VAE_CHANNELS = (8, 16, 16, 16)
_UNET_CHANNELS = (32, 64)
_SDXL_TIME_EMBED_DIM = 8
_SDXL_TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)
_SDXL_REFINER_TIME_IDS = 5  # original size (2) + crop top-left (2) + aesthetic score (1)

# A few merges so that common prompt words become single tokens; every other
# character falls back to the byte-level base vocabulary.
_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "f</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("o", "n</w>"),
    ("a", "n</w>"),
)


def _byte_symbols() -> list[str]:
    """One printable unicode character for each of the 256 byte values.

    Byte-level BPE needs every byte to be a visible, non-space character.
    Bytes that are already printable (and not whitespace/control) stand for
    themselves; the rest are shifted up past 255 in order.
    """
    keep = set(range(ord("!"), ord("~") + 1))
    keep |= set(range(0xA1, 0xAC + 1))
    keep |= set(range(0xAE, 0xFF + 1))
    symbols: list[str] = []
    shifted = 0
    for value in range(256):
        if value in keep:
            symbols.append(chr(value))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _tiny_vocab() -> dict[str, int]:
    """Byte symbols, their end-of-word forms, the merge results, then the two specials."""
    tokens = _byte_symbols()
    tokens += [s + "</w>" for s in _byte_symbols()]
    tokens += [a + b for a, b in _MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def _write_tokenizer_files(directory: str | os.PathLike) -> None:
    """Write the tiny vocab.json and merges.txt into ``directory``."""
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(_tiny_vocab(), fh, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        for a, b in _MERGES:
            fh.write(f"{a} {b}\n")


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer over a byte-level vocabulary, loaded from files written here."""
    with tempfile.TemporaryDirectory(prefix="farm-tiny-tok-") as tmp:
        _write_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=MODEL_MAX_LENGTH, local_files_only=True
        )
    return tokenizer


def _text_config(tokenizer: CLIPTokenizer, projection_dim: int | None = None) -> CLIPTextConfig:
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=2 * _TEXT_HIDDEN,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        # CLIP pools at the first end-of-text token; its id must be the real one.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(**kwargs)


def _tiny_vae(**extra) -> AutoencoderKL:
    n = len(_VAE_CHANNELS)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=_VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        **extra,
    )


def _vae_scale_factor() -> int:
    return 2 ** (len(_VAE_CHANNELS) - 1)


def _tiny_scheduler() -> EulerDiscreteScheduler:
    # The usual SD / SDXL training schedule; render() swaps in the job's sampler.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _build_sd(seed: int) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64 // _vae_scale_factor(),
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=_UNET_CHANNELS,
        layers_per_block=1,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = _tiny_vae()
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl_unet(cross_attention_dim: int, time_ids: int, projection_dim: int) -> UNet2DConditionModel:
    """An SDXL-style UNet with micro-conditioning: ``time_ids`` numbers, each
    embedded to addition_time_embed_dim, plus the pooled, projected embedding
    of the second text encoder."""
    return UNet2DConditionModel(
        sample_size=64 // _vae_scale_factor(),
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=_UNET_CHANNELS,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_ids * _SDXL_TIME_EMBED_DIM + projection_dim,
    )


def _build_sdxl(seed: int) -> StableDiffusionXLPipeline:
    projection_dim = _TEXT_HIDDEN
    torch.manual_seed(seed)
    # SDXL concatenates the penultimate hidden states of both encoders.
    unet = _sdxl_unet(2 * _TEXT_HIDDEN, _SDXL_TIME_IDS, projection_dim)
    torch.manual_seed(seed)
    vae = _tiny_vae()
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=projection_dim))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_tiny_scheduler(),
        add_watermarker=False,
    )


def _build_sdxl_refiner(seed: int) -> StableDiffusionXLImg2ImgPipeline:
    """An SDXL refiner: an image-to-image pipeline with only the second text
    encoder, conditioned on an aesthetic score instead of the target size,
    denoising the last part of the schedule in the base model's latent space."""
    projection_dim = _TEXT_HIDDEN
    torch.manual_seed(seed + 100)
    # The second encoder's penultimate hidden states only.
    unet = _sdxl_unet(_TEXT_HIDDEN, _SDXL_REFINER_TIME_IDS, projection_dim)
    torch.manual_seed(seed)
    vae = _tiny_vae()  # the base's latent space: a refiner takes the base's latents as they are
    tokenizer_2 = build_tiny_tokenizer()
    torch.manual_seed(seed + 100)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=projection_dim))
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=_tiny_scheduler(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


# The T5 encoder of FLUX and SD3: a unigram vocabulary with sentencepiece's
# word-start marker, ASCII letters and digits as pieces, and a few whole words.
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_T5_WORDS = ("a", "an", "the", "of", "and", "in", "on", "at", "cat", "dog", "photo", "portrait", "lighthouse", "dawn")
_T5_HIDDEN = 2 * _TEXT_HIDDEN  # SD3 pads the two CLIP encoders' concatenation (2 x 32) to T5's width
_T5_MAX_LENGTH = 512


def build_tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer over a tiny unigram vocabulary, built in memory."""
    pieces = list(_T5_SPECIALS)
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces += ["\u2581"] + ["\u2581" + w for w in _T5_WORDS]
    # Longer pieces score higher, so whole words win over letters.
    vocab = [(piece, 0.0 if piece in _T5_SPECIALS else -10.0 / len(piece)) for piece in pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=_T5_SPECIALS.index("<unk>"), byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=_T5_MAX_LENGTH)


def _tiny_t5(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    # dropout_rate 0: a module built here is in training mode until eval(),
    # and dropout would make two renders of the same seed differ.
    config = T5Config(vocab_size=len(tokenizer), d_model=_T5_HIDDEN, d_kv=8, d_ff=2 * _T5_HIDDEN, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config)


def _tiny_flow_vae() -> AutoencoderKL:
    # FLUX and SD3 VAEs have no quant convs and shift latents before scaling.
    return _tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1, scaling_factor=1.0)


def _build_flux(seed: int, variant: str = "dev") -> FluxPipeline:
    torch.manual_seed(seed)
    # FLUX packs 2x2 latent patches, so the transformer sees 4 x 4 channels.
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_HIDDEN,
        pooled_projection_dim=_TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=variant == "dev",
    )
    torch.manual_seed(seed)
    vae = _tiny_flow_vae()
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = _tiny_t5(tokenizer_2)
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
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def _build_sd3(seed: int) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=64 // _vae_scale_factor(),
        patch_size=2,
        in_channels=4,
        num_layers=2,  # perturbed-attention guidance perturbs block 1 by default
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=_TEXT_HIDDEN,
        joint_attention_dim=_T5_HIDDEN,
        pooled_projection_dim=2 * _TEXT_HIDDEN,  # both CLIP encoders' pooled, projected outputs
        out_channels=4,
    )
    torch.manual_seed(seed)
    vae = _tiny_flow_vae()
    tokenizer, tokenizer_2, tokenizer_3 = build_tiny_tokenizer(), build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=_TEXT_HIDDEN))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=_TEXT_HIDDEN))
    torch.manual_seed(seed)
    text_encoder_3 = _tiny_t5(tokenizer_3)
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, transformer=transformer,
    )


_BUILDERS = {"sd": _build_sd, "sdxl": _build_sdxl, "flux": _build_flux, "sd3": _build_sd3,
             "sdxl_refiner": _build_sdxl_refiner}


def _check_family(family: str, variant: str | None = None) -> None:
    if family not in _BUILDERS:
        raise ValueError(f"unknown model family {family!r}; tiny builders exist for: {', '.join(TINY_FAMILIES)}")
    if variant is not None and variant not in TINY_VARIANTS.get(family, ()):
        known = ", ".join(TINY_VARIANTS.get(family, ())) or "none"
        raise ValueError(f"tiny {family} has no variant {variant!r} (variants: {known})")


def build_tiny_pipeline(family: str, seed: int = 0, variant: str | None = None) -> DiffusionPipeline:
    """Build a tiny random-weight pipeline of ``family`` ("sd", "sdxl", "flux" or "sd3").

    The same ``seed`` gives the same weights. The pipeline is on the CPU in
    float32, in eval mode (as from_pretrained leaves it), with the progress bar off.
    ``variant`` picks one of ``TINY_VARIANTS[family]`` (FLUX: "dev", the default, or "schnell").
    """
    _check_family(family, variant)
    pipe = _BUILDERS[family](seed, variant) if variant else _BUILDERS[family](seed)
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
            _write_tokenizer_files(path / name)
    meta = {"family": family, "tiny": True, "note": TINY_NOTE}
    if variant:
        meta["variant"] = variant
        if (family, variant) == ("flux", "schnell"):
            meta["default_steps"] = 4  # few-step, and guidance is not an input
            meta["default_guidance"] = 0.0
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
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    torch.manual_seed(seed)
    # init_lora_weights=False: random B as well as A, so the LoRA changes the output.
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    key = "unet_lora_layers" if family in ("sd", "sdxl") else "transformer_lora_layers"
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

    if family not in ("sd", "sdxl", "flux"):
        raise ValueError(f"tiny IP-Adapters exist for sd, sdxl and flux, not {family!r}")
    pipe = build_tiny_pipeline(family, seed=seed)
    embed, tokens = _TEXT_HIDDEN, 4
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    if family == "flux":
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
        hidden_size=_TEXT_HIDDEN, intermediate_size=2 * _TEXT_HIDDEN, projection_dim=embed, num_hidden_layers=2,
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
