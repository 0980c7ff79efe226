"""The generation request: its shape, its checks, and the parameters resolved
from it.

Checking happens in two steps: :class:`GenerationRequest` checks the shape
(types, ranges, unknown fields refused), then :func:`resolve_request` checks it
against the model registry and the farm's limits and returns the parameters a
worker renders with. Both raise :class:`RequestError` with one entry per field
that needs fixing.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from farm.families import (all_families, check_extras, check_image_mode, check_reference_size, check_references,
                           check_sampler, find_family, is_refiner, reference_pixels, refiner_names)
from farm.families.performance import NOISE_PERFORMANCE, PERFORMANCE_MODES, PerformanceMode  # noqa: F401  (PERFORMANCE_MODES: part of the request vocabulary)
from farm.families.samplers import SAG_SAMPLERS, SAMPLER_NAMES, SIGMA_SCHEDULES
from farm.safejson import UUID_PATTERN, CheckedModel

logger = logging.getLogger(__name__)

SAMPLERS = SAMPLER_NAMES
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_SEED = 2**32 - 1
# Request defaults where no size is given, whatever the family.
DEFAULT_SIDE = 512
# Frames worth offering per family that renders (farm/families declares them:
# the buckets each was trained near, so a form never offers an SDXL frame when
# only SD models are registered).
FAMILY_ASPECT_RATIOS = {f.name: f.aspect_ratios for f in all_families() if f.renders}
#: Families that only finish another model's render (a request's "refiner"),
#: never render on their own.
REFINER_FAMILIES = refiner_names()
_ASPECT = re.compile(r"^\s*(\d{2,5})\s*[*x×]\s*(\d{2,5})\s*$")


@dataclass
class FieldProblem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class RequestError(Exception):
    """A request that cannot be accepted; ``problems`` say what to fix."""

    def __init__(self, problems: list[FieldProblem], status: int = 422) -> None:
        self.problems = problems
        self.status = status
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


class LoraRequest(CheckedModel):
    name: str
    weight: float = Field(default=1.0, ge=-2, le=2)


MAX_LORAS = 5
MAX_IMAGE_PROMPTS = 4


# Standard Webhooks secrets: "whsec_" and the base64 of 24 to 64 random bytes
# (the spec's range); farm makes one of 32 bytes when a client gives none.
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_KEY_BYTES = (24, 64)


class WebhookRequest(CheckedModel):
    """Where a finished job (or campaign) is announced: a Standard Webhooks POST
    to ``url``, signed with ``secret`` (farm generates one when it is left out
    and returns it once, in the submit answer). Adapters pass it as the
    payload's ``webhook`` to the job service. Not part of the job's request as
    recorded in its lineage: the secret must not be readable from an image."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048, description="http(s) URL on a public address (FARM_WEBHOOK_ALLOW admits others)")
    # The check is the validator's (its message says what a secret is); the
    # pattern only documents the shape.
    secret: str | None = Field(default=None, max_length=128, examples=["whsec_2ppd5Ic7oCWqXD9EZu/nsBI0mU35eqXuc9slbEuDqQA="],
                               description="whsec_ then the base64 of 24 to 64 random bytes; generated when absent",
                               json_schema_extra={"pattern": r"^whsec_[A-Za-z0-9+/]+={0,2}$"})

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if webhook_key(value) is None:
            low, high = WEBHOOK_KEY_BYTES
            raise ValueError(f"must be a Standard Webhooks secret: {WEBHOOK_SECRET_PREFIX} then the base64 of {low} to "
                             f"{high} random bytes; leave it out and farm generates one")
        return value


def webhook_key(secret: str) -> bytes | None:
    """The key bytes of a ``whsec_`` secret, or None when it is not one (a
    wrong prefix, not base64, or a key outside WEBHOOK_KEY_BYTES)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return None
    body = secret[len(WEBHOOK_SECRET_PREFIX):]
    try:
        # Unpadded base64 is accepted, as Standard Webhooks libraries accept it.
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if WEBHOOK_KEY_BYTES[0] <= len(key) <= WEBHOOK_KEY_BYTES[1] else None


class StoredImageRequest(CheckedModel):
    """An image the farm already holds: one of ``image`` (an upload id) or
    ``parent_output`` (an output id), readable by the requester."""

    image: str | None = None  # an upload id
    parent_output: str | None = None  # or an output id


class ImagePromptRequest(StoredImageRequest):
    """An image prompt: a reference steering the render through the family's IP-Adapter."""


class ReferenceRequest(StoredImageRequest):
    """A reference image the model conditions on directly (FLUX.2's multi-reference)."""


# Upper bounds of the request's shape; the farm's own, lower limits
# (FARM_MAX_STEPS, FARM_MAX_IMAGES_PER_JOB, a family's sides) are checked when
# the request is resolved.
SHAPE_MAX_SIDE = 16384
SHAPE_MAX_STEPS = 1000
SHAPE_MAX_IMAGES = 1000
# The most references any family takes (FLUX.2 [dev]: 10); each family's own
# limit is checked when the request is resolved.
SHAPE_MAX_REFERENCES = 10


class GenerationRequest(CheckedModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    variant: str | None = None  # with model naming a base: which of its variants
    styles: list[str] = Field(default_factory=list)
    preset: str | None = None
    performance: Literal["quality", "speed", "extreme_speed", "lightning"] | None = None
    width: int | None = Field(default=None, gt=0, le=SHAPE_MAX_SIDE)
    height: int | None = Field(default=None, gt=0, le=SHAPE_MAX_SIDE)
    aspect_ratio: str | None = None
    steps: int | None = Field(default=None, ge=1, le=SHAPE_MAX_STEPS)
    guidance_scale: float | None = Field(default=None, ge=0, le=30)
    sampler: Literal[SAMPLERS] = "euler"  # type: ignore[valid-type]
    scheduler: Literal[SIGMA_SCHEDULES] = "normal"  # type: ignore[valid-type]
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1, le=SHAPE_MAX_IMAGES)
    same_seed: bool = False  # every image of the job with the seed itself (default: seed, seed + 1, ...)
    prompt_expansion: bool = False
    output_format: Literal["png", "jpeg", "webp"] = "png"
    # Guidance extras: CLIP skip (1 = last layer), FreeU, and detail guidance
    # (perturbed-attention guidance scale, 0 = off).
    loras: list[LoraRequest] = Field(default_factory=list, max_length=MAX_LORAS)
    # Image prompts: reference images steering the result through the
    # family's IP-Adapter, all at one weight.
    image_prompts: list[ImagePromptRequest] = Field(default_factory=list, max_length=MAX_IMAGE_PROMPTS)
    image_prompt_weight: float = Field(default=0.6, ge=0, le=2)
    # References: images the model itself conditions on (multi-reference
    # families such as FLUX.2); the prompt says what to make of them, an
    # edit of one or a combination of several.
    references: list[ReferenceRequest] = Field(
        default_factory=list, max_length=SHAPE_MAX_REFERENCES,
        description="reference images, each an upload ({\"image\": UPLOAD_ID}) or an output ({\"parent_output\": "
                    "OUTPUT_ID}) you may read; only for families that take references, up to the model's limit")
    # SDXL refiner: a registered sdxl_refiner model that denoises the last
    # part of the schedule (from refiner_switch, a fraction of it).
    refiner: str | None = None
    refiner_switch: float | None = Field(default=None, gt=0, lt=1)
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    freeu: bool = False
    detail_guidance: float | None = Field(default=None, ge=0, le=10)
    # Self-attention guidance scale (SD 1.5, text to image; 0 = off). The
    # SAG paper and diffusers default to 0.75; past 3 images fall apart.
    sag_scale: float | None = Field(default=None, ge=0, le=3)
    priority: int = Field(default=0, ge=-10, le=10)
    # Image to image: a mode and a source (one of parent_output or image, an
    # upload id from POST /api/v1/uploads); inpaint also takes a mask upload
    # (white = repaint); outpaint the directions to extend in. "edit" (on an
    # editing family) takes the prompt as an instruction for the source.
    image_mode: Literal["vary_subtle", "vary_strong", "upscale_1.5x", "upscale_2x", "inpaint", "outpaint", "edit"] | None = None
    parent_output: str | None = None
    image: str | None = None
    mask: str | None = None
    outpaint: list[Literal["left", "right", "top", "bottom"]] | None = None
    denoise: float | None = Field(default=None, gt=0, le=1)
    # Announce the job's end (succeeded, failed or canceled) to a URL, once, signed.
    webhook: WebhookRequest | None = None
    # When the image is due: the scheduler weighs the slack left (issue 23).
    deadline: dt.datetime | None = Field(default=None, description="when the job is due, ISO 8601 with a time zone "
                                         "(e.g. 2026-12-01T18:00:00Z), in the future")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


@dataclass(frozen=True)
class ModelInfo:
    """What request checking needs to know of a registered model."""

    id: str
    family: str
    default_steps: int
    default_guidance: float
    base: str | None = None  # the model this entry is a variant of
    variant: str | None = None
    quantized: str | None = None  # its quantization format (farm/quantization.py); None: plain weights


@dataclass(frozen=True)
class SourceImage:
    """The image an image-to-image request works on, as the job service found it."""

    object_key: str
    width: int
    height: int
    parent_output: str | None = None  # output id, when the source is an output
    upload: str | None = None  # upload id, when it was uploaded


@dataclass
class ResolvedRequest:
    request: dict[str, Any]
    params: dict[str, Any]
    model_id: str
    width: int
    height: int
    steps: int
    seed: int
    num_images: int
    priority: int
    extra: dict[str, Any] = field(default_factory=dict)


def deadline_problem(deadline: dt.datetime | None, now: dt.datetime, field: str = "deadline") -> FieldProblem | None:
    """What is wrong with a deadline (a job's or a campaign's), if anything: it needs a time zone and a future time."""
    if deadline is None:
        return None
    if deadline.tzinfo is None:
        return FieldProblem(field, "include a time zone, e.g. 2026-12-01T18:00:00Z")
    if deadline <= now:
        return FieldProblem(field, f"is in the past ({deadline.isoformat()}); give a time after {now.isoformat()}")
    return None


def parse_request(payload: Any) -> GenerationRequest:
    if not isinstance(payload, dict):
        raise RequestError([FieldProblem("body", "the body must be a JSON object with at least a 'prompt'")])
    try:
        return GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        raise RequestError(problems_from_validation(exc)) from None


def problems_from_validation(exc: ValidationError, prefix: str = "") -> list[FieldProblem]:
    """One problem per field pydantic refused, named by its dotted path."""
    return [_problem_from_pydantic(error, prefix) for error in exc.errors()]


def _problem_from_pydantic(error: dict[str, Any], prefix: str = "") -> FieldProblem:
    name = prefix + ".".join(str(part) for part in error.get("loc", ())) or "body"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return FieldProblem(name, "unknown field; remove it (see the generation request in the API docs)")
    if kind == "missing":
        return FieldProblem(name, "this field is required")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    ctx = error.get("ctx", {})
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == UUID_PATTERN:
        message = "must be an id of the form 0b7c5a9e-4a1f-4d1e-9a51-3f3c2a1b0c9d"
    elif kind == "string_too_short":
        message = "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    elif kind == "string_too_long":
        message = f"must be at most {ctx.get('max_length')} characters"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        message = "must be an integer"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"unknown value {error.get('input')!r}; expected one of {expected}"
    return FieldProblem(name, message)


def resolve_request(
    req: GenerationRequest,
    models: dict[str, ModelInfo],
    settings,
    default_model: str | None = None,
    resources=None,
    source: SourceImage | None = None,
    mask: SourceImage | None = None,
    loras: dict | None = None,
    image_prompts: list[SourceImage] | None = None,
    references: list[SourceImage] | None = None,
) -> ResolvedRequest:
    problems: list[FieldProblem] = []
    # The webhook is delivery, not rendering, and carries a secret: not recorded with the request.
    # The deadline is scheduling, kept on the job row (Job.deadline), not rendering.
    submitted = req.model_dump(exclude_unset=True, exclude={"webhook", "deadline"})
    if req.preset:
        if resources is None:
            from farm.generation.resources import generation_resources

            resources = generation_resources(settings)
        req = _with_preset(req, models, resources, problems)
    for name, value in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
        if len(value) > settings.max_prompt_chars:
            problems.append(FieldProblem(name, f"is {len(value)} characters; the limit is {settings.max_prompt_chars}"))

    renderers = sorted(m.id for m in models.values() if not is_refiner(m.family))
    model_id = req.model or default_model or default_model_id(models, settings)
    model = models.get(model_id) if model_id else None
    if req.variant is not None or (model is None and model_id is not None):
        model = _pick_variant(models, model_id, req.variant, problems)
        if model is not None:
            model_id = model.id
    if model is None and not any(p.field in ("model", "variant") for p in problems):
        known = ", ".join(renderers) or "none registered (farm models add ...)"
        problems.append(FieldProblem("model", f"unknown model {model_id!r}; available: {known}"))
    if model is not None and is_refiner(model.family):
        finishes = find_family(model.family).refines
        problems.append(FieldProblem("model", f"{model.id} is a refiner, which only finishes renders: ask for a "
                                              f"model of family {finishes} and name {model.id} as \"refiner\""))
        model = None

    # Fields of the contract whose features are not built yet are refused
    # rather than silently ignored.
    image_task = _image_task(req, source, mask, problems)
    if model is not None:
        why = check_image_mode(model.family, req.image_mode)
        if why:
            problems.append(FieldProblem("image_mode", f"{model.id}: {why}"))

    if image_task is not None and source is not None and model is not None:
        from farm.generation.image_tasks import output_size

        # The size follows from the source and the mode.
        family = find_family(model.family)
        width, height = output_size(req.image_mode, source.width, source.height,
                                    side_multiple(model.family), tuple(image_task["outpaint"] or ()),
                                    edit_pixels=family.native_pixels if family is not None else None)
    else:
        width, height = _resolve_size(req, problems)
    if model is not None and width and height:
        low, high = side_range(model.family)
        multiple = side_multiple(model.family)
        for name, side in (("width", width), ("height", height)):
            if not low <= side <= high:
                problems.append(FieldProblem(name, f"{side} is outside {low}..{high} for {model.family} models"))
            elif side % multiple:
                problems.append(FieldProblem(name, f"{side} is not a multiple of {multiple}, which {model.family} models need"))
    if width and height and width * height > settings.max_pixels:
        problems.append(FieldProblem("width", f"{width}x{height} is {width * height} pixels; the limit is {settings.max_pixels}"))

    # A performance mode fills steps, sampler, schedule and guidance; fields
    # the request sets itself win.
    mode = performance_modes(model.family if model is not None else None).get(req.performance) if req.performance else None
    explicit = req.model_fields_set
    sampler = req.sampler if mode is None or "sampler" in explicit else mode.sampler
    if req.sag_scale and "sampler" not in explicit and sampler not in SAG_SAMPLERS:
        # Self-attention guidance needs a sampler on integer timesteps: one the request did not choose is one
        # that does (a request that names another is told why, below).
        sampler = SAG_SAMPLERS[0]
    schedule = req.scheduler if mode is None or "scheduler" in explicit else mode.scheduler
    default_steps = model.default_steps if model else 20
    if mode is not None and req.steps is None:
        default_steps = mode.steps if mode.steps is not None else max(1, round(default_steps * mode.steps_factor))
    steps = req.steps or default_steps
    if steps > settings.max_steps:
        problems.append(FieldProblem("steps", f"{steps} steps; the limit is {settings.max_steps}"))
    if req.num_images > settings.max_images_per_job:
        problems.append(FieldProblem("num_images", f"{req.num_images} images; one job makes at most {settings.max_images_per_job}"))
    if model is not None:
        message = check_sampler(model.family, sampler, schedule)
        if message:
            problems.append(FieldProblem("sampler", message))
        inpainting = req.image_mode in ("inpaint", "outpaint")
        problems.extend(FieldProblem(name, why) for name, why in check_extras(
            model.family, clip_skip=req.clip_skip, freeu=req.freeu, detail_guidance=req.detail_guidance,
            inpainting=inpainting, sag_scale=req.sag_scale, sampler=sampler, image_input=req.image_mode is not None,
            image_prompts=bool(req.image_prompts)))
    refiner = _resolve_refiner(req, model, models, image_task, problems)
    chosen_loras = _resolve_loras(req, model, loras or {}, settings, problems) if model is not None else []
    if req.image_prompts and model is not None:
        if model.family not in settings.ip_adapters:
            configured = ", ".join(sorted(settings.ip_adapters)) or "none"
            problems.append(FieldProblem("image_prompts", f"image prompts need an IP-Adapter for {model.family} models; this farm has one for: {configured} (FARM_IP_ADAPTERS)"))
        elif image_prompts is None or len(image_prompts) != len(req.image_prompts):
            problems.append(FieldProblem("image_prompts", "image prompts are submitted one job at a time through POST /api/v1/jobs"))
    if req.references and model is not None:
        _check_references(req, model, references, problems)
    from farm.generation.wildcards import has_wildcards

    uses_wildcards = has_wildcards(req.prompt) or has_wildcards(req.negative_prompt)
    if uses_wildcards:
        if resources is None:
            from farm.generation.resources import generation_resources

            resources = generation_resources(settings)
        problems.extend(_unknown_wildcards(req, resources.wildcards))
    if problems:
        raise RequestError(problems)

    assert model is not None
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
    final_prompt, final_negative, styles = req.prompt, req.negative_prompt, []
    wildcard_images: list[dict[str, Any]] = []
    if uses_wildcards:
        wildcard_images, styles = _wildcard_images(req, seed, resources)
        final_prompt, final_negative = wildcard_images[0]["final_prompt"], wildcard_images[0]["final_negative_prompt"]
    elif req.styles or req.prompt_expansion:
        if resources is None:
            from farm.generation.resources import generation_resources

            resources = generation_resources(settings)
        final_prompt, final_negative, styles = _styled_and_expanded(req, req.prompt, req.negative_prompt, seed, resources)
    guidance = req.guidance_scale if req.guidance_scale is not None else (
        mode.guidance_scale if mode is not None and mode.guidance_scale is not None else model.default_guidance)
    params = {
        "model": model.id,
        "variant": model.variant,
        "family": model.family,
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        # After preset, styles and prompt expansion: what the encoder sees.
        "final_prompt": final_prompt,
        "final_negative_prompt": final_negative,
        "styles": styles,
        "preset": req.preset,
        "prompt_expansion": req.prompt_expansion,
        "width": width,
        "height": height,
        "steps": steps,
        "guidance_scale": guidance,
        "sampler": sampler,
        "scheduler": schedule,
        "performance": req.performance,
        "seed": seed,
        "num_images": req.num_images,
        "output_format": req.output_format,
    }
    if req.same_seed:
        params["same_seed"] = True
    if wildcard_images:
        # Each image draws its wildcards from its own seed; final_prompt above is image 0's.
        params["wildcard_images"] = wildcard_images
    if req.prompt_expansion:
        params["prompt_expansion_engine"] = settings.prompt_expansion_engine
        if settings.prompt_expansion_engine == "lm":
            params["prompt_expansion_model"] = settings.prompt_expansion_model
    if image_task is not None:
        params["image_task"] = image_task
    # Recorded only when used, so the embedded metadata of plain renders stays as it was.
    for name in ("clip_skip", "detail_guidance", "sag_scale"):
        if getattr(req, name):
            params[name] = getattr(req, name)
    if req.freeu:
        params["freeu"] = True
    if chosen_loras:
        params["loras"] = chosen_loras
    if refiner is not None:
        params["refiner"] = refiner
    if req.image_prompts and image_prompts:
        params["image_prompts"] = {
            "adapter": settings.ip_adapters[model.family],
            "weight": req.image_prompt_weight,
            "images": [{"key": p.object_key, "parent_output": p.parent_output, "upload": p.upload} for p in image_prompts],
        }
    if req.references and references:
        params["references"] = [{"key": r.object_key, "parent_output": r.parent_output, "upload": r.upload,
                                 "width": r.width, "height": r.height} for r in references]
        # What the scheduler adds to the job's working memory (farm.scheduler.policy).
        params["reference_pixels"] = reference_pixels(model.family, [(r.width, r.height) for r in references])
    return ResolvedRequest(
        request=submitted,
        params=params,
        model_id=model.id,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        num_images=req.num_images,
        priority=req.priority,
    )


def default_model_id(models: dict[str, ModelInfo], settings) -> str | None:
    """The model a request that names none renders with: FARM_DEFAULT_MODEL, else the first registered renderer."""
    renderers = sorted(m.id for m in models.values() if not is_refiner(m.family))
    return settings.default_model or (renderers[0] if renderers else None)


def _check_references(req: GenerationRequest, model: ModelInfo, references: list[SourceImage] | None,
                      problems: list[FieldProblem]) -> None:
    """The model's family takes this many references, and the job service found each."""
    problem = check_references(model.family, len(req.references))
    if problem:
        problems.append(FieldProblem("references", problem))
    elif req.image_mode is not None:
        problems.append(FieldProblem("references", "references guide a new render; leave image_mode out and say in "
                                                   "the prompt what to change or combine"))
    elif references is None or len(references) != len(req.references):
        problems.append(FieldProblem("references", "references are submitted one job at a time through POST /api/v1/jobs"))
    else:
        for index, reference in enumerate(references):
            problem = check_reference_size(model.family, reference.width, reference.height)
            if problem:
                problems.append(FieldProblem(f"references.{index}", problem))


DEFAULT_REFINER_SWITCH = 0.8


def _resolve_refiner(req: GenerationRequest, model: ModelInfo | None, models: dict[str, ModelInfo],
                     image_task: dict | None, problems: list[FieldProblem]) -> dict[str, Any] | None:
    """The job's refiner ({"model", "switch"}), checked; None without one."""
    if req.refiner is None:
        if req.refiner_switch is not None:
            problems.append(FieldProblem("refiner_switch", "is the point a refiner takes over; name the \"refiner\" too"))
        return None
    refiners = ", ".join(sorted(m.id for m in models.values() if is_refiner(m.family))) or "none registered"
    entry = models.get(req.refiner)
    if entry is None:
        problems.append(FieldProblem("refiner", f"unknown refiner {req.refiner!r}; refiners: {refiners}"))
        return None
    if not is_refiner(entry.family):
        problems.append(FieldProblem("refiner", f"{entry.id} is a {entry.family} model, not a refiner; refiners: {refiners}"))
        return None
    finishes = find_family(entry.family).refines
    if model is not None and model.family != finishes:
        problems.append(FieldProblem("refiner", f"a refiner finishes {finishes} renders; {model.id} is a {model.family} model"))
        return None
    if image_task is not None:
        problems.append(FieldProblem("refiner", "a refiner finishes text-to-image renders; leave it out with image_mode"))
        return None
    switch = req.refiner_switch if req.refiner_switch is not None else DEFAULT_REFINER_SWITCH
    return {"model": entry.id, "switch": switch}


def _resolve_loras(req: GenerationRequest, model: ModelInfo, loras: dict, settings,
                   problems: list[FieldProblem]) -> list[dict[str, Any]]:
    """The LoRAs the job applies (the request's, then the performance mode's accelerator), checked."""
    chosen: list[dict[str, Any]] = []
    wanted = [(f"loras.{i}.name", item.name, item.weight, False) for i, item in enumerate(req.loras)]
    accelerator = settings.accelerator_loras.get(model.family, {}).get(req.performance or "")
    if accelerator and accelerator not in {item.name for item in req.loras}:
        wanted.append(("performance", accelerator, 1.0, True))
    seen: set[str] = set()
    for where, name, weight, is_accelerator in wanted:
        info = loras.get(name)
        if info is None:
            known = ", ".join(sorted(n for n, i in loras.items() if i.family == model.family)) or "none registered (farm loras add ...)"
            what = f"the accelerator LoRA {name!r} configured for {model.family} {req.performance} is not registered" \
                if is_accelerator else f"unknown LoRA {name!r}; {model.family} LoRAs: {known}"
            problems.append(FieldProblem(where, what))
            continue
        if info.family != model.family:
            problems.append(FieldProblem(where, f"LoRA {name!r} is for {info.family} models, not {model.family} ({model.id})"))
            continue
        if name in seen:
            problems.append(FieldProblem(where, f"LoRA {name!r} is listed twice"))
            continue
        seen.add(name)
        chosen.append({"name": name, "weight": weight, "sha256": info.weights_sha256, "source": info.source,
                       "file": info.weights_file, "accelerator": is_accelerator})
    return chosen


def _pick_variant(models: dict[str, ModelInfo], name: str | None, variant: str | None,
                  problems: list[FieldProblem]) -> ModelInfo | None:
    """The entry a (model, variant) pair names: ``name`` is a base (or a variant's id) and
    ``variant`` one of its variants; a bare base name picks its only variant. A
    quantized variant renders differently, so a bare base name never picks one:
    it is named (its id, or its variant) or not used."""
    if name is None:
        return None
    base = models[name].base if name in models and models[name].base else name
    family = [m for m in models.values() if m.base == base]
    if not family:
        if variant is not None:
            problems.append(FieldProblem("variant", f"model {name!r} has no variants; leave variant out"))
        return None
    names = ", ".join(sorted(m.variant for m in family if m.variant))
    if variant is None:
        plain = [m for m in family if m.quantized is None]
        if len(plain) == 1:
            return plain[0]
        if not plain:
            problems.append(FieldProblem("model", f"{base} is registered only as quantized variants ({names}), which "
                                                  "render differently from its full weights; name one with variant "
                                                  "or by its model id"))
            return None
        problems.append(FieldProblem("variant", f"{base} has variants {names}; pick one with variant (or name a model id)"))
        return None
    match = next((m for m in family if m.variant == variant), None)
    if match is None:
        problems.append(FieldProblem("variant", f"{base} has no variant {variant!r}; choose one of {names}"))
    return match


def _image_task(req: GenerationRequest, source: SourceImage | None, mask: SourceImage | None,
                problems: list[FieldProblem]) -> dict[str, Any] | None:
    """The image-to-image part of the params, or None for text to image; problems noted."""
    from farm.generation.image_tasks import IMAGE_MODES, OUTPAINT_DIRECTIONS

    if req.image_mode is None:
        for name in ("parent_output", "image", "mask", "outpaint", "denoise"):
            if getattr(req, name) is not None:
                problems.append(FieldProblem(name, f"only used with image_mode; set image_mode ({', '.join(IMAGE_MODES)}) or leave {name} out"))
        return None
    mode = IMAGE_MODES[req.image_mode]
    if (req.parent_output is None) == (req.image is None):
        problems.append(FieldProblem("parent_output", f"image_mode {req.image_mode!r} needs a source: give parent_output (an output id) or image (an upload id), one of them"))
    for name in ("width", "height", "aspect_ratio"):
        if getattr(req, name) is not None:
            problems.append(FieldProblem(name, f"the size of an {req.image_mode} image follows from its source; leave {name} out"))
    if mode.needs_mask and req.mask is None:
        problems.append(FieldProblem("mask", "inpaint needs a mask: an upload id of an image whose white parts are repainted"))
    if not mode.needs_mask and req.mask is not None:
        problems.append(FieldProblem("mask", f"only inpaint takes a mask, not {req.image_mode}"))
    if req.image_mode == "edit" and req.denoise is not None:
        problems.append(FieldProblem("denoise", "an edit renders the whole image from the instruction and has no "
                                                "denoising strength; leave denoise out"))
    if req.outpaint is not None and req.image_mode != "outpaint":
        problems.append(FieldProblem("outpaint", f"only image_mode 'outpaint' takes directions, not {req.image_mode}"))
    if req.image_mode == "outpaint" and req.outpaint is not None and not req.outpaint:
        problems.append(FieldProblem("outpaint", f"give at least one direction of {', '.join(OUTPAINT_DIRECTIONS)}"))
    if source is None or (mode.needs_mask and req.mask is not None and mask is None):
        # The job service looks sources up and refuses missing ones before
        # resolving; anything else (a campaign row, say) cannot use them.
        if not any(p.field in ("parent_output", "image", "mask") for p in problems):
            problems.append(FieldProblem("image_mode", "image-to-image requests are submitted one by one through POST /api/v1/jobs"))
        return None
    directions = None
    if req.image_mode == "outpaint":
        directions = [d for d in OUTPAINT_DIRECTIONS if d in (req.outpaint or OUTPAINT_DIRECTIONS)]
    return {
        "mode": req.image_mode,
        "strength": req.denoise if req.denoise is not None else mode.strength,
        "source_key": source.object_key,
        "source_size": [source.width, source.height],
        "parent_output": source.parent_output,
        "upload": source.upload,
        "mask_key": mask.object_key if mask is not None else None,
        "mask_upload": mask.upload if mask is not None else None,
        "outpaint": directions,
    }


def _with_preset(req: GenerationRequest, models: dict[str, ModelInfo], resources, problems: list[FieldProblem]) -> GenerationRequest:
    """The request with the fields it left unset taken from its preset."""
    from farm.generation.presets import PresetError, apply_preset

    try:
        preset = resources.presets.get(req.preset)
    except PresetError as exc:
        problems.append(FieldProblem("preset", str(exc)))
        return req

    def model_for_family(family: str) -> str | None:
        return next((m for m in sorted(models) if models[m].family == family), None)

    merged = apply_preset(preset, req.model_dump(exclude_unset=True), model_for_family=model_for_family)
    try:
        return GenerationRequest.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_problem_from_pydantic(e) for e in exc.errors())
        return req


def image_seed(seed: int, index: int, same_seed: bool = False) -> int:
    """The seed of image ``index`` of a job: the job's seed plus the index, or the job's seed for every image."""
    return seed if same_seed else (seed + index) % 2**64


def _unknown_wildcards(req: GenerationRequest, library) -> list[FieldProblem]:
    from farm.generation.wildcards import unknown_wildcard

    return [FieldProblem(name, str(unknown_wildcard(unknown, library.names())))
            for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt))
            for unknown in library.unknown_names(text)]


def _wildcard_images(req: GenerationRequest, seed: int, resources) -> tuple[list[dict[str, Any]], list[str]]:
    """Per image: its seed, its wildcards' choices and the prompts that follow (then styles and
    expansion, as for any prompt); and the styles applied, the same for every image."""
    from farm.generation.wildcards import WildcardError, expand_wildcards

    images: list[dict[str, Any]] = []
    styled: dict[tuple[str, str], tuple[str, str, list[str]]] = {}  # same_seed: every image alike
    styles: list[str] = []
    for index in range(req.num_images):
        this_seed = image_seed(seed, index, req.same_seed)
        try:
            prompt = expand_wildcards(resources.wildcards, req.prompt, this_seed, "prompt")
            negative = expand_wildcards(resources.wildcards, req.negative_prompt, this_seed, "negative_prompt")
        except WildcardError as exc:
            raise RequestError([FieldProblem("prompt", str(exc))]) from None
        key = (prompt.text, negative.text)
        if key not in styled:
            styled[key] = _styled_and_expanded(req, prompt.text, negative.text, seed, resources)
        final_prompt, final_negative, styles = styled[key]
        images.append({"seed": this_seed, "final_prompt": final_prompt, "final_negative_prompt": final_negative,
                       "wildcards": prompt.choices + negative.choices})
    return images, styles


def _styled_and_expanded(req: GenerationRequest, prompt: str, negative: str, seed: int,
                         resources) -> tuple[str, str, list[str]]:
    from farm.generation.expansion import ExpansionError
    from farm.generation.styles import StyleError, apply_styles

    styles: list[str] = []
    if req.styles:
        try:
            prompt, negative, styles = apply_styles(resources.styles, prompt, negative, req.styles, seed)
        except StyleError as exc:
            raise RequestError([FieldProblem("styles", str(exc))]) from None
    if req.prompt_expansion:
        try:
            prompt = resources.expander().expand(prompt, seed)
        except ExpansionError as exc:
            raise RequestError([FieldProblem("prompt_expansion", str(exc))]) from None
    return prompt, negative, styles


def _resolve_size(req: GenerationRequest, problems: list[FieldProblem]) -> tuple[int, int]:
    if req.aspect_ratio is not None:
        if req.width is not None or req.height is not None:
            problems.append(FieldProblem("aspect_ratio", "give either aspect_ratio or width and height, not both"))
            return 0, 0
        match = _ASPECT.match(req.aspect_ratio)
        if not match:
            problems.append(FieldProblem("aspect_ratio", f"{req.aspect_ratio!r} is not like '1152*896'"))
            return 0, 0
        width, height = int(match.group(1)), int(match.group(2))
        name_w = name_h = "aspect_ratio"
    else:
        if (req.width is None) != (req.height is None):
            problems.append(FieldProblem("width" if req.width is None else "height", "give both width and height, or neither"))
            return 0, 0
        width, height = req.width or DEFAULT_SIDE, req.height or DEFAULT_SIDE
        name_w, name_h = "width", "height"
    ok = True
    for name, side in ((name_w, width), (name_h, height)):
        if side % 8:
            problems.append(FieldProblem(name, f"{side} is not a multiple of 8"))
            ok = False
    return (width, height) if ok else (0, 0)


def side_range(family: str) -> tuple[int, int]:
    """The smallest and largest side ``family`` takes (64..2048 for a family the registry does not know)."""
    found = find_family(family)
    return found.side_range if found is not None else (64, 2048)


def side_multiple(family: str) -> int:
    """The multiple ``family``'s sides must be (8 for a family the registry does not know)."""
    found = find_family(family)
    return found.side_multiple if found is not None else 8


def performance_modes(family: str | None) -> dict[str, PerformanceMode]:
    """What each performance mode stands for on ``family`` (the noise-prediction table when unknown)."""
    found = find_family(family)
    return dict(found.performance) if found is not None else dict(NOISE_PERFORMANCE)
