"""Components of the tiny random-weight pipelines the family modules build.

The same structure as the real models (same classes, same config keys) with a
few hundred thousand parameters, so tests and the offline demo run the whole
render path in well under a second per image on a CPU. Imported only by the
families' ``build_tiny`` functions: it loads torch, diffusers and transformers.

Nothing here touches the network: the tokenizer's vocab.json and merges.txt
are written by this module into a temporary directory and loaded from there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# Sizes. The VAE has four blocks like the real ones, so its scale factor is 8
# and the same "multiple of 8" rules apply as for real models; a 64x64 image
# is an 8x8 latent.
TEXT_HIDDEN = 32
_TEXT_LAYERS = 3  # SDXL reads hidden_states[-2], so at least 2
_VAE_CHANNELS = (8, 16, 16, 16)
UNET_CHANNELS = (32, 64)
_SDXL_TIME_EMBED_DIM = 8
SDXL_TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)
SDXL_REFINER_TIME_IDS = 5  # original size (2) + crop top-left (2) + aesthetic score (1)

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


def write_tokenizer_files(directory: str | os.PathLike) -> None:
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
        write_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=MODEL_MAX_LENGTH, local_files_only=True
        )
    return tokenizer


def text_config(tokenizer: CLIPTokenizer, projection_dim: int | None = None) -> CLIPTextConfig:
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
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


def tiny_vae(**extra) -> AutoencoderKL:
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


def vae_scale_factor() -> int:
    return 2 ** (len(_VAE_CHANNELS) - 1)


def tiny_scheduler() -> EulerDiscreteScheduler:
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



def sdxl_unet(cross_attention_dim: int, time_ids: int, projection_dim: int) -> UNet2DConditionModel:
    """An SDXL-style UNet with micro-conditioning: ``time_ids`` numbers, each
    embedded to addition_time_embed_dim, plus the pooled, projected embedding
    of the second text encoder."""
    return UNet2DConditionModel(
        sample_size=64 // vae_scale_factor(),
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_CHANNELS,
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



# The T5 encoder of FLUX and SD3: a unigram vocabulary with sentencepiece's
# word-start marker, ASCII letters and digits as pieces, and a few whole words.
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_T5_WORDS = ("a", "an", "the", "of", "and", "in", "on", "at", "cat", "dog", "photo", "portrait", "lighthouse", "dawn")
T5_HIDDEN = 2 * TEXT_HIDDEN  # SD3 pads the two CLIP encoders' concatenation (2 x 32) to T5's width
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


def tiny_t5(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    # dropout_rate 0: a module built here is in training mode until eval(),
    # and dropout would make two renders of the same seed differ.
    config = T5Config(vocab_size=len(tokenizer), d_model=T5_HIDDEN, d_kv=8, d_ff=2 * T5_HIDDEN, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config)


def tiny_flow_vae() -> AutoencoderKL:
    # FLUX and SD3 VAEs have no quant convs and shift latents before scaling.
    return tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1, scaling_factor=1.0)



# The chat-tuned decoder text encoders of FLUX.2 [klein] (Qwen3) read a
# chat-formatted prompt: a byte-level BPE vocabulary (GPT-2's byte symbols,
# no end-of-word marks), a few merges, the chat markers as special tokens,
# and a chat template of the same shape as Qwen's.
_QWEN_MERGES = (("t", "h"), ("th", "e"), ("a", "n"), ("\u0120", "c"), ("\u0120c", "a"), ("\u0120ca", "t"))
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_HIDDEN = 16


def build_tiny_qwen_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A Qwen2 tokenizer (byte-level BPE) with a chat template, built in memory;
    ``extra_specials``: more special tokens (Qwen2.5-VL's vision markers)."""
    from transformers import Qwen2TokenizerFast

    specials = _QWEN_SPECIALS + tuple(extra_specials)
    vocab: dict[str, int] = {}
    for token in _byte_symbols() + [a + b for a, b in _QWEN_MERGES] + list(specials):
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=list(_QWEN_MERGES), additional_special_tokens=list(specials[1:]))
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3(tokenizer, layers: int):
    """A Qwen3 causal LM of ``layers`` layers (the pipeline reads hidden states
    of fixed layer numbers, so the count follows the real model's), each tiny."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    return Qwen3ForCausalLM(config)


def tiny_flux2_vae():
    """FLUX.2's VAE: 2x2 patches of its latents are normalised by a batch norm before the transformer sees them."""
    from diffusers import AutoencoderKLFlux2

    n = len(_VAE_CHANNELS)
    return AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                              block_out_channels=_VAE_CHANNELS, layers_per_block=1, latent_channels=4,
                              norm_num_groups=8, sample_size=64, use_quant_conv=False, use_post_quant_conv=False)


def tiny_flux2_transformer(text_hidden: int, layers: int, guidance_embeds: bool):
    """A FLUX.2 transformer over the tiny VAE's 4 latent channels in 2x2 patches
    (16 inputs); the prompt embedding stacks ``layers`` hidden states of the text encoder."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=layers * text_hidden,
                                   timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance_embeds)


def tiny_mistral3(tokenizer, layers: int):
    """A Mistral 3 (Mistral Small 3.x: a Mistral decoder with a Pixtral vision
    tower) of ``layers`` tiny decoder layers; FLUX.2 [dev] reads only its text
    hidden states."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, image_size=64, patch_size=16)
    return Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text,
                                                           image_token_index=len(tokenizer) - 1))

# --------------------------------------------------------------------------- Qwen-Image
# Qwen-Image encodes prompts with a Qwen2.5-VL model (its last hidden states),
# through a chat template with special tokens; its edit pipelines also show
# the source image to the model's vision tower, through a processor that
# expands <|image_pad|> into one token per merged image patch.

# The vision markers of Qwen2.5-VL, special tokens beside the chat markers.
QWEN_VL_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_HIDDEN = 32
_QWEN_VL_HEADS = 2


def build_tiny_qwen_vl_tokenizer():
    return build_tiny_qwen_tokenizer(QWEN_VL_SPECIALS)


def tiny_qwen_vl(tokenizer):
    """A Qwen2.5-VL model with one text layer and one vision block."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = QWEN_VL_HIDDEN // _QWEN_VL_HEADS
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=QWEN_VL_HIDDEN, intermediate_size=2 * QWEN_VL_HIDDEN,
                         num_hidden_layers=2, num_attention_heads=_QWEN_VL_HEADS, num_key_value_heads=1,
                         max_position_embeddings=4096, layer_types=["full_attention"] * 2,
                         # multimodal RoPE: time, height and width sections of half a head
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=QWEN_VL_HIDDEN,
                           fullatt_block_indexes=[0]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                  temperal_downsample=[False, True, True])


def tiny_qwen_transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=1,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=QWEN_VL_HIDDEN,
                                       axes_dims_rope=(4, 6, 6))
