"""Model families as plug-ins: one module per family, collected here.

Each module (``sd.py``, ``sdxl.py``, ...) declares one :class:`Family`; this
registry is what the request check, the model registry, the scheduler and the
worker ask about a family. Importing it loads neither torch nor diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

from farm.families import flux, flux2, flux2_klein, flux_kontext, qwen_image, qwen_image_edit, sd, sd3, sdxl, sdxl_refiner
from farm.families.family import Family
from farm.families import samplers as _samplers

logger = logging.getLogger(__name__)

# Registration order is the order names are listed in (help texts, messages).
_MODULES = (sd, sdxl, flux, sd3, flux2, flux2_klein, flux_kontext, qwen_image, qwen_image_edit, sdxl_refiner)
_FAMILIES: dict[str, Family] = {module.FAMILY.name: module.FAMILY for module in _MODULES}


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


def editing_names() -> tuple[str, ...]:
    """Families that edit a source image from an instruction (image_mode "edit")."""
    return tuple(f.name for f in _FAMILIES.values() if f.edits)


def check_image_mode(family: str, image_mode: str | None) -> str | None:
    """None if ``family`` can render a request with ``image_mode`` (None: text to image), else why not."""
    found = _FAMILIES.get(family)
    if found is None:
        return None  # the model check names an unknown family
    if image_mode == "edit":
        if not found.edits:
            return (f"{found.title} models do not edit from instructions; the families that do: "
                    f"{', '.join(editing_names()) or 'none'}")
    elif image_mode is not None:
        if not found.image_to_image:
            return (f"{found.title} models do not take image_mode {image_mode!r}"
                    f"{'; use image_mode edit with an instruction as the prompt' if found.edits else ''}")
    elif not found.text_to_image:
        return f"{found.title} models edit an image: set image_mode 'edit' with parent_output or image as the source"
    return None


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


def sampler_resumable(family: str | None, sampler: str | None) -> bool:
    """Whether a render of ``family`` with ``sampler`` can stop at a step and continue later to the same bytes."""
    found = _FAMILIES.get(family) if family else None
    return found is not None and sampler is not None and _samplers.is_resumable(found, sampler)


def build_scheduler(base_config, sampler: str, schedule: str, *, noise_seed=None, family: str = "sd"):
    """A new scheduler for ``sampler`` / ``schedule`` on ``family`` (see farm.families.samplers.build_scheduler)."""
    found = _FAMILIES.get(family)
    if found is None:
        raise ValueError(f"model family {family!r} is not supported")
    return _samplers.build_scheduler(found, base_config, sampler, schedule, noise_seed=noise_seed)


# --------------------------------------------------------------------------- extras


def reference_families() -> tuple[str, ...]:
    """Families whose render call takes reference images."""
    return tuple(f.name for f in _FAMILIES.values() if f.max_references)


def check_references(family: str, count: int) -> str | None:
    """None if ``family`` can condition one render on ``count`` reference images, else why not."""
    found = _FAMILIES.get(family)
    limit = found.max_references if found is not None else 0
    if count and not limit:
        takers = ", ".join(reference_families()) or "none"
        return f"{family} models take no reference images; families that do: {takers}"
    if count > limit:
        return f"{count} reference images; {family} models take at most {limit}"
    return None


def reference_pixels(family: str, sizes) -> int:
    """Pixels the model attends over for references of these (width, height)
    sizes, each as its pipeline shrinks it (the scheduler's working memory)."""
    found = _FAMILIES.get(family)
    cap = found.reference_max_pixels if found is not None else 0
    return sum(min(width * height, cap) for width, height in sizes)


def check_reference_size(family: str, width: int, height: int) -> str | None:
    """None if a ``width`` x ``height`` reference image suits ``family``, else why not."""
    found = _FAMILIES.get(family)
    if found is None or not found.max_references:
        return None  # check_references has said why
    if min(width, height) < found.reference_min_side:
        return f"is {width}x{height}; {family} references need at least {found.reference_min_side} pixels a side"
    if max(width, height) > found.reference_max_aspect * min(width, height):
        return f"is {width}x{height}; {family} references may be at most {found.reference_max_aspect:g} times as long as wide"
    return None


def check_extras(family: str, *, clip_skip: int | None, freeu: bool, detail_guidance: float | None,
                 inpainting: bool, sag_scale: float | None = None, sampler: str | None = None,
                 image_input: bool = False, image_prompts: bool = False) -> list[tuple[str, str]]:
    """(field, why) for each guidance extra ``family`` cannot use; empty when all can be used.

    ``image_input``: the render starts from an image (any image mode);
    ``inpainting``: it repaints under a mask; ``image_prompts``: it uses an IP-Adapter.
    """
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
    if sag_scale:
        problems.extend(_sag_problems(family, have, sampler=sampler, detail_guidance=detail_guidance,
                                      image_input=image_input or inpainting, image_prompts=image_prompts))
    return problems


def _sag_problems(family: str, have: frozenset[str], *, sampler: str | None, detail_guidance: float | None,
                  image_input: bool, image_prompts: bool) -> list[tuple[str, str]]:
    """Why self-attention guidance cannot run as asked: diffusers' SAG pipeline
    is text-to-image only, swaps a UNet attention processor of its own in (so
    it does not stack with perturbed attention or an IP-Adapter), and needs a
    sampler on integer timesteps (``SAG_SAMPLERS``)."""
    if "sag" not in have:
        return [("sag_scale", f"self-attention guidance is available for {', '.join(families_with('sag'))} models, "
                              f"not for {family} models; leave sag_scale out")]
    problems = []
    if image_input:
        problems.append(("sag_scale", "self-attention guidance renders text to image only; leave sag_scale out with image_mode"))
    if detail_guidance:
        problems.append(("sag_scale", "self-attention guidance and detail guidance both replace the UNet's attention; use one of them"))
    if image_prompts:
        problems.append(("sag_scale", "self-attention guidance does not combine with image prompts; leave one of them out"))
    if sampler is not None and sampler not in _samplers.SAG_SAMPLERS:
        problems.append(("sampler", f"self-attention guidance needs a sampler on integer timesteps; choose one of "
                                    f"{', '.join(_samplers.SAG_SAMPLERS)} (not {sampler!r})"))
    return problems


__all__ = [
    "Family",
    "UnknownFamilyError",
    "all_families",
    "available_samplers",
    "build_scheduler",
    "check_extras",
    "check_image_mode",
    "check_reference_size",
    "check_references",
    "check_sampler",
    "detect_family",
    "editing_names",
    "families_with",
    "family_for_pipeline_class",
    "family_names",
    "find_family",
    "get_family",
    "is_refiner",
    "pipeline_family",
    "reference_families",
    "reference_pixels",
    "refiner_names",
    "renderer_names",
    "sampler_resumable",
]
