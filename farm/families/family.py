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

from farm.families.performance import FLOW_OWN_SIGMAS_PERFORMANCE, FLOW_PERFORMANCE, NOISE_PERFORMANCE, PerformanceMode
from farm.families.samplers import FLOW_SAMPLERS, FLOW_UNSUPPORTED_SCHEDULES, NOISE_SAMPLERS, SamplerConfig

logger = logging.getLogger(__name__)

#: Guidance extras a family may take (``Family.extras``).
EXTRAS = ("clip_skip", "freeu", "detail_guidance", "detail_guidance_inpaint", "sag", "refiner")
#: How a family's IP-Adapter weights are laid out and loaded.
IP_ADAPTER_LAYOUTS = ("unet", "xlabs")


@dataclass(frozen=True)
class Family:
    """Everything the farm knows about one model family."""

    name: str  # the registry's family name, stored on models and LoRAs
    title: str  # for people: "Stable Diffusion XL"
    # Detection and loading.
    pipeline_class: str  # the diffusers class its folders are saved as (model_index.json "_class_name")
    load: Callable[..., Any]  # (folder or hub id, torch dtype, **from_pretrained extras) -> pipeline on the CPU
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
    sag_pipeline_class: str | None = None  # the diffusers pipeline running self-attention guidance where "sag" is an extra
    negative_prompt: bool = True  # its render call takes a negative prompt
    refines: str | None = None  # a refiner: the family whose renders it finishes (it renders none itself)
    ip_adapter_layout: str | None = None  # of IP_ADAPTER_LAYOUTS; None: no image prompts
    denoiser: str = "unet"  # the pipeline attribute LoRAs attach to ("unet" or "transformer")
    # Reference images its render call conditions on (a request's
    # "references", passed as the pipeline's ``image=[...]``): the model's
    # own limit; 0 takes none.
    max_references: int = 0
    reference_min_side: int = 64  # each reference's shorter side, in pixels, at least
    reference_max_aspect: float = 8.0  # each reference's longer side over its shorter, at most
    reference_max_pixels: int = 1024 * 1024  # larger references are shrunk to this many pixels by the pipeline
    # Components a quantized variant quantizes (farm/quantization.py); empty: the denoiser alone.
    # The big text encoders go too where they would not fit a 24 GB GPU beside it (FLUX's T5-XXL).
    quantize: tuple[str, ...] = ()
    # Working memory a render needs on top of the weights: activations grow
    # with the latent size. Rough fp16 figures, the same for every family so far.
    working_gb_base: float = 0.4
    working_gb_per_megapixel: float = 1.6
    # What it does with images. Editing (image_mode "edit"): the prompt is an
    # instruction applied to a source image, which the model sees whole
    # (FLUX.1 Kontext, Qwen-Image-Edit); the plain image-to-image modes
    # (vary, upscale, inpaint, outpaint) re-noise the source through diffusers'
    # image-to-image and inpainting pipelines derived from the loaded one.
    text_to_image: bool = True
    image_to_image: bool = True
    edits: bool = False
    # The family's own render arguments: (negative_prompt, guidance_scale,
    # width, height) -> keyword arguments that are added to, or replace, the
    # common ones. None: render_kwargs' default.
    call_kwargs: Callable[[str, float, int, int], dict[str, Any]] | None = None

    @property
    def renders(self) -> bool:
        """Whether it renders on its own (a refiner only finishes another family's renders)."""
        return self.refines is None

    @property
    def quantized_components(self) -> tuple[str, ...]:
        return self.quantize or (self.denoiser,)

    @property
    def native_pixels(self) -> int:
        return self.native_side * self.native_side

    def takes(self, extra: str) -> bool:
        return extra in self.extras

    def working_memory_gb(self, width: int, height: int) -> float:
        return self.working_gb_base + self.working_gb_per_megapixel * (width * height) / 1e6

    def render_kwargs(self, negative_prompt: str, guidance_scale: float = 0.0, width: int = 0,
                      height: int = 0) -> dict[str, Any]:
        """What its render call adds to (or replaces in) the common arguments.
        By default a negative prompt where the family takes one; None lets
        each pipeline do its own thing for "no negative prompt" (SDXL uses
        zero embeddings, SD encodes "")."""
        if self.call_kwargs is not None:
            return self.call_kwargs(negative_prompt, guidance_scale, width, height)
        return {"negative_prompt": negative_prompt or None} if self.negative_prompt else {}


# What the training objective fixes, for a family declaration to spread in
# (``Family(**NOISE_PREDICTION, ...)``): UNets predicting noise take every
# sampler in fp16; flow-matching transformers step along flow sigmas (their
# samplers and schedules are narrower, their activations overflow fp16).
NOISE_PREDICTION: dict[str, Any] = dict(flow=False, sampler_table=NOISE_SAMPLERS, samplers=tuple(NOISE_SAMPLERS),
                                        performance=NOISE_PERFORMANCE, default_dtype="fp16", denoiser="unet")
FLOW_MATCHING: dict[str, Any] = dict(flow=True, sampler_table=FLOW_SAMPLERS, unsupported_schedules=FLOW_UNSUPPORTED_SCHEDULES,
                                     performance=FLOW_PERFORMANCE, default_dtype="bf16", denoiser="transformer")
# Flow pipelines that hand the scheduler a sigma list of their own (FLUX.1
# Kontext, Qwen-Image): neither FlowMatchHeunDiscreteScheduler nor
# DPMSolverMultistepScheduler takes one, so no heun and no dpmpp_2m, and the
# quality mode runs UniPC.
FLOW_OWN_SIGMAS: dict[str, Any] = dict(FLOW_MATCHING, performance=FLOW_OWN_SIGMAS_PERFORMANCE,
                                       samplers=("euler", "euler_ancestral", "unipc", "lcm"))
