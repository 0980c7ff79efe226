"""Loading diffusers pipelines per model family, and the render call.

The farm speaks in stable sampler names ("euler", "dpmpp_2m", ...) and sigma
schedule names ("normal", "karras", ...); this module maps them onto diffusers
scheduler classes and their config keys, builds a fresh scheduler for every
job, and runs the pipeline with per-image seeded generators so that the same
parameters always give the same pixels on the same machine.

A pipeline object must not be used by two renders at once: ``render`` swaps
the job's scheduler in for the length of the call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import threading
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import PIL.Image
import torch
from PIL import ExifTags
from PIL.PngImagePlugin import PngInfo

from farm.spec import REFINER_FAMILIES  # noqa: F401  (families that only finish another model's render)

logger = logging.getLogger(__name__)

#: Families that render on their own (a refiner family only finishes renders of one of them).
FAMILIES = ("sd", "sdxl", "flux", "sd3")
#: Families trained with flow matching (rectified flow): their samplers step
#: along sigmas from 1 to 0 and predict a velocity, so they take the
#: FlowMatch* schedulers or the multistep solvers in their flow mode.
FLOW_FAMILIES = ("flux", "sd3")

SIGMA_SCHEDULES = ("normal", "karras", "exponential", "sgm_uniform")

IMAGE_FORMATS = ("png", "jpeg", "webp")

_SEED_MOD = 2**64

# dpmpp_sde: diffusers hands torchsde float32 sigmas, and torchsde warns on
# every job that the first one is "above" its float64 interval end (or, when
# a refiner starts midway, "below" its start) by a rounding error. Harmless;
# silence just those messages.
warnings.filterwarnings("ignore", message=r"Should have t[ab](<=t1|>=t0) but got", category=UserWarning)


@dataclass(frozen=True)
class _Sampler:
    class_name: str  # attribute of the diffusers package
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules the class needs


SAMPLERS: dict[str, _Sampler] = {
    "euler": _Sampler("EulerDiscreteScheduler"),
    "euler_ancestral": _Sampler("EulerAncestralDiscreteScheduler"),
    "heun": _Sampler("HeunDiscreteScheduler"),
    "dpmpp_2m": _Sampler("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": _Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_sde": _Sampler("DPMSolverSDEScheduler", requires=("torchsde",)),
    "unipc": _Sampler("UniPCMultistepScheduler"),
    # Latent models must not clip the predicted sample to [-1, 1] (DDIM's
    # default, meant for pixel-space models); SD's own DDIM config sets both.
    "ddim": _Sampler("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "lcm": _Sampler("LCMScheduler"),
}

# The same stable names on flow-matching families. euler_ancestral is flow
# Euler with stochastic sampling: each step re-noises the predicted clean
# sample to the next sigma, the ancestral idea in flow form. The multistep
# solvers run on flow sigmas with a velocity prediction.
FLOW_SAMPLERS: dict[str, _Sampler] = {
    "euler": _Sampler("FlowMatchEulerDiscreteScheduler"),
    "euler_ancestral": _Sampler("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "heun": _Sampler("FlowMatchHeunDiscreteScheduler"),
    "dpmpp_2m": _Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ),
    "unipc": _Sampler("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "lcm": _Sampler("FlowMatchLCMScheduler"),
}

#: Samplers each family may use. FLUX's pipeline hands the scheduler its own
#: sigma list, which FlowMatchHeunDiscreteScheduler cannot take, so FLUX has
#: no heun; the SDE samplers and DDIM exist only for noise-prediction models.
FAMILY_SAMPLERS: dict[str, tuple[str, ...]] = {
    "sd": tuple(SAMPLERS),
    "sdxl": tuple(SAMPLERS),
    "sdxl_refiner": tuple(SAMPLERS),
    "flux": ("euler", "euler_ancestral", "dpmpp_2m", "unipc", "lcm"),
    "sd3": ("euler", "euler_ancestral", "heun", "dpmpp_2m", "unipc", "lcm"),
}


def _sampler_spec(family: str, sampler: str) -> _Sampler:
    return (FLOW_SAMPLERS if family in FLOW_FAMILIES else SAMPLERS)[sampler]


_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# Flow samplers whose class takes a sigma flag that its flow mode then
# ignores or breaks on: refused rather than silently ignored.
# (Measured on tiny FLUX and SD3 pipelines with diffusers 0.42: DPM++ 2M on
# flow sigmas with Karras or exponential spacing, and UniPC with exponential
# spacing, decode to NaN; "sgm_uniform" is trailing timestep spacing, which
# flow sigmas do not use.)
_FLOW_UNSUPPORTED_SCHEDULES: dict[str, tuple[str, ...]] = {
    "euler": ("sgm_uniform",),
    "euler_ancestral": ("sgm_uniform",),
    "heun": ("sgm_uniform",),
    "dpmpp_2m": ("karras", "exponential", "sgm_uniform"),
    "unipc": ("exponential", "sgm_uniform"),
    "lcm": ("sgm_uniform",),
}

# schedule -> (the __init__ parameter the class must have, the kwargs to set).
# Every schedule switches the other sigma flags off explicitly so that a base
# config that had one of them on cannot leak through.
_SCHEDULES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "normal": (None, {}),
    "karras": ("use_karras_sigmas", {"use_karras_sigmas": True}),
    "exponential": ("use_exponential_sigmas", {"use_exponential_sigmas": True}),
    "sgm_uniform": ("timestep_spacing", {"timestep_spacing": "trailing"}),
}


class RenderCanceled(Exception):
    """Raised from an ``on_step`` callback to stop a render at that step."""


# Guidance extras each family's pipelines provide (diffusers 0.42): CLIP skip
# (SD, SDXL, SD3 text encoders), FreeU (UNets only) and perturbed-attention
# guidance, "detail guidance" here (PAG pipelines exist for SD and SDXL in
# every mode, for SD3 without inpainting, not for FLUX).
FAMILY_EXTRAS: dict[str, frozenset[str]] = {
    "sd": frozenset({"clip_skip", "freeu", "detail_guidance", "detail_guidance_inpaint"}),
    "sdxl": frozenset({"clip_skip", "freeu", "detail_guidance", "detail_guidance_inpaint"}),
    "sd3": frozenset({"clip_skip", "detail_guidance"}),
    "flux": frozenset(),
    "sdxl_refiner": frozenset(),
}

# FreeU re-weights the UNet decoder's backbone (b1, b2) and skip (s1, s2)
# features; the values are the FreeU authors' recommended settings for SD and
# SDXL (Si et al., "FreeU: Free Lunch in Diffusion U-Net", CVPR 2024).
FREEU_SETTINGS: dict[str, dict[str, float]] = {
    "sd": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},
    "sdxl": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},
}


def check_extras(family: str, *, clip_skip: int | None, freeu: bool, detail_guidance: float | None,
                 inpainting: bool) -> list[tuple[str, str]]:
    """(field, why) for each guidance extra ``family`` cannot use; empty when all can be used."""
    have = FAMILY_EXTRAS.get(family, frozenset())
    problems = []
    if clip_skip is not None and clip_skip > 1 and "clip_skip" not in have:
        problems.append(("clip_skip", f"{family} models have no CLIP text encoder to skip layers of; leave clip_skip out"))
    if freeu and "freeu" not in have:
        problems.append(("freeu", f"FreeU works on UNets (sd, sdxl), not on {family} models"))
    if detail_guidance:
        if "detail_guidance" not in have:
            problems.append(("detail_guidance", f"detail guidance (perturbed attention) is not available for {family} models"))
        elif inpainting and "detail_guidance_inpaint" not in have:
            problems.append(("detail_guidance", f"detail guidance is not available for {family} inpainting or outpainting"))
    return problems


#: Above this many pixels the VAE decodes in tiles (diffusers' enable_tiling).
LARGE_IMAGE_PIXELS = 2_097_152


@dataclass(frozen=True)
class RenderParams:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    scheduler: str  # the sigma schedule: one of SIGMA_SCHEDULES
    seed: int
    num_images: int = 1
    same_seed: bool = False
    clip_skip: int | None = None  # 1 = the last layer (no skip)
    freeu: bool = False
    detail_guidance: float | None = None  # perturbed-attention guidance scale; None or 0 = off
    # LoRAs as the job's params hold them: {"name", "weight", "sha256", "source", "file"}.
    loras: tuple = ()
    image_prompts: "ImagePrompts | None" = None
    refiner: "Refiner | None" = None


@dataclass(frozen=True)
class Refiner:
    """An SDXL refiner finishing a text-to-image render: the base denoises the
    first ``switch`` fraction of the schedule and hands its latents over."""

    pipe: Any  # a loaded sdxl_refiner pipeline
    switch: float  # 0 < switch < 1


@dataclass(frozen=True)
class ImagePrompts:
    """Reference images for the family's IP-Adapter (a folder with one
    .safetensors adapter file and an image_encoder/ folder), at one weight."""

    adapter: str
    weight: float
    images: tuple  # PIL images


# --------------------------------------------------------------------------- samplers


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_CLASS_LOCK = threading.Lock()
_CLASS_CACHE: dict[str, type | None] = {}


def _diffusers_class(name: str) -> type | None:
    """A class exported by diffusers, looked up once per process under a lock:
    diffusers' lazy module is not safe for concurrent first access (API
    threads checking requests at once saw a missing class)."""
    with _CLASS_LOCK:
        if name not in _CLASS_CACHE:
            import diffusers

            _CLASS_CACHE[name] = getattr(diffusers, name, None)
        return _CLASS_CACHE[name]


def _scheduler_class(sampler: str, family: str = "sd") -> type | None:
    """The real diffusers class for ``sampler`` on ``family``, or None where it cannot be used here."""
    spec = _sampler_spec(family, sampler)
    if not all(_module_available(m) for m in spec.requires):
        return None
    cls = _diffusers_class(spec.class_name)
    # diffusers exports placeholder "dummy" classes when an optional dependency is missing.
    if cls is None or type(cls).__name__ == "DummyObject":
        return None
    return cls


def _init_params(cls: type) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def available_samplers(family: str) -> tuple[str, ...]:
    """Sampler names ``family`` can use on this machine (optional packages considered)."""
    return tuple(s for s in FAMILY_SAMPLERS.get(family, ()) if _scheduler_class(s, family) is not None)


def check_sampler(family: str, sampler: str, schedule: str) -> str | None:
    """None if ``sampler`` with sigma ``schedule`` can render ``family`` here, else why not."""
    if family not in FAMILY_SAMPLERS:
        return f"model family {family!r} is not supported; choose one of {', '.join(FAMILIES)}"
    allowed = FAMILY_SAMPLERS[family]
    if sampler not in allowed:
        if sampler in SAMPLERS:
            return f"sampler {sampler!r} is not available for {family} models; choose one of {', '.join(allowed)}"
        return f"sampler {sampler!r} is not known; choose one of {', '.join(allowed)}"
    if schedule not in _SCHEDULES:
        return f"sigma schedule {schedule!r} is not known; choose one of {', '.join(SIGMA_SCHEDULES)}"
    if family in FLOW_FAMILIES and schedule in _FLOW_UNSUPPORTED_SCHEDULES.get(sampler, ()):
        return f"sigma schedule {schedule!r} is not available with sampler {sampler!r} on {family} models"
    cls = _scheduler_class(sampler, family)
    if cls is None:
        missing = [m for m in _sampler_spec(family, sampler).requires if not _module_available(m)]
        if missing:
            return (
                f"sampler {sampler!r} is not supported on this worker: it needs the "
                f"{', '.join(missing)} package (pip install {' '.join(missing)})"
            )
        return f"sampler {sampler!r} is not supported by the installed diffusers"
    needed, _ = _SCHEDULES[schedule]
    if needed is not None and needed not in _init_params(cls):
        return f"sigma schedule {schedule!r} is not available with sampler {sampler!r}"
    return None


def build_scheduler(
    base_config: Mapping[str, Any],
    sampler: str,
    schedule: str,
    *,
    noise_seed: int | list[int] | None = None,
    family: str = "sd",
):
    """A new scheduler for ``sampler`` / ``schedule`` from a pipeline's scheduler config.

    ``base_config`` keeps the model's training schedule (betas, prediction
    type, timestep spacing); the sampler and schedule settings override it.
    ``noise_seed`` seeds samplers that draw their noise outside the pipeline's
    generators (dpmpp_sde's Brownian tree): one seed, or one per image.
    Raises ValueError where ``check_sampler`` would refuse the combination.
    """
    problem = check_sampler(family, sampler, schedule) if family in FAMILY_SAMPLERS else f"model family {family!r} is not supported"
    if problem:
        raise ValueError(problem)
    cls = _scheduler_class(sampler, family)
    params = _init_params(cls)
    _, schedule_kwargs = _SCHEDULES[schedule]

    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS}
    overrides.update(_sampler_spec(family, sampler).kwargs)
    overrides.update(schedule_kwargs)
    if family in FLOW_FAMILIES and overrides.get("use_flow_sigmas"):
        # The multistep solvers shift flow sigmas by flow_shift: the model's
        # own shift, or, where the pipeline passes a resolution-dependent mu
        # (FLUX always does), exp(mu), which needs dynamic shifting on.
        overrides["flow_shift"] = float(base_config.get("shift", 1.0))
        if family == "flux":
            overrides["use_dynamic_shifting"] = True
            overrides["time_shift_type"] = "exponential"
    if noise_seed is not None:
        overrides["noise_sampler_seed"] = noise_seed
    overrides = {k: v for k, v in overrides.items() if k in params}
    # Only pass config keys the class takes; from_config would otherwise log each stray one.
    config = {k: v for k, v in dict(base_config).items() if k in params or k.startswith("_")}
    return cls.from_config(config, **overrides)


# --------------------------------------------------------------------------- device


def pick_device(setting: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; otherwise the named device."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ValueError(f"device {setting!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but CUDA is not available on this machine")
    return device


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def pick_dtype(device: torch.device, requested: str | None = None, family: str = "sd") -> torch.dtype:
    """float32 on the CPU always; elsewhere ``requested`` ("fp16", "bf16", "fp32").

    Unset: bf16 for the flow-matching families (FLUX and SD3 activations
    overflow fp16) where the GPU has it, fp16 otherwise.
    """
    if requested is not None and requested.lower() not in _DTYPES:
        raise ValueError(f"dtype {requested!r} is not known; choose one of fp16, bf16, fp32")
    if device.type == "cpu":
        if requested is not None and _DTYPES[requested.lower()] != torch.float32:
            logger.info("dtype %s ignored on the CPU; using fp32", requested)
        return torch.float32
    if requested is None:
        requested = "bf16" if family in FLOW_FAMILIES else "fp16"
    dtype = _DTYPES[requested.lower()]
    if (
        dtype == torch.bfloat16
        and device.type == "cuda"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        logger.warning("bf16 is not supported on %s; using fp16", device)
        return torch.float16
    return dtype


# --------------------------------------------------------------------------- pipelines


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """from_pretrained's dtype keyword: ``dtype`` on newer diffusers, ``torch_dtype`` before.

    diffusers 0.42 deprecated ``torch_dtype`` (warning on every load); older
    releases do not know ``dtype``. The helper probed here came with the rename.
    """
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _load_sd(path: str | os.PathLike, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **_dtype_kwarg(dtype)
    )


def _load_sdxl(path: str | os.PathLike, dtype: torch.dtype):
    from diffusers import StableDiffusionXLPipeline

    # SDXL has no safety checker; its invisible watermark is left at diffusers' default.
    return StableDiffusionXLPipeline.from_pretrained(path, **_dtype_kwarg(dtype))


def _load_sdxl_refiner(path: str | os.PathLike, dtype: torch.dtype):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline.from_pretrained(path, **_dtype_kwarg(dtype))


def _load_flux(path: str | os.PathLike, dtype: torch.dtype):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(path, **_dtype_kwarg(dtype))


def _load_sd3(path: str | os.PathLike, dtype: torch.dtype):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(path, **_dtype_kwarg(dtype))


_LOADERS: dict[str, Callable[[str | os.PathLike, torch.dtype], Any]] = {
    "sd": _load_sd,
    "sdxl": _load_sdxl,
    "flux": _load_flux,
    "sd3": _load_sd3,
    "sdxl_refiner": _load_sdxl_refiner,
}


@contextlib.contextmanager
def quiet_progress_bars():
    """Turn diffusers' and transformers' tqdm bars off for a load or save (process-wide)."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as tf_logging

    was_on = [(lib, lib.is_progress_bar_enabled()) for lib in (df_logging, tf_logging)]
    for lib, _ in was_on:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in was_on:
            if on:
                lib.enable_progress_bar()


def load_pipeline(path: str | os.PathLike, family: str, device: torch.device, dtype: torch.dtype):
    """Load a diffusers model directory (or hub id) of ``family`` onto ``device``."""
    if family not in _LOADERS:
        raise ValueError(f"model family {family!r} is not supported; choose one of {', '.join(FAMILIES)}")
    with quiet_progress_bars():
        pipe = _LOADERS[family](os.fspath(path), dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s pipeline from %s on %s as %s", family, path, device, dtype)
    return pipe


def pipeline_family(pipe) -> str:
    """The farm family name of a loaded pipeline object."""
    from diffusers import (FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
                           StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline)

    for cls, family in ((StableDiffusionXLPipeline, "sdxl"), (StableDiffusionPipeline, "sd"),
                        (FluxPipeline, "flux"), (StableDiffusion3Pipeline, "sd3"),
                        (StableDiffusionXLImg2ImgPipeline, "sdxl_refiner")):
        if isinstance(pipe, cls):
            return family
    raise ValueError(f"pipeline class {type(pipe).__name__} belongs to no supported family")


def _torch_modules(pipe) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def estimate_vram_gb(pipe) -> float:
    """Bytes of all parameters and buffers of the pipeline's torch modules, in GiB (2**30).

    Weights only: activations, the VAE decode and the CUDA context come on top.
    """
    seen: set[int] = set()
    total = 0
    for module in _torch_modules(pipe):
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total / 2**30


# --------------------------------------------------------------------------- render


def _image_seeds(params: RenderParams) -> list[int]:
    if params.same_seed:
        return [params.seed % _SEED_MOD] * params.num_images
    return [(params.seed + i) % _SEED_MOD for i in range(params.num_images)]


def _negative_prompt_kwargs(family: str, negative_prompt: str) -> dict[str, Any]:
    """None lets each pipeline do its own thing for "no negative prompt" (SDXL
    uses zero embeddings, SD encodes ""). FLUX is guidance-distilled: it takes
    no negative prompt (diffusers would need a second, "true CFG" pass), so the
    request's negative prompt is recorded but not used."""
    if family == "flux":
        return {}
    return {"negative_prompt": negative_prompt or None}


@dataclass(frozen=True)
class ImageInputs:
    """What an image-to-image call adds to a render: the source (already at the
    output size), the denoising strength, and for inpainting the mask (white =
    repaint)."""

    image: PIL.Image.Image
    strength: float
    mask: PIL.Image.Image | None = None

    @property
    def kind(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"


def derived_pipeline(pipe, kind: str, pag: bool = False):
    """The image-to-image, inpainting or perturbed-attention pipeline of a loaded text-to-image one.

    ``kind`` is "text2img", "img2img" or "inpaint". ``from_pipe`` shares every
    component (no extra weights in memory); the result is kept on the
    pipeline object, so a worker builds each once.
    """
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    if kind == "text2img" and not pag:
        return pipe
    cache = pipe.__dict__.setdefault("_farm_derived", {})
    if (kind, pag) not in cache:
        auto = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[kind]
        derived = auto.from_pipe(pipe, enable_pag=True) if pag else auto.from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        cache[(kind, pag)] = derived
    return cache[(kind, pag)]


def _alias_clip_text_model(text_encoder) -> None:
    """SD's clip-skip path in diffusers 0.42 reads ``text_encoder.text_model.final_layer_norm``;
    transformers 5 flattened CLIPTextModel (its final_layer_norm is on the model
    itself). Point ``text_model`` at the model, outside the module tree (a plain
    attribute, not a submodule, so parameters are not listed twice)."""
    if text_encoder is None or hasattr(text_encoder, "text_model") or not hasattr(text_encoder, "final_layer_norm"):
        return
    object.__setattr__(text_encoder, "text_model", text_encoder)


class LoraIntegrityError(Exception):
    """A LoRA file's sha256 differs from the one the registry recorded."""


def apply_loras(pipe, loras) -> None:
    """Load each of the job's LoRAs once per pipeline and activate them with their weights.

    Adapters stay loaded (keyed by sha256) for later jobs; a job without LoRAs
    turns them all off, so it renders exactly as the bare model.
    """
    from farm.loras import file_sha256

    loaded: dict[str, str] = pipe.__dict__.setdefault("_farm_loras", {})
    if not loras:
        if loaded:
            pipe.disable_lora()
        return
    names = []
    for lora in loras:
        name = loaded.get(lora["sha256"])
        if name is None:
            path = os.path.join(lora["source"], lora["file"])
            actual = file_sha256(path)
            if actual != lora["sha256"]:
                raise LoraIntegrityError(f"LoRA {lora['name']} at {path} has sha256 {actual}, not the registered {lora['sha256']}")
            name = f"lora_{len(loaded)}"
            pipe.load_lora_weights(lora["source"], weight_name=lora["file"], adapter_name=name)
            loaded[lora["sha256"]] = name
            logger.info("loaded LoRA %s as adapter %s", lora["name"], name)
        names.append(name)
    pipe.enable_lora()
    pipe.set_adapters(names, [float(lora["weight"]) for lora in loras])


def _use_ip_adapter(pipe, target, prompts: ImagePrompts | None) -> None:
    """Have the job's IP-Adapter loaded into ``target`` at its weight, or none at all.

    An adapter stays loaded across images, tiles and jobs that use it; a
    render without image prompts unloads it, so it runs as the bare model.
    The record lives on the base pipeline, whose UNet every derived pipeline
    shares: an adapter loaded through an img2img pipeline is unloaded before
    a plain text-to-image render too.
    """
    loaded = pipe.__dict__.get("_farm_ip_adapter")  # (pipeline it was loaded into, folder)
    wanted = (target, prompts.adapter) if prompts is not None else None
    if loaded is not None and (wanted is None or loaded[0] is not wanted[0] or loaded[1] != wanted[1]):
        loaded[0].unload_ip_adapter()
        pipe.__dict__["_farm_ip_adapter"] = loaded = None
    if prompts is None:
        return
    if loaded is None:
        folder = prompts.adapter
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if len(files) != 1:
            raise ValueError(f"IP-Adapter folder {folder} must hold exactly one .safetensors file; found {len(files)}")
        if not hasattr(target, "load_ip_adapter"):
            raise ValueError(f"{type(target).__name__} takes no image prompts")
        if pipeline_family(pipe) == "flux":
            # FLUX's loader (XLabs layout) names the encoder folder by path and
            # defaults it to fp16; keep it in the pipeline's dtype.
            target.load_ip_adapter(folder, subfolder="", weight_name=files[0],
                                   image_encoder_pretrained_model_name_or_path=os.path.join(folder, "image_encoder"),
                                   image_encoder_dtype=target.transformer.dtype)
        else:
            target.load_ip_adapter(folder, subfolder="", weight_name=files[0], image_encoder_folder="image_encoder")
        pipe.__dict__["_farm_ip_adapter"] = wanted
    target.set_ip_adapter_scale(float(prompts.weight))


def _call_parameters(target) -> set[str]:
    return set(inspect.signature(target.__call__).parameters)


def render(
    pipe,
    params: RenderParams,
    on_step: Callable[[int, int], None] | None = None,
    inputs: ImageInputs | None = None,
    on_latents: Callable[[Any], None] | None = None,
) -> list[PIL.Image.Image]:
    """Render ``params.num_images`` images with ``pipe``.

    Image i uses a CPU generator seeded with ``seed + i`` (or ``seed`` for all
    with ``same_seed``), so image i is the same whatever ``num_images`` is.

    ``on_step(done, total)`` is called after every denoising iteration;
    ``total`` is the number of iterations the sampler runs, which is
    ``steps`` for first-order samplers and ``2 * steps - 1`` for the second
    order ones (heun, dpmpp_sde). Raising RenderCanceled from it stops the
    render there; the exception propagates to the caller. ``on_latents``
    is then given the iteration's latents (as the pipeline holds them; FLUX's
    are packed) for live previews.
    """
    if params.num_images < 1:
        raise ValueError("num_images must be at least 1")
    if params.steps < 1:
        raise ValueError("steps must be at least 1")
    family = pipeline_family(pipe)
    problem = check_sampler(family, params.sampler, params.scheduler)
    if problem:
        raise ValueError(problem)
    problems = check_extras(family, clip_skip=params.clip_skip, freeu=params.freeu,
                            detail_guidance=params.detail_guidance, inpainting=inputs is not None and inputs.mask is not None)
    if problems:
        raise ValueError("; ".join(why for _, why in problems))

    apply_loras(pipe, params.loras)
    seeds = _image_seeds(params)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    # Image-to-image work runs the derived pipeline; its scheduler is swapped
    # like the base one's (from_pipe gave it the same scheduler object).
    detail = bool(params.detail_guidance)
    target = derived_pipeline(pipe, "text2img" if inputs is None else inputs.kind, pag=detail)
    original = target.scheduler
    scheduler = build_scheduler(original.config, params.sampler, params.scheduler, noise_seed=seeds, family=family)

    refiner = params.refiner
    if refiner is not None and (family != "sdxl" or inputs is not None):
        raise ValueError("a refiner finishes SDXL text-to-image renders only")
    if refiner is not None and not 0 < refiner.switch < 1:
        raise ValueError("the refiner switch must lie strictly between 0 and 1")

    def callback_for(start: float, share: float):
        """Progress of one phase (the base, or the refiner) as a part of the whole render."""
        if on_step is None and on_latents is None:
            return None

        def callback(p, step_index: int, timestep, callback_kwargs: dict) -> dict:
            total = int(getattr(p, "num_timesteps", None) or len(p.scheduler.timesteps))
            if on_step is None:
                pass
            elif share == 1.0:
                on_step(step_index + 1, total)
            else:
                # In base steps: the refiner's iterations count as the rest of the schedule.
                done = (start + share * (step_index + 1) / total) * params.steps
                on_step(min(params.steps, max(1, round(done))), params.steps)
            if on_latents is not None and callback_kwargs.get("latents") is not None:
                on_latents(callback_kwargs["latents"])
            return callback_kwargs

        return callback

    callback = callback_for(0.0, refiner.switch if refiner is not None else 1.0)

    call_kwargs: dict[str, Any] = dict(
        prompt=params.prompt,
        **_negative_prompt_kwargs(family, params.negative_prompt),
        width=params.width,
        height=params.height,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        num_images_per_prompt=params.num_images,
        generator=generators,
        output_type="pil" if refiner is None else "latent",
        callback_on_step_end=callback,
    )
    if refiner is not None:
        call_kwargs["denoising_end"] = refiner.switch
    if inputs is not None:
        call_kwargs.update(image=inputs.image, strength=inputs.strength)
        if inputs.mask is not None:
            call_kwargs["mask_image"] = inputs.mask
        # SD's img2img pipeline takes its size from the image.
        accepted = _call_parameters(target)
        call_kwargs = {k: v for k, v in call_kwargs.items() if k in accepted}
    if params.clip_skip is not None and params.clip_skip > 1:
        # diffusers counts the layers skipped: clip_skip=1 there is our 2.
        call_kwargs["clip_skip"] = params.clip_skip - 1
        _alias_clip_text_model(getattr(target, "text_encoder", None))
    if detail:
        call_kwargs["pag_scale"] = float(params.detail_guidance)
    _use_ip_adapter(pipe, target, params.image_prompts)
    if params.image_prompts is not None:
        # One adapter, several images: their embeddings are stacked (a list per adapter).
        call_kwargs["ip_adapter_image"] = [list(params.image_prompts.images)]
    if params.freeu:
        # FreeU changes the shared UNet in place: on for this call only.
        target.enable_freeu(**FREEU_SETTINGS[family])
    # Large images decode tile by tile, so the VAE's activations (which grow
    # with the pixel count) stay bounded up to 4 megapixels.
    tiled_vae = params.width * params.height > LARGE_IMAGE_PIXELS and hasattr(getattr(target, "vae", None), "enable_tiling")
    if tiled_vae:
        target.vae.enable_tiling()
    target.scheduler = scheduler
    try:
        # FLUX's and SD3's pipelines call scheduler.step without the
        # generators, so the stochastic flow samplers (euler_ancestral, lcm)
        # draw from torch's global generator: seed it for the call, and put
        # it back afterwards.
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seeds[0])
            result = target(**call_kwargs)
    finally:
        target.scheduler = original
        if params.freeu:
            target.disable_freeu()
        if tiled_vae:
            target.vae.disable_tiling()
    if refiner is not None:
        return _refine(refiner, params, result.images, generators, seeds, callback_for(refiner.switch, 1 - refiner.switch))
    return list(result.images)


def _refine(refiner: Refiner, params: RenderParams, latents, generators, seeds, callback) -> list[PIL.Image.Image]:
    """The refiner's part of a render: the same prompt and sampler from the
    base's switch point to the end, on the base's latents (no noise added)."""
    pipe = refiner.pipe
    original = pipe.scheduler
    pipe.scheduler = build_scheduler(original.config, params.sampler, params.scheduler, noise_seed=seeds,
                                     family="sdxl_refiner")
    tiled_vae = params.width * params.height > LARGE_IMAGE_PIXELS
    if tiled_vae:
        pipe.vae.enable_tiling()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seeds[0])
            result = pipe(
                prompt=params.prompt, negative_prompt=params.negative_prompt or None, image=latents,
                num_inference_steps=params.steps, denoising_start=refiner.switch, guidance_scale=params.guidance_scale,
                num_images_per_prompt=1, generator=generators, output_type="pil", callback_on_step_end=callback,
            )
    finally:
        pipe.scheduler = original
        if tiled_vae:
            pipe.vae.disable_tiling()
    return list(result.images)


# --------------------------------------------------------------------------- encoding

_EXIF_ASCII = b"ASCII\x00\x00\x00"  # UserComment's 8-byte character code prefix


def _exif_with_text(text: Mapping[str, str]) -> PIL.Image.Exif:
    exif = PIL.Image.Exif()
    payload = json.dumps(dict(text), ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _EXIF_ASCII + payload.encode("ascii")
    return exif


def encode_image(image: PIL.Image.Image, fmt: str, text: dict[str, str]) -> bytes:
    """Encode ``image`` as png, jpeg or webp with ``text`` embedded; deterministic.

    PNG: one text chunk per key (tEXt, or iTXt where the value is not latin-1).
    JPEG / WebP: the whole mapping as a JSON object (ASCII, sorted keys) in the
    EXIF UserComment. ``read_image_text`` reads either back.
    """
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; choose one of {', '.join(IMAGE_FORMATS)}")
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("text keys and values must be str")
    buf = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        for key in sorted(text):
            try:
                key.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"PNG text key {key!r} must be latin-1") from None
            if not 1 <= len(key) <= 79:
                raise ValueError(f"PNG text key {key!r} must be 1 to 79 characters")
            info.add_text(key, text[key])
        image.save(buf, format="PNG", pnginfo=info, compress_level=6, optimize=False)
    elif fmt == "jpeg":
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buf, format="JPEG", quality=95, optimize=False, progressive=False, exif=_exif_with_text(text))
    else:
        image.save(buf, format="WEBP", quality=90, method=4, lossless=False, exif=_exif_with_text(text))
    return buf.getvalue()


def read_image_text(data: bytes) -> dict[str, str]:
    """The text ``encode_image`` embedded in ``data`` (empty if there is none)."""
    with PIL.Image.open(io.BytesIO(data)) as im:
        if im.format == "PNG":
            return dict(getattr(im, "text", {}) or {})
        raw = im.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not raw:
        return {}
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if raw.startswith(_EXIF_ASCII):
        raw = raw[len(_EXIF_ASCII) :]
    try:
        value = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


__all__ = [
    "FAMILIES",
    "FAMILY_SAMPLERS",
    "FLOW_FAMILIES",
    "FLOW_SAMPLERS",
    "FAMILY_EXTRAS",
    "FREEU_SETTINGS",
    "ImageInputs",
    "ImagePrompts",
    "LoraIntegrityError",
    "apply_loras",
    "check_extras",
    "derived_pipeline",
    "IMAGE_FORMATS",
    "SAMPLERS",
    "SIGMA_SCHEDULES",
    "REFINER_FAMILIES",
    "Refiner",
    "RenderCanceled",
    "RenderParams",
    "available_samplers",
    "build_scheduler",
    "check_sampler",
    "encode_image",
    "estimate_vram_gb",
    "load_pipeline",
    "pick_device",
    "pick_dtype",
    "pipeline_family",
    "quiet_progress_bars",
    "read_image_text",
    "render",
]
