"""Performance modes: the steps, sampler, sigma schedule and guidance each
mode stands for, in the two forms the families use (noise prediction and
flow matching)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PERFORMANCE_MODES = ("quality", "speed", "extreme_speed", "lightning")


@dataclass(frozen=True)
class PerformanceMode:
    """Steps, sampler, sigma schedule and guidance a mode stands for."""

    steps_factor: float | None  # times the model's default steps; None = fixed ``steps``
    steps: int | None
    sampler: str
    scheduler: str
    guidance_scale: float | None  # None = the model's default


# Few-step modes trade quality for speed the way distilled/LCM checkpoints do;
# the accelerating LoRA a family may configure is not applied yet, so on a
# plain checkpoint they give rough images quickly.
NOISE_PERFORMANCE = {
    "quality": PerformanceMode(1.5, None, "dpmpp_2m", "karras", None),
    "speed": PerformanceMode(1.0, None, "dpmpp_2m", "karras", None),
    "extreme_speed": PerformanceMode(None, 8, "lcm", "normal", 1.0),
    "lightning": PerformanceMode(None, 4, "euler", "sgm_uniform", 1.0),
}
# Flow-matching families (FLUX, SD3) step along flow sigmas: Karras spacing
# and trailing timesteps do not apply, so their modes keep the plain schedule.
FLOW_PERFORMANCE = {
    "quality": PerformanceMode(1.5, None, "dpmpp_2m", "normal", None),
    "speed": PerformanceMode(1.0, None, "euler", "normal", None),
    "extreme_speed": PerformanceMode(None, 8, "lcm", "normal", 1.0),
    "lightning": PerformanceMode(None, 4, "euler", "normal", 1.0),
}
# Flow pipelines that hand the scheduler their own sigma list (FLUX.1
# Kontext, Qwen-Image), which DPM++ 2M refuses: quality runs UniPC, the other
# multistep flow solver, instead.
FLOW_OWN_SIGMAS_PERFORMANCE = {**FLOW_PERFORMANCE, "quality": PerformanceMode(1.5, None, "unipc", "normal", None)}
