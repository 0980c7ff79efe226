"""Seconds per image, peak VRAM and load speed of full-size SDXL and FLUX renders, per quantized variant, farm against diffusers.

The pipelines have the real models' architectures (the published configs of
SDXL base 1.0 and FLUX.1 dev: same layers, widths and sequence lengths, so the
same compute) with random weights built on the device: no download. Each is
saved to a folder; each variant (the unquantized weights, torchao int8,
bitsandbytes nf4 and LLM.int8, GGUF Q8_0 and Q4_0) is made from it the way
'farm models quantize' makes it and loaded from disk through the worker's
loader (timed: GB/s of the files read). The loaded pipeline then renders
alternately through a direct diffusers call (the baseline) and through farm's
``render`` (fresh scheduler, seeded generators, progress callback), and the
script prints one JSON object: per architecture and variant, median seconds
per image and peak allocated VRAM for both, farm / direct, the weights' size
in memory, and the load. A variant the device cannot run (bitsandbytes on a
CPU) is listed with the reason.

    python bench/gpu_render.py                      # on a CUDA machine: full size
    python bench/gpu_render.py --scale tiny         # anywhere: tiny pipelines (CPU figures, and a check that it runs)

Random weights render noise; the time and memory are the real models' own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.families import get_family  # noqa: E402
from farm.quantization import device_refusal, get_format, read_folder_quantization  # noqa: E402
from farm.registry import measure_weights_gb  # noqa: E402
from farm.workers.pipelines import RenderParams, estimate_vram_gb, load_pipeline, pick_dtype, render  # noqa: E402
from farm.workers.quantize import quantize_folder  # noqa: E402
from farm.workers.tiny import build_tiny_pipeline, build_tiny_t5_tokenizer, build_tiny_tokenizer  # noqa: E402

PROMPT = "a lighthouse on a cliff at dawn, volumetric light, detailed photograph"


def _clip_text(make, hidden: int, layers: int, heads: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_tokenizer()
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **({"projection_dim": projection} if projection else {}))
    model = make(lambda: CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config))
    return tokenizer, model


def _vae(make, latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return make(lambda: AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=latent_channels, sample_size=1024, **extra))


def full_sdxl(make):
    """SDXL base 1.0's architecture: UNet 2.6 B parameters, CLIP ViT-L and OpenCLIP bigG text encoders.

    ``make(factory)`` builds one torch module (on the device, in 16-bit)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = make(lambda: UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ))
    tokenizer, text_encoder = _clip_text(make, 768, 12, 12, "quick_gelu")
    tokenizer_2, text_encoder_2 = _clip_text(make, 1280, 32, 20, "gelu", projection=1280)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=_vae(make, 4, scaling_factor=0.13025), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                     unet=unet, scheduler=scheduler, add_watermarker=False)


def full_flux(make):
    """FLUX.1 dev's architecture: transformer 11.9 B parameters (19 double, 38 single blocks), T5-XXL and CLIP ViT-L."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    transformer = make(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56)))
    tokenizer, text_encoder = _clip_text(make, 768, 12, 12, "quick_gelu")
    tokenizer_2 = build_tiny_t5_tokenizer()
    t5 = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                  feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=32,
                  is_encoder_decoder=False)
    text_encoder_2 = make(lambda: T5EncoderModel(t5))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    vae = _vae(make, 16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


# architecture -> (builder, family, side, steps, guidance, sampler)
CASES = {
    "sdxl": (full_sdxl, "sdxl", 1024, 30, 7.0, "euler"),
    "flux": (full_flux, "flux", 1024, 28, 3.5, "euler"),
}


def build(arch: str, scale: str, device: torch.device):
    builder, family, side, steps, guidance, sampler = CASES[arch]
    if scale == "tiny":
        return build_tiny_pipeline(family).to(device), family, 64, 4, guidance, sampler
    dtype = pick_dtype(device, None, family)

    def make(factory):
        """One module, its random weights drawn in 16-bit on the device (schedulers and tokenizers stay outside)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return factory()
        finally:
            torch.set_default_dtype(previous)

    pipe = builder(make)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.to(device=device, dtype=dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, family, side, steps, guidance, sampler


def timed(device: torch.device, call) -> tuple[float, float]:
    """(seconds, peak GB allocated during the call; 0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return seconds, peak


#: "16bit": the unquantized weights (16-bit on a GPU, fp32 on a CPU); the others: farm/quantization.py's formats.
VARIANTS = ("16bit", "int8", "nf4", "int8-bnb", "gguf-q8_0", "gguf-q4_0")


def save_base(arch: str, scale: str, device: torch.device, folder: Path) -> tuple:
    """Build the architecture's pipeline and save it to ``folder``; (family, side, steps, guidance, sampler)."""
    pipe, *shape = build(arch, scale, device)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tuple(shape)


def make_variant(base: Path, variant: str, family: str, workdir: Path) -> tuple[Path, dict | None]:
    """(folder, quantization record) of ``variant``, made as 'farm models quantize' makes it."""
    if variant == "16bit":
        return base, None
    fmt = get_format(variant)
    if fmt.writes_files:
        folder = workdir / variant
        quantize_folder(base, folder, variant, family)
        return folder, read_folder_quantization(folder)
    return base, {"format": fmt.name, "library": fmt.library, "at_load": True,
                  "components": list(get_family(family).quantized_components)}


def timed_load(folder: Path, family: str, device: torch.device, record: dict | None):
    """(pipeline, seconds) of the worker's load from disk onto the device."""
    dtype = pick_dtype(device, None, family)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    pipe = load_pipeline(folder, family, device, dtype, record)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return pipe, time.perf_counter() - started


def measure(arch: str, variant: str, shape: tuple, base: Path, device: torch.device, repeat: int, workdir: Path) -> dict:
    family, side, steps, guidance, sampler = shape
    folder, record = make_variant(base, variant, family, workdir)
    refusal = device_refusal(record, device.type)
    if refusal:
        return {"skipped": refusal}
    pipe, load_s = timed_load(folder, family, device, record)
    disk_gb = measure_weights_gb(folder)
    weights_gb = estimate_vram_gb(pipe)  # what the worker reports for it

    def direct(seed: int):
        kwargs = dict(prompt=PROMPT, width=side, height=side, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator("cpu").manual_seed(seed))
        kwargs.update(get_family(family).render_kwargs("blurry"))  # FLUX takes no negative prompt
        with torch.inference_mode():
            return pipe(**kwargs).images

    def farm(seed: int):
        params = RenderParams(prompt=PROMPT, negative_prompt="blurry", width=side, height=side, steps=steps,
                              guidance_scale=guidance, sampler=sampler, scheduler="normal", seed=seed)
        return render(pipe, params, on_step=lambda done, total: None)

    direct(0), farm(0)  # warm-up: kernels, allocator, autotuning
    runs = {"direct": [], "farm": []}
    for index in range(repeat):  # interleaved, so drift hits both alike
        for name, call in (("direct", direct), ("farm", farm)):
            runs[name].append(timed(device, lambda: call(index + 1)))
    result = {"family": family, "size": f"{side}x{side}", "steps": steps, "dtype": str(pipe.dtype).replace("torch.", ""),
              "quantization": record["format"] if record else None, "weights_gib": round(weights_gb, 4),
              "disk_gb": round(disk_gb, 4), "load_s": round(load_s, 3), "load_gb_per_s": round(disk_gb / load_s, 4)}
    for name, values in runs.items():
        result[f"{name}_s_per_image"] = round(statistics.median(s for s, _ in values), 3)
        result[f"{name}_peak_vram_gb"] = round(max(p for _, p in values), 2)
    result["farm_over_direct"] = round(result["farm_s_per_image"] / result["direct_s_per_image"], 3)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if folder != base:
        shutil.rmtree(folder, ignore_errors=True)  # full-size variants are tens of GB
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--arch", choices=tuple(CASES), action="append", help="default: all")
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="default: all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=None, help="where the saved pipelines go [default: a temporary folder]")
    args = parser.parse_args(argv)
    from farm.workers.pipelines import pick_device

    device = pick_device(args.device)
    if args.scale == "full" and device.type != "cuda":
        parser.error("full-size renders need a CUDA device; use --scale tiny to check the script elsewhere")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "scale": args.scale, "repeat": args.repeat, "results": {}}
    import diffusers

    report["diffusers"] = diffusers.__version__
    workdir = Path(tempfile.mkdtemp(prefix="gpu-render-", dir=args.workdir))
    try:
        for arch in args.arch or tuple(CASES):
            base = workdir / arch
            shape = save_base(arch, args.scale, device, base)
            report["results"][arch] = {variant: measure(arch, variant, shape, base, device, args.repeat, workdir / f"{arch}-q")
                                       for variant in args.variant or VARIANTS}
            shutil.rmtree(base, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
