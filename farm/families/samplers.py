"""Sampler and sigma-schedule vocabulary, and the diffusers scheduler each maps to.

The farm speaks in stable sampler names ("euler", "dpmpp_2m", ...) and sigma
schedule names ("normal", "karras", ...). A family picks the table its
samplers come from (noise prediction or flow matching) and the names it
allows; this module turns (family, sampler, schedule) into a fresh diffusers
scheduler. diffusers is imported on first use only, so the request check can
import the vocabulary without loading torch.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from farm.families.family import Family

logger = logging.getLogger(__name__)

#: Every sampler name a request may give (a family allows a subset).
SAMPLER_NAMES = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "unipc", "ddim", "lcm")
SIGMA_SCHEDULES = ("normal", "karras", "exponential", "sgm_uniform")


@dataclass(frozen=True)
class SamplerConfig:
    class_name: str  # attribute of the diffusers package
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules the class needs
    # Whether a render can stop at a step boundary and continue later to the
    # same bytes (farm/workers/resume.py): all of the sampler's state is in
    # its scheduler's plain attributes and the farm's seeded generators. The
    # scheduler never preempts a render whose sampler is not.
    resumable: bool = True


#: Samplers of noise-prediction models (SD, SDXL).
NOISE_SAMPLERS: dict[str, SamplerConfig] = {
    "euler": SamplerConfig("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerConfig("EulerAncestralDiscreteScheduler"),
    "heun": SamplerConfig("HeunDiscreteScheduler"),
    "dpmpp_2m": SamplerConfig("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": SamplerConfig(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    ),
    # Its noise comes from a torchsde Brownian tree built inside the
    # scheduler, an object whose state cannot be checkpointed.
    "dpmpp_sde": SamplerConfig("DPMSolverSDEScheduler", requires=("torchsde",), resumable=False),
    "unipc": SamplerConfig("UniPCMultistepScheduler"),
    # Latent models must not clip the predicted sample to [-1, 1] (DDIM's
    # default, meant for pixel-space models); SD's own DDIM config sets both.
    "ddim": SamplerConfig("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "lcm": SamplerConfig("LCMScheduler"),
}

# Samplers self-attention guidance can run with. Its pipeline predicts the
# clean latents from alphas_cumprod at integer timesteps (the DDPM
# parametrisation), so it refuses schedulers stepping on float timesteps
# with sigma-scaled latents (euler, euler_ancestral, heun, dpmpp_sde).
# Measured on the tiny SD pipeline with diffusers 0.42: these render with
# every sigma schedule their class takes; the others raise at the first step.
SAG_SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde", "unipc", "ddim", "lcm")

# The same stable names on flow-matching families. euler_ancestral is flow
# Euler with stochastic sampling: each step re-noises the predicted clean
# sample to the next sigma, the ancestral idea in flow form. The multistep
# solvers run on flow sigmas with a velocity prediction.
FLOW_SAMPLERS: dict[str, SamplerConfig] = {
    "euler": SamplerConfig("FlowMatchEulerDiscreteScheduler"),
    "euler_ancestral": SamplerConfig("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "heun": SamplerConfig("FlowMatchHeunDiscreteScheduler"),
    "dpmpp_2m": SamplerConfig(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ),
    "unipc": SamplerConfig("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "lcm": SamplerConfig("FlowMatchLCMScheduler"),
}

# Flow samplers whose class takes a sigma flag that its flow mode then
# ignores or breaks on: refused rather than silently ignored.
# (Measured on tiny FLUX and SD3 pipelines with diffusers 0.42: DPM++ 2M on
# flow sigmas with Karras or exponential spacing, and UniPC with exponential
# spacing, decode to NaN; "sgm_uniform" is trailing timestep spacing, which
# flow sigmas do not use.)
FLOW_UNSUPPORTED_SCHEDULES: dict[str, tuple[str, ...]] = {
    "euler": ("sgm_uniform",),
    "euler_ancestral": ("sgm_uniform",),
    "heun": ("sgm_uniform",),
    "dpmpp_2m": ("karras", "exponential", "sgm_uniform"),
    "unipc": ("exponential", "sgm_uniform"),
    "lcm": ("sgm_uniform",),
}

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# schedule -> (the __init__ parameter the class must have, the kwargs to set).
# Every schedule switches the other sigma flags off explicitly so that a base
# config that had one of them on cannot leak through.
_SCHEDULES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "normal": (None, {}),
    "karras": ("use_karras_sigmas", {"use_karras_sigmas": True}),
    "exponential": ("use_exponential_sigmas", {"use_exponential_sigmas": True}),
    "sgm_uniform": ("timestep_spacing", {"timestep_spacing": "trailing"}),
}


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


def scheduler_class(family: Family, sampler: str) -> type | None:
    """The real diffusers class for ``sampler`` on ``family``, or None where it cannot be used here."""
    spec = family.sampler_table[sampler]
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


def available_samplers(family: Family) -> tuple[str, ...]:
    """Sampler names ``family`` can use on this machine (optional packages considered)."""
    return tuple(s for s in family.samplers if scheduler_class(family, s) is not None)


def is_resumable(family: Family, sampler: str) -> bool:
    """Whether a render with ``sampler`` on ``family`` may be stopped and continued (``SamplerConfig.resumable``)."""
    spec = family.sampler_table.get(sampler)
    return spec is not None and spec.resumable


def check_sampler(family: Family, sampler: str, schedule: str) -> str | None:
    """None if ``sampler`` with sigma ``schedule`` can render ``family`` here, else why not."""
    allowed = family.samplers
    if sampler not in allowed:
        if sampler in NOISE_SAMPLERS:
            return f"sampler {sampler!r} is not available for {family.name} models; choose one of {', '.join(allowed)}"
        return f"sampler {sampler!r} is not known; choose one of {', '.join(allowed)}"
    if schedule not in _SCHEDULES:
        return f"sigma schedule {schedule!r} is not known; choose one of {', '.join(SIGMA_SCHEDULES)}"
    if schedule in family.unsupported_schedules.get(sampler, ()):
        return f"sigma schedule {schedule!r} is not available with sampler {sampler!r} on {family.name} models"
    cls = scheduler_class(family, sampler)
    if cls is None:
        missing = [m for m in family.sampler_table[sampler].requires if not _module_available(m)]
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


def build_scheduler(family: Family, base_config: Mapping[str, Any], sampler: str, schedule: str, *,
                    noise_seed: int | list[int] | None = None):
    """A new scheduler for ``sampler`` / ``schedule`` on ``family`` from a pipeline's scheduler config.

    ``base_config`` keeps the model's training schedule (betas, prediction
    type, timestep spacing); the sampler and schedule settings override it.
    ``noise_seed`` seeds samplers that draw their noise outside the pipeline's
    generators (dpmpp_sde's Brownian tree): one seed, or one per image.
    Raises ValueError where ``check_sampler`` would refuse the combination.
    """
    problem = check_sampler(family, sampler, schedule)
    if problem:
        raise ValueError(problem)
    cls = scheduler_class(family, sampler)
    params = _init_params(cls)
    _, schedule_kwargs = _SCHEDULES[schedule]

    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS}
    overrides.update(family.sampler_table[sampler].kwargs)
    overrides.update(schedule_kwargs)
    if family.flow and overrides.get("use_flow_sigmas"):
        # The multistep solvers shift flow sigmas by flow_shift: the model's
        # own shift, or, where the pipeline passes a resolution-dependent mu
        # (FLUX always does), exp(mu), which needs dynamic shifting on.
        overrides["flow_shift"] = float(base_config.get("shift", 1.0))
        if family.dynamic_shift:
            overrides["use_dynamic_shifting"] = True
            overrides["time_shift_type"] = "exponential"
    if noise_seed is not None:
        overrides["noise_sampler_seed"] = noise_seed
    overrides = {k: v for k, v in overrides.items() if k in params}
    # Only pass config keys the class takes; from_config would otherwise log each stray one.
    config = {k: v for k, v in dict(base_config).items() if k in params or k.startswith("_")}
    return cls.from_config(config, **overrides)
