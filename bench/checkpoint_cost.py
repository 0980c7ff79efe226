"""What a preemption checkpoint costs to write and read back, at real latent sizes.

    .venv/bin/python bench/checkpoint_cost.py [--repeat 20]

Workload: for each shape a preempted render has on a real model (SD 1.5 at
512 px: latents 1x4x64x64; SDXL at 1024 px: 1x4x128x128; FLUX at 1024 px:
1x4096x64 packed tokens; all fp32 as the checkpoint keeps them) and each
sampler with state of its own (DPM++ 2M's two remembered model outputs,
Euler ancestral's generator, UniPC's history, flow Euler), a real diffusers
scheduler is stepped halfway through 30 steps with random model outputs
(the sampler's state is then what it is mid-render; no denoiser is needed),
then captured with ``farm.workers.resume.capture``, serialised
(``StepCheckpoint.to_bytes``), read back (``from_bytes``) and restored onto
a fresh scheduler. Baseline in the same run: ``torch.save`` of the latents
alone, the least any checkpoint must write. One JSON object: per shape and
sampler, the checkpoint's bytes, write (capture + serialise) and read
(deserialise + restore) medians in ms, and their ratios to the baseline.
The store's own put/get time comes on top (one object per preemption).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import time

import torch

from farm.families import get_family
from farm.families.samplers import build_scheduler
from farm.workers.resume import StepCheckpoint, capture, restore_scheduler

logger = logging.getLogger(__name__)

SHAPES = {"sd_512": ("sd", (1, 4, 64, 64)), "sdxl_1024": ("sdxl", (1, 4, 128, 128)), "flux_1024": ("flux", (1, 4096, 64))}
SAMPLERS = {"sd": ("dpmpp_2m", "euler_ancestral", "unipc"), "sdxl": ("dpmpp_2m", "euler_ancestral", "unipc"),
            "flux": ("euler", "dpmpp_2m")}
STEPS = 30


class _Pipe:
    """What ``capture`` reads of a pipeline: its scheduler."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler


def _halfway(family: str, sampler: str, shape: tuple[int, ...]):
    config = {"num_train_timesteps": 1000}
    if get_family(family).flow:
        config["shift"] = 3.0
    scheduler = build_scheduler(get_family(family), config, sampler, "normal")
    kwargs = {"mu": 1.0} if getattr(scheduler.config, "use_dynamic_shifting", False) else {}
    scheduler.set_timesteps(STEPS, **kwargs)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps[: STEPS // 2]:
        step_kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        latents = scheduler.step(torch.randn(shape, generator=generator), t, latents, **step_kwargs).prev_sample
    return scheduler, latents, generator, kwargs


def _median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(times), 3)


def measure(name: str, family: str, shape: tuple[int, ...], sampler: str, repeat: int) -> dict:
    scheduler, latents, generator, kwargs = _halfway(family, sampler, shape)
    pipe = _Pipe(scheduler)

    def baseline() -> bytes:
        buffer = io.BytesIO()
        torch.save(latents, buffer)
        return buffer.getvalue()

    def write() -> bytes:
        return capture(pipe, STEPS // 2, STEPS, latents, [generator]).to_bytes()

    data = write()
    fresh = build_scheduler(get_family(family), dict(scheduler.config), sampler, "normal")
    fresh.set_timesteps(STEPS, **kwargs)

    def read() -> None:
        checkpoint = StepCheckpoint.from_bytes(data)
        restore_scheduler(fresh, checkpoint.scheduler_state, torch.device("cpu"))

    base_ms, write_ms, read_ms = _median_ms(baseline, repeat), _median_ms(write, repeat), _median_ms(read, repeat)
    return {"shape": name, "sampler": sampler, "latents_bytes": len(baseline()), "checkpoint_bytes": len(data),
            "baseline_save_latents_ms": base_ms, "write_ms": write_ms, "read_ms": read_ms,
            "bytes_ratio": round(len(data) / len(baseline()), 3), "write_ratio": round(write_ms / base_ms, 2),
            "read_ratio": round(read_ms / base_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    results = [measure(name, family, shape, sampler, args.repeat)
               for name, (family, shape) in SHAPES.items() for sampler in SAMPLERS[family]]
    print(json.dumps({"steps": STEPS, "stopped_after": STEPS // 2, "repeat": args.repeat, "torch_threads": 1,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
