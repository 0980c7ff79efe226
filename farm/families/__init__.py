"""Model families as plug-ins: one module per family, collected here.

Each module (``sd.py``, ``sdxl.py``, ...) declares one :class:`Family`; this
registry is what the request check, the model registry, the scheduler and the
worker ask about a family. Importing it loads neither torch nor diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

from farm.families import flux, sd, sd3, sdxl, sdxl_refiner
from farm.families.family import Family
from farm.families import samplers as _samplers

logger = logging.getLogger(__name__)

# Registration order is the order names are listed in (help texts, messages).
_FAMILIES: dict[str, Family] = {module.FAMILY.name: module.FAMILY for module in (sd, sdxl, flux, sd3, sdxl_refiner)}


class UnknownFamilyError(ValueError):
    """A family name the registry does not know."""


def all_families() -> tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def family_names() -> tuple[str, ...]:
    """Every family's name, refiners included."""
    return tuple(_FAMILIES)


def renderer_names() -> tuple[str, ...]:
    """Families that render on their own (not refiners)."""
    return tuple(f.name for f in _FAMILIES.values() if f.renders)


def refiner_names() -> tuple[str, ...]:
    """Families that only finish another family's renders."""
    return tuple(f.name for f in _FAMILIES.values() if not f.renders)


def find_family(name: str | None) -> Family | None:
    return _FAMILIES.get(name) if name else None


def get_family(name: str) -> Family:
    """The family called ``name``; UnknownFamilyError (a ValueError) naming the known ones otherwise."""
    family = _FAMILIES.get(name)
    if family is None:
        raise UnknownFamilyError(f"model family {name!r} is not supported; choose one of {', '.join(renderer_names())}")
    return family


def is_refiner(name: str | None) -> bool:
    family = find_family(name)
    return family is not None and not family.renders


def family_for_pipeline_class(class_name: str) -> Family | None:
    """The family whose folders are saved as diffusers ``class_name`` (model_index.json's "_class_name")."""
    return next((f for f in _FAMILIES.values() if f.pipeline_class == class_name), None)


def detect_family(model_index: dict[str, Any]) -> str | None:
    """The family of a diffusers folder from its parsed model_index.json, or None."""
    family = family_for_pipeline_class(str(model_index.get("_class_name", "")))
    return family.name if family is not None else None


def pipeline_family(pipe) -> str:
    """The family name of a loaded pipeline object (diffusers imported here)."""
    import diffusers

    for family in _FAMILIES.values():
        if isinstance(pipe, getattr(diffusers, family.pipeline_class)):
            return family.name
    raise ValueError(f"pipeline class {type(pipe).__name__} belongs to no supported family")


def families_with(extra: str) -> tuple[str, ...]:
    return tuple(f.name for f in _FAMILIES.values() if f.takes(extra))


# --------------------------------------------------------------------------- samplers by family name


def check_sampler(family: str, sampler: str, schedule: str) -> str | None:
    """None if ``sampler`` with sigma ``schedule`` can render ``family`` here, else why not."""
    found = _FAMILIES.get(family)
    if found is None:
        return f"model family {family!r} is not supported; choose one of {', '.join(renderer_names())}"
    return _samplers.check_sampler(found, sampler, schedule)


def available_samplers(family: str) -> tuple[str, ...]:
    """Sampler names ``family`` can use on this machine (optional packages considered)."""
    found = _FAMILIES.get(family)
    return _samplers.available_samplers(found) if found is not None else ()


def build_scheduler(base_config, sampler: str, schedule: str, *, noise_seed=None, family: str = "sd"):
    """A new scheduler for ``sampler`` / ``schedule`` on ``family`` (see farm.families.samplers.build_scheduler)."""
    found = _FAMILIES.get(family)
    if found is None:
        raise ValueError(f"model family {family!r} is not supported")
    return _samplers.build_scheduler(found, base_config, sampler, schedule, noise_seed=noise_seed)


# --------------------------------------------------------------------------- extras


def check_extras(family: str, *, clip_skip: int | None, freeu: bool, detail_guidance: float | None,
                 inpainting: bool) -> list[tuple[str, str]]:
    """(field, why) for each guidance extra ``family`` cannot use; empty when all can be used."""
    found = _FAMILIES.get(family)
    have = found.extras if found is not None else frozenset()
    problems = []
    if clip_skip is not None and clip_skip > 1 and "clip_skip" not in have:
        problems.append(("clip_skip", f"{family} models have no CLIP text encoder to skip layers of; leave clip_skip out"))
    if freeu and "freeu" not in have:
        problems.append(("freeu", f"FreeU works on UNets ({', '.join(families_with('freeu'))}), not on {family} models"))
    if detail_guidance:
        if "detail_guidance" not in have:
            problems.append(("detail_guidance", f"detail guidance (perturbed attention) is not available for {family} models"))
        elif inpainting and "detail_guidance_inpaint" not in have:
            problems.append(("detail_guidance", f"detail guidance is not available for {family} inpainting or outpainting"))
    return problems


__all__ = [
    "Family",
    "UnknownFamilyError",
    "all_families",
    "available_samplers",
    "build_scheduler",
    "check_extras",
    "check_sampler",
    "detect_family",
    "families_with",
    "family_for_pipeline_class",
    "family_names",
    "find_family",
    "get_family",
    "is_refiner",
    "pipeline_family",
    "refiner_names",
    "renderer_names",
]
