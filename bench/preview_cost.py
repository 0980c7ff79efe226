"""What a live preview costs the render thread (issue 19): the latent-to-RGB
projection, resize and JPEG encode of farm.workers.previews.preview_jpeg, at
the latent sizes of real renders (SD 1.5 at 512 px, SDXL at 1024 px, FLUX at
1024 px as packed tokens), timed on this machine's CPU, where a worker's
latents are copied to before the projection.

Baseline in the same run: one decode of the same latents through a VAE
decoder of the real architecture's shape (diffusers' AutoencoderKL with the
SD/SDXL layer sizes, random weights: the cost is in the shapes, not the
values) for the SD 1.5 case, which is what a "full" preview costs in peers
that decode; and the
share of a render's steps a preview every 2 steps adds, taking the per-step
time as an argument (--step-ms, e.g. a GPU's measured step time; default
the figure of docs/benchmarks.md's GPU section if given, else 50 ms).

    .venv/bin/python bench/preview_cost.py [--repeat 30] [--step-ms 50] [--no-vae]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = (  # name, family, image side, latents shape
    ("sd15_512", "sd", 512, (1, 4, 64, 64)),
    ("sdxl_1024", "sdxl", 1024, (1, 4, 128, 128)),
    ("flux_1024_packed", "flux", 1024, (1, 4096, 64)),
)


def timed(call, repeat: int) -> dict:
    call()  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[min(len(times), math.ceil(0.95 * len(times))) - 1], 3),
            "runs": len(times)}


def vae_decode_cost(shape, repeat: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    # SD/SDXL's decoder shape: 4 latent channels, blocks of 128/256/512/512.
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    latents = torch.randn(*shape)
    with torch.no_grad():
        return timed(lambda: vae.decode(latents), 2)


def main() -> None:
    import torch

    from farm.workers.previews import preview_jpeg

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--step-ms", type=float, default=50.0, help="a render step's time to weigh a preview every 2 steps against")
    parser.add_argument("--no-vae", action="store_true", help="skip the VAE-decode baseline (slow on a small CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    for name, family, side, shape in CASES:
        latents = torch.randn(*shape)
        preview = timed(lambda: preview_jpeg(latents, family, side, side), args.repeat)
        row = {"latents": list(shape), "preview": preview,
               "every_2_steps_share_of_render": round(preview["median_ms"] / (2 * args.step_ms), 4)}
        if not args.no_vae and name == "sd15_512":  # a 1024 px decode takes minutes on a small CPU
            row["vae_decode_baseline"] = vae_decode_cost(shape, args.repeat)
            row["vae_over_preview"] = round(row["vae_decode_baseline"]["median_ms"] / preview["median_ms"], 1)
        results[name] = row
    print(json.dumps({"benchmark": "preview_cost", "device": "cpu", "threads": torch.get_num_threads(),
                      "step_ms": args.step_ms, "results": results}, indent=2))


if __name__ == "__main__":
    main()
