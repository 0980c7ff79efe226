"""The declaration every model family makes: one ``Family`` per module.

A family answers everything the farm asks about a kind of pipeline: how its
folders are recognised, how it loads, how a tiny random copy is built for
tests, which samplers, sizes and extras it takes, what it costs in memory
and time, and how its render call differs from the others'. Nothing here
imports torch or diffusers; ``load`` and ``build_tiny`` import them when called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from farm.families.performance import FLOW_PERFORMANCE, NOISE_PERFORMANCE, PerformanceMode
from farm.families.samplers import FLOW_SAMPLERS, FLOW_UNSUPPORTED_SCHEDULES, NOISE_SAMPLERS, SamplerConfig

logger = logging.getLogger(__name__)

#: Guidance extras a family may take (``Family.extras``).
EXTRAS = ("clip_skip", "freeu", "detail_guidance", "detail_guidance_inpaint", "refiner")
#: How a family's IP-Adapter weights are laid out and loaded.
IP_ADAPTER_LAYOUTS = ("unet", "xlabs")


@dataclass(frozen=True)
class Family:
    """Everything the farm knows about one model family."""

    name: str  # the registry's family name, stored on models and LoRAs
    title: str  # for people: "Stable Diffusion XL"
    # Detection and loading.
    pipeline_class: str  # the diffusers class its folders are saved as (model_index.json "_class_name")
    load: Callable[[str, Any], Any]  # (folder or hub id, torch dtype) -> pipeline on the CPU
    default_dtype: str  # "fp16" or "bf16" on a GPU (the CPU always runs fp32)
    # Tests: a tiny random-weight pipeline of the same structure.
    build_tiny: Callable[..., Any]  # (seed, variant=None) -> pipeline
    # Sampling.
    flow: bool  # trained with flow matching: steps along sigmas from 1 to 0, predicts a velocity
    sampler_table: Mapping[str, SamplerConfig]  # NOISE_SAMPLERS or FLOW_SAMPLERS
    samplers: tuple[str, ...]  # the names of sampler_table it may use
    performance: Mapping[str, PerformanceMode]
    # Sizes, in pixels.
    side_range: tuple[int, int]  # smallest and largest side
    side_multiple: int  # sides are multiples of this
    native_side: int  # the side it was trained at (cost units, benchmark shapes)
    aspect_ratios: tuple[str, ...]  # frames worth offering ("1152*896")
    # Memory and time.
    default_vram_gb: float  # 16-bit weights when they cannot be measured from files
    default_steps: int
    default_guidance: float
    step_s: float  # seconds per step at the native size on a reference GPU, until measured
    latent_rgb: tuple[tuple[float, float, float], ...]  # live previews: latent channel -> R, G, B (latent_rgb.py)
    # Optional capabilities.
    tiny_variants: tuple[str, ...] = ()  # variants build_tiny can make; the first is the default
    tiny_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # variant -> farm_model.json extras
    unsupported_schedules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # sampler -> refused schedules
    dynamic_shift: bool = False  # its pipeline passes a resolution-dependent mu to the flow solvers
    extras: frozenset[str] = frozenset()  # of EXTRAS
    freeu: Mapping[str, float] | None = None  # FreeU's b1, b2, s1, s2 where "freeu" is an extra
    negative_prompt: bool = True  # its render call takes a negative prompt
    refines: str | None = None  # a refiner: the family whose renders it finishes (it renders none itself)
    ip_adapter_layout: str | None = None  # of IP_ADAPTER_LAYOUTS; None: no image prompts
    denoiser: str = "unet"  # the pipeline attribute LoRAs attach to ("unet" or "transformer")
    # Working memory a render needs on top of the weights: activations grow
    # with the latent size. Rough fp16 figures, the same for every family so far.
    working_gb_base: float = 0.4
    working_gb_per_megapixel: float = 1.6

    @property
    def renders(self) -> bool:
        """Whether it renders on its own (a refiner only finishes another family's renders)."""
        return self.refines is None

    @property
    def native_pixels(self) -> int:
        return self.native_side * self.native_side

    def takes(self, extra: str) -> bool:
        return extra in self.extras

    def working_memory_gb(self, width: int, height: int) -> float:
        return self.working_gb_base + self.working_gb_per_megapixel * (width * height) / 1e6

    def render_kwargs(self, negative_prompt: str) -> dict[str, Any]:
        """What its render call adds to the common arguments. None lets each
        pipeline do its own thing for "no negative prompt" (SDXL uses zero
        embeddings, SD encodes "")."""
        return {"negative_prompt": negative_prompt or None} if self.negative_prompt else {}


# What the training objective fixes, for a family declaration to spread in
# (``Family(**NOISE_PREDICTION, ...)``): UNets predicting noise take every
# sampler in fp16; flow-matching transformers step along flow sigmas (their
# samplers and schedules are narrower, their activations overflow fp16).
NOISE_PREDICTION: dict[str, Any] = dict(flow=False, sampler_table=NOISE_SAMPLERS, samplers=tuple(NOISE_SAMPLERS),
                                        performance=NOISE_PERFORMANCE, default_dtype="fp16", denoiser="unet")
FLOW_MATCHING: dict[str, Any] = dict(flow=True, sampler_table=FLOW_SAMPLERS, unsupported_schedules=FLOW_UNSUPPORTED_SCHEDULES,
                                     performance=FLOW_PERFORMANCE, default_dtype="bf16", denoiser="transformer")
