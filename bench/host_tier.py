"""Model load from the worker's host-memory tier against a load from disk, on the CPU.

Workload shape: one worker whose VRAM holds one model at a time, switching
back to a model it evicted a moment ago (the case the tier is for). The
model is a Stable Diffusion 1.5-architecture pipeline at reduced width
(random weights, about 190 M parameters, 0.75 GB in float32: small enough
for this 2-core VM, big enough that reading and deserialising it dominates a
load), saved as a diffusers folder with safetensors.

Both sides go through the worker's own code (``WorkerRuntime.pipeline_for``
then ``evict``), alternating in one run: the baseline runtime has no tier
(``FARM_WORKER_RAM_CACHE_GB=0``), so every load reads the folder again; the
other keeps the evicted pipeline (``FARM_WORKER_RAM_CACHE_GB`` above its
size) and takes it back. After the first, untimed, load the files sit in the
OS page cache, so the disk side is the fastest a disk load can be: the ratio
is a lower bound on what the tier saves. On the CPU host and device are the
same memory, so a tier load moves nothing; on CUDA it is a pinned
host-to-device copy (bench/gpu_render.py measures that on a GPU).

    python bench/host_tier.py                 # the 0.75 GB pipeline, 5 loads per side
    python bench/host_tier.py --scale tiny    # the test suite's tiny pipeline, to check the script runs
    python bench/host_tier.py --device cuda   # on a GPU: the tier load is a pinned host-to-device copy

Prints one JSON object: seconds per load (median, min, max) from disk and
from the tier, and disk / tier; on CUDA also the tier's effective GB/s against
the pinned copy rate the worker measured at start (``h2d_gbps``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.context import build_context  # noqa: E402
from farm.db import upgrade_database  # noqa: E402
from farm.events import LocalEvents  # noqa: E402
from farm.families.tiny_parts import build_tiny_tokenizer, write_tokenizer_files  # noqa: E402
from farm.models import ModelEntry  # noqa: E402
from farm.registry import add_model  # noqa: E402
from farm.settings import Settings  # noqa: E402
from farm.workers.runtime import WorkerRuntime  # noqa: E402
from farm.workers.tiny import write_tiny_model  # noqa: E402

MODEL_ID = "bench-host-tier"


def small_sd(seed: int = 0):
    """SD 1.5's block layout at 128/256/512/512 channels (its UNet has 320/640/1280/1280), a 512-wide CLIP text encoder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=512,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(128, 256, 512, 512), attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(64, 128, 256, 256),
                        layers_per_block=2, latent_channels=4, sample_size=512)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_model(directory: Path, scale: str) -> Path:
    if scale == "tiny":
        return write_tiny_model(directory, family="sd", seed=0)
    pipe = small_sd()
    pipe.save_pretrained(directory, safe_serialization=True)
    if not (directory / "tokenizer" / "vocab.json").exists():
        write_tokenizer_files(directory / "tokenizer")
    return directory


def measure(scale: str, repeat: int, device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory(prefix="farm-host-tier-") as tmp:
        root = Path(tmp)
        folder = write_model(root / "model", scale)
        settings = Settings(home=root / "home", database_url=None, broker_url=None, s3_endpoint=None, device=device,
                            worker_vram_gb=64.0)
        settings.home.mkdir()
        upgrade_database(settings.resolved_database_url)
        ctx = build_context(settings, events=LocalEvents())
        with ctx.db.transaction() as session:
            add_model(session, MODEL_ID, str(folder), family="sd")
        with ctx.db.session() as session:
            entry = session.get(ModelEntry, MODEL_ID)
            session.expunge(entry)
        tiered_ctx = build_context(settings.model_copy(update={"worker_ram_cache_gb": 64.0}), events=LocalEvents())
        runtimes = {"disk": WorkerRuntime(ctx, name="bench-disk"), "host": WorkerRuntime(tiered_ctx, name="bench-host")}
        times: dict[str, list[float]] = {"disk": [], "host": []}
        gb = 0.0
        for round_ in range(repeat + 1):  # round 0: both read the folder once (cold files, imports), untimed
            for source, runtime in runtimes.items():
                started = time.perf_counter()
                loaded, _ = runtime.pipeline_for(entry)
                elapsed = time.perf_counter() - started
                gb = loaded.vram_gb
                runtime.evict([MODEL_ID])
                del loaded
                if round_:
                    times[source].append(elapsed)
        assert MODEL_ID in runtimes["host"].host_tier and MODEL_ID not in runtimes["disk"].host_tier
    summary = {source: {"median_s": round(statistics.median(t), 5), "min_s": round(min(t), 5), "max_s": round(max(t), 5)}
               for source, t in times.items()}
    report = {
        "bench": "host_tier", "scale": scale, "device": runtimes["host"].device_name, "model_gb": round(gb, 3),
        "repeat": repeat, "torch_threads": torch.get_num_threads(), "disk": summary["disk"], "host_tier": summary["host"],
        "disk_over_tier": round(summary["disk"]["median_s"] / summary["host"]["median_s"], 1),
    }
    if runtimes["host"].device.type == "cuda":
        report["tier_gbps"] = round(gb / summary["host"]["median_s"], 2)
        report["h2d_gbps"] = round(runtimes["host"].h2d_gbps, 2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("small", "tiny"), default="small",
                        help="small: the 0.75 GB SD-architecture pipeline; tiny: the tests' pipeline (a smoke run)")
    parser.add_argument("--repeat", type=int, default=5, help="timed loads per side (after one untimed)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    print(json.dumps(measure(args.scale, args.repeat, args.device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
