"""AUTOMATIC1111 / Forge web API under /sdapi/v1 (issue 20), for the clients
that speak it: the ``webuiapi`` package, Open WebUI, SillyTavern and others.

Requests are translated into farm jobs (``interface="a1111"``) through the
job service, so quotas, isolation and lineage hold as on farm's own API.
What the translation decides, and why:

- txt2img and img2img are synchronous, as in A1111: the answer comes when the
  job is final, or after FARM_ADAPTER_WAIT_S with a 504 naming the job, which
  goes on (its images stay in the user's history).
- ``batch_size`` x ``n_iter`` images make one job (seeds seed, seed + 1, ...,
  as A1111 numbers them); ``seed`` -1 is random.
- Fields a client sends that only tune A1111's own machinery (``eta``,
  ``s_churn`` and the other sampler knobs, ``do_not_save_*``, ``save_images``
  — farm keeps every image —, ``inpaint_full_res`` — farm repaints the whole
  frame —, ``mask_blur``, ``hr_*`` while ``enable_hr`` is off, ...) are
  accepted and ignored, as are fields A1111 itself does not know (its
  FastAPI models ignore them too). A value farm cannot honour (hires fix,
  face restoration, tiling, variation seeds, scripts) is refused with 422
  naming the field.
- ``POST /options`` with ``sd_model_checkpoint`` sets the calling user's
  default model (users.default_model), used by this interface's requests
  that name none: A1111 clients treat the checkpoint as the server's state
  and set it before rendering, while farm's own API is stateless and keeps
  FARM_DEFAULT_MODEL, so the setting stays with this interface.
- ``progress`` and ``interrupt`` see only the caller's own jobs of this
  interface: another user's render is neither shown nor stopped.
- Errors come as A1111 answers them: 422 ``{"detail": [{"loc", "msg",
  "type"}]}`` naming A1111's field, anything else ``{"error", "detail",
  "body", "errors"}`` as its API's exception handler writes them, with
  Retry-After on 429 and 503.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import re
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field, RootModel
from sqlalchemy import select, update

import farm
from farm import lineage, states
from farm.api.adapters import common
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.security import farm_context
from farm.api.throttle import ThrottledError
from farm.events import PREVIEW
from farm.generation.wildcards import image_prompts
from farm.models import Job, ModelEntry, User
from farm.safejson import CheckedModel
from farm.families import find_family, is_refiner
from farm.spec import MAX_SEED, FieldProblem, RequestError

logger = logging.getLogger(__name__)
bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")

INTERFACE = "a1111"
SCHEMES = ("bearer", "basic")

# farm sampler -> (A1111 name, A1111's own aliases, the schedule A1111's
# "Automatic" picks for it). Names are A1111's since its 1.9 split of sampler
# and schedule; the older combined names ("DPM++ 2M Karras") still parse.
SAMPLERS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "dpmpp_2m": ("DPM++ 2M", ("k_dpmpp_2m",), "karras"),
    "dpmpp_sde": ("DPM++ SDE", ("k_dpmpp_sde",), "karras"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "exponential"),
    "euler_ancestral": ("Euler a", ("k_euler_a", "k_euler_ancestral"), None),
    "euler": ("Euler", ("k_euler",), None),
    "heun": ("Heun", ("k_heun",), None),
    "lcm": ("LCM", ("k_lcm",), None),
    "ddim": ("DDIM", (), None),
    "unipc": ("UniPC", (), None),
}
# farm schedule -> (A1111 label, A1111's other names for it, default_rho, need_inner_model).
# A1111's "Uniform" spaces the model's own timesteps evenly, which is farm's "normal".
SCHEDULES: dict[str, tuple[str, tuple[str, ...], float, bool]] = {
    "normal": ("Normal", ("uniform",), -1.0, True),
    "karras": ("Karras", (), 7.0, False),
    "exponential": ("Exponential", (), -1.0, False),
    "sgm_uniform": ("SGM Uniform", (), -1.0, True),
}
# farm's field -> the A1111 field a 422 names.
A1111_FIELDS = {
    "guidance_scale": "cfg_scale", "num_images": "batch_size", "sampler": "sampler_name", "denoise": "denoising_strength",
    "image": "init_images", "parent_output": "init_images", "image_mode": "init_images",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers", "refiner": "refiner_checkpoint",
    "refiner_switch": "refiner_switch_at", "aspect_ratio": "width",
}
# resize_mode: 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale).
RESIZE_MODES = (0, 1, 2, 3)
INPAINTING_FILLS = (0, 1, 2, 3)  # fill, original, latent noise, latent nothing


# --------------------------------------------------------------------------- shapes

class A1111ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class A1111Error(BaseModel):
    """A1111's errors: 422 ``{"detail": [...]}`` as FastAPI validates, else its API's
    exception handler's ``{"error", "detail", "body", "errors"}``."""

    detail: str | list[A1111ValidationItem]
    error: str | None = None
    body: str | None = None
    errors: str | None = None


class _A1111Body(CheckedModel):
    # A1111's FastAPI models ignore fields they do not know; so does this interface.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class A1111Txt2Img(_A1111Body):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1: random")
    subseed: int = -1
    subseed_strength: float = Field(default=0.0, ge=0, le=1)
    sampler_name: str | None = None
    sampler_index: str | None = Field(default=None, description="Deprecated name of sampler_name")
    scheduler: str | None = None
    batch_size: int = Field(default=1, ge=1, le=1000)
    n_iter: int = Field(default=1, ge=1, le=1000)
    steps: int = Field(default=50, ge=1, le=1000)
    cfg_scale: float = Field(default=7.0, ge=0, le=30)
    width: int = Field(default=512, ge=1, le=16384)
    height: int = Field(default=512, ge=1, le=16384)
    restore_faces: bool | None = None
    tiling: bool | None = None
    override_settings: dict[str, Any] | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(default=None, ge=0, le=1)
    enable_hr: bool = False
    denoising_strength: float | None = Field(default=None, ge=0, le=1)
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False


class A1111Img2Img(A1111Txt2Img):
    init_images: list[str] = Field(default_factory=list, description="Base64 images (bare or data: URLs); the first is used")
    resize_mode: int = Field(default=0, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize")
    denoising_strength: float = Field(default=0.75, ge=0, le=1)
    mask: str | None = Field(default=None, description="Base64 mask: white is repainted (in an RGBA mask with transparency: the opaque part)")
    inpainting_fill: int = Field(default=0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    latent_mask: str | None = None
    include_init_images: bool = False


class A1111Images(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class A1111ProgressQuery(BaseModel):
    skip_current_image: bool = False


class A1111ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: A1111ProgressState
    current_image: str | None
    textinfo: str | None
    current_task: str | None


class A1111Checkpoint(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class A1111Checkpoints(RootModel[list[A1111Checkpoint]]):
    pass


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class A1111Samplers(RootModel[list[A1111Sampler]]):
    pass


class A1111Schedule(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class A1111Schedules(RootModel[list[A1111Schedule]]):
    pass


class A1111Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None
    sd_checkpoint_hash: str | None
    samples_format: str
    CLIP_stop_at_last_layers: int
    sd_vae: str
    eta_noise_seed_delta: int


class A1111OptionsUpdate(CheckedModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    sd_model_checkpoint: str | None = None


class A1111PngInfoRequest(CheckedModel):
    image: str = Field(description="A base64 PNG (bare or a data: URL)")


class A1111PngInfo(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class A1111Empty(BaseModel):
    pass


# --------------------------------------------------------------------------- errors

def _error(status: int, message: str, headers: dict[str, str] | None = None):
    body = {"error": "HTTPException", "detail": message, "body": "", "errors": f"{status}: {message}"}
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="farm"'
    return response


def _loc(field: str) -> list[str | int]:
    return ["body", *(int(part) if part.isascii() and part.isdigit() else part for part in field.split("."))]


@bp.errorhandler(RequestError)
def _request_error(exc: RequestError):
    if exc.status != 422:
        return _error(exc.status, "; ".join(f"{p.field}: {p.message}" for p in exc.problems))
    detail = [{"loc": _loc(p.field), "msg": p.message, "type": "value_error"} for p in exc.problems]
    return jsonify({"detail": detail}), 422


@bp.errorhandler(ThrottledError)
def _throttled(exc: ThrottledError):
    return _error(429, exc.message, {"Retry-After": str(exc.retry_after_s)})


@bp.errorhandler(Exception)
def _any_error(exc: Exception):
    # Everything else as farm's own handlers judge it (status, message,
    # Retry-After), in A1111's shape.
    native = common.native_error(exc)
    return _error(native.status, native.message, native.headers)


# --------------------------------------------------------------------------- translation

def sampler_names() -> dict[str, str]:
    """Every name a client may send (lower case) -> farm sampler."""
    names = {}
    for sampler, (name, aliases, _) in SAMPLERS.items():
        for alias in (name, sampler, *aliases):
            names[alias.lower()] = sampler
    return names


def schedule_names() -> dict[str, str]:
    names = {}
    for schedule, (label, aliases, _, _) in SCHEDULES.items():
        for alias in (schedule, label, *aliases):
            names[alias.lower()] = schedule
    return names


def parse_sampler(sampler_name: str | None, scheduler: str | None, family: str | None) -> tuple[str | None, str | None]:
    """farm's (sampler, schedule) for A1111's sampler and scheduler names;
    None leaves farm's default. A legacy name ("DPM++ 2M Karras") carries its schedule."""
    samplers, schedules = sampler_names(), schedule_names()
    sampler = schedule = None
    if sampler_name:
        wanted = sampler_name.strip().lower()
        if wanted not in samplers:
            head, _, tail = wanted.rpartition(" ")
            if head in samplers and tail in schedules:
                wanted, schedule = head, schedules[tail]
            else:
                known = ", ".join(name for name, _, _ in SAMPLERS.values())
                raise RequestError([FieldProblem("sampler_name", f"unknown sampler {sampler_name!r}; farm has {known}")])
        sampler = samplers[wanted]
    if scheduler and scheduler.strip().lower() != "automatic":
        wanted = scheduler.strip().lower()
        if wanted not in schedules:
            known = ", ".join(["automatic", *SCHEDULES])
            raise RequestError([FieldProblem("scheduler", f"unknown scheduler {scheduler!r}; farm has {known}")])
        schedule = schedules[wanted]
    elif schedule is None and sampler is not None and not _is_flow(family):
        # What A1111's "Automatic" picks for this sampler; flow sigmas take no
        # Karras or exponential spacing, so flow families keep farm's default.
        schedule = SAMPLERS[sampler][2]
    return sampler, schedule


def _is_flow(family: str | None) -> bool:
    found = find_family(family)
    return found is not None and found.flow


def checkpoint_title(entry: ModelEntry) -> str:
    """A1111's checkpoint title: name and short hash, "v1-5 [6ce0161689]"."""
    return f"{entry.id} [{entry.weights_sha256[:10]}]" if entry.weights_sha256 else entry.id


def find_checkpoint(entries: list[ModelEntry], name: str) -> ModelEntry | None:
    """The model a client's checkpoint name means: an id, a title, a short or full hash
    (webuiapi's util_set_model lower-cases names, so case is a last resort)."""
    wanted = name.strip()
    bare = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", wanted)
    for entry in entries:
        if wanted in (entry.id, checkpoint_title(entry)) or bare == entry.id:
            return entry
        if entry.weights_sha256 and wanted.lower() in (entry.weights_sha256, entry.weights_sha256[:10]):
            return entry
    matches = [entry for entry in entries if entry.id.lower() == bare.lower()]
    return matches[0] if len(matches) == 1 else None


def find_model(entries: list[ModelEntry], model_id: str | None) -> ModelEntry | None:
    return next((entry for entry in entries if entry.id == model_id), None)


def farm_default(entries: list[ModelEntry], settings) -> ModelEntry | None:
    """The model farm renders with when nothing names one (farm.spec.resolve_request's rule)."""
    renderers = [entry for entry in entries if not is_refiner(entry.family)]
    return find_model(entries, settings.default_model) or (renderers[0] if renderers else None)


def _checkpoint(entries: list[ModelEntry], name: str, field: str) -> ModelEntry:
    entry = find_checkpoint(entries, name)
    if entry is None:
        known = ", ".join(checkpoint_title(e) for e in entries) or "none registered"
        raise RequestError([FieldProblem(field, f"unknown checkpoint {name!r}; farm has {known}")])
    return entry


def _refused(body: A1111Txt2Img) -> list[FieldProblem]:
    """Values of A1111 fields farm cannot honour."""
    problems = []
    if body.enable_hr:
        problems.append(FieldProblem("enable_hr", "hires fix is not available on farm; render at the size you want, "
                                                  "or upscale the result with img2img"))
    for name in ("restore_faces", "tiling"):
        if getattr(body, name):
            problems.append(FieldProblem(name, f"{name.replace('_', ' ')} is not available on farm; leave it false"))
    if body.subseed_strength:
        problems.append(FieldProblem("subseed_strength", "variation seeds are not available on farm; leave it 0"))
    if body.script_name:
        problems.append(FieldProblem("script_name", "scripts are not available on farm; leave it out"))
    for name, script in (body.alwayson_scripts or {}).items():
        args = script.get("args") if isinstance(script, dict) else script
        if args not in (None, [], [False]):  # a client's way of saying "off"
            problems.append(FieldProblem(f"alwayson_scripts.{name}", "scripts and extensions are not available on farm; leave it out"))
    vae = (body.override_settings or {}).get("sd_vae")
    if vae not in (None, "", "Automatic", "None"):
        problems.append(FieldProblem("override_settings.sd_vae", "farm renders with each model's own VAE; leave sd_vae out or 'Automatic'"))
    if isinstance(body, A1111Img2Img):
        if len(body.init_images) != 1:
            problems.append(FieldProblem("init_images", f"send one init image (this has {len(body.init_images)}); "
                                                        "farm renders one source per request"))
        if body.resize_mode not in RESIZE_MODES:
            problems.append(FieldProblem("resize_mode", "must be 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3"))
        if body.inpainting_fill not in INPAINTING_FILLS:
            problems.append(FieldProblem("inpainting_fill", "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)"))
        if body.latent_mask:
            problems.append(FieldProblem("latent_mask", "a separate latent mask is not available on farm; leave it out"))
        if body.denoising_strength == 0:
            problems.append(FieldProblem("denoising_strength", "0 changes nothing; give a strength above 0"))
    return problems


def job_payload(body: A1111Txt2Img, entries: list[ModelEntry], default_model: str | None,
                fallback: ModelEntry | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The farm generation request for an A1111 txt2img body (img2img adds its
    image fields), and farm field -> A1111 field for naming problems.
    ``default_model`` is the user's checkpoint; ``fallback`` farm's default."""
    problems = _refused(body)
    if problems:
        raise RequestError(problems)
    names = dict(A1111_FIELDS)
    overrides = body.override_settings or {}
    payload: dict[str, Any] = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "steps": body.steps,
                               "guidance_scale": body.cfg_scale, "num_images": body.batch_size * body.n_iter,
                               "output_format": "png"}
    model = None
    if overrides.get("sd_model_checkpoint"):
        model = _checkpoint(entries, str(overrides["sd_model_checkpoint"]), "override_settings.sd_model_checkpoint")
        names["model"] = "override_settings.sd_model_checkpoint"
    elif default_model is not None:
        model = find_model(entries, default_model)  # passed over once removed
        names["model"] = "sd_model_checkpoint"
    if model is not None:
        payload["model"] = model.id
    family = (model or fallback).family if (model or fallback) is not None else None
    sampler, schedule = parse_sampler(body.sampler_name or body.sampler_index, body.scheduler, family)
    if sampler is not None:
        payload["sampler"] = sampler
    if schedule is not None:
        payload["scheduler"] = schedule
    if body.seed != -1:
        payload["seed"] = body.seed
    if body.styles:
        payload["styles"] = body.styles
    clip_skip = overrides.get("CLIP_stop_at_last_layers")
    if clip_skip not in (None, 1):
        payload["clip_skip"] = clip_skip
    if body.refiner_checkpoint and body.refiner_checkpoint != "None":
        payload["refiner"] = _checkpoint(entries, body.refiner_checkpoint, "refiner_checkpoint").id
        if body.refiner_switch_at is not None:
            payload["refiner_switch"] = body.refiner_switch_at
    if not isinstance(body, A1111Img2Img):
        payload["width"], payload["height"] = body.width, body.height
    return payload, names


def renamed(exc: RequestError, names: dict[str, str]) -> RequestError:
    """A farm RequestError with each field named as the A1111 client sent it."""
    problems = []
    for problem in exc.problems:
        head, _, rest = problem.field.partition(".")
        field = names.get(problem.field) or (names[head] + (f".{rest}" if rest else "") if head in names else problem.field)
        problems.append(FieldProblem(field, problem.message))
    return RequestError(problems, status=exc.status)


# --------------------------------------------------------------------------- img2img pixels

def resize_to(image: PIL.Image.Image, width: int, height: int, mode: int, resample=PIL.Image.LANCZOS) -> PIL.Image.Image:
    """``image`` at width x height the way A1111's resize_mode says."""
    if image.size == (width, height):
        return image
    if mode == 1:  # crop and resize: cover the frame, cut what overflows
        return PIL.ImageOps.fit(image, (width, height), resample)
    if mode == 2:  # resize and fill: fit inside, the margins filled with the image stretched
        fitted = PIL.ImageOps.contain(image, (width, height), resample)
        canvas = image.resize((width, height), resample)
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return canvas
    return image.resize((width, height), resample)  # 0 and 3: just resize


def binary_mask(image: PIL.Image.Image, invert: bool) -> PIL.Image.Image:
    """A1111's mask as farm's (L, white = repaint): an RGBA mask with transparency
    marks by its alpha (what its canvas painted is opaque and repainted), any
    other by its brightness."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        mask = image.getchannel("A").point(lambda value: 255 if value > 128 else 0)
    else:
        mask = image.convert("L").point(lambda value: 255 if value >= 128 else 0)
    return PIL.ImageOps.invert(mask) if invert else mask


def filled(image: PIL.Image.Image, mask: PIL.Image.Image, fill: int) -> PIL.Image.Image:
    """The init image with its masked part prepared as ``inpainting_fill`` asks:
    0 the colours around it, smeared in (a blur that counts only unmasked
    pixels); 3 a flat grey (an empty latent decodes near it); 1 and 2 as it is
    (2 repaints from pure noise through the strength instead)."""
    if fill not in (0, 3):
        return image
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    keep = (np.asarray(mask, dtype=np.float64) < 128).astype(np.float64)
    if fill == 3 or not keep.any():
        target = np.full_like(rgb, 127.0)
    else:
        radius = max(image.size) / 8
        weights = np.asarray(PIL.Image.fromarray((keep * 255).astype(np.uint8)).filter(PIL.ImageFilter.GaussianBlur(radius)),
                             dtype=np.float64) / 255.0
        spread = np.stack([np.asarray(PIL.Image.fromarray((rgb[:, :, c] * keep).astype(np.uint8))
                                      .filter(PIL.ImageFilter.GaussianBlur(radius)), dtype=np.float64) for c in range(3)], -1)
        target = spread / np.maximum(weights[:, :, None], 1e-3)
    out = np.where(keep[:, :, None] > 0, rgb, np.clip(target, 0, 255))
    return PIL.Image.fromarray(out.astype(np.uint8), "RGB")


def _flatten(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, transparent parts on white (A1111's default img2img background)."""
    if image.mode in ("RGBA", "LA", "P"):
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def image_fields(ctx, user: User, body: A1111Img2Img) -> dict[str, Any]:
    """Store the init image (and mask) at the asked size as the user's uploads; the
    request's image fields: image_mode, image, mask, denoise."""
    width, height = body.width, body.height
    problems = [FieldProblem(name, f"{side} is not a multiple of 8") for name, side in (("width", width), ("height", height)) if side % 8]
    if width * height > ctx.settings.max_pixels:
        problems.append(FieldProblem("width", f"{width}x{height} is {width * height} pixels; the limit is {ctx.settings.max_pixels}"))
    if problems:
        raise RequestError(problems)
    fields: dict[str, Any] = {"denoise": body.denoising_strength}
    mask_pixels: list[PIL.Image.Image] = []
    if body.mask:
        def prepare_mask(image: PIL.Image.Image) -> PIL.Image.Image:
            mask = resize_to(binary_mask(image, bool(body.inpainting_mask_invert)), width, height, body.resize_mode,
                             PIL.Image.NEAREST)
            mask_pixels.append(mask)
            return mask

        data = common.decode_base64_image(body.mask, "mask")
        fields["mask"] = common.store_image(ctx, user, data, "mask", prepare=prepare_mask).id
        fields["image_mode"] = "inpaint"
        if body.inpainting_fill == 2:
            fields["denoise"] = 1.0  # latent noise: the masked part starts from noise alone
    else:
        # vary_subtle and vary_strong differ only by their default strength; the
        # one nearer the asked strength names the job in its lineage.
        fields["image_mode"] = "vary_subtle" if body.denoising_strength <= 0.67 else "vary_strong"

    def prepare_image(image: PIL.Image.Image) -> PIL.Image.Image:
        image = resize_to(_flatten(image), width, height, body.resize_mode)
        return filled(image, mask_pixels[0], body.inpainting_fill) if mask_pixels else image

    data = common.decode_base64_image(body.init_images[0], "init_images.0")
    fields["image"] = common.store_image(ctx, user, data, "init_images.0", prepare=prepare_image).id
    return fields


# --------------------------------------------------------------------------- answers

def _job_timestamp(job: Job) -> str:
    when = job.started_at or job.created_at
    return when.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S") if when else ""


def infotext(job: Job, seed: int, index: int = 0) -> str:
    """The 'parameters' text farm writes into image ``index``'s PNG (farm.lineage.parameters_text)."""
    return lineage.parameters_text(lineage.image_params(job.params, seed, index), job.model_id)


def images_answer(ctx, job: Job, body: A1111Txt2Img, entry: ModelEntry | None) -> dict[str, Any]:
    params = job.params
    seeds = [output.seed for output in job.outputs] or [job.seed]
    info = {
        "prompt": params["prompt"], "all_prompts": [image_prompts(params, i)[0] for i in range(len(seeds))],
        "negative_prompt": params["negative_prompt"],
        "all_negative_prompts": [image_prompts(params, i)[1] for i in range(len(seeds))],
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0,
        "width": job.width, "height": job.height, "sampler_name": SAMPLERS[params["sampler"]][0],
        "scheduler": SCHEDULES[params["scheduler"]][0], "cfg_scale": params["guidance_scale"], "steps": job.steps,
        "batch_size": body.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": job.model_id, "sd_model_hash": entry.weights_sha256[:10] if entry and entry.weights_sha256 else None,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": (params.get("image_task") or {}).get("strength", 0),
        "extra_generation_params": {"Schedule type": SCHEDULES[params["scheduler"]][0]},
        "index_of_first_image": 0, "infotexts": [infotext(job, seed, i) for i, seed in enumerate(seeds)],
        "styles": params.get("styles") or [], "job_timestamp": _job_timestamp(job),
        "clip_skip": params.get("clip_skip") or 1, "is_using_inpainting_conditioning": False,
        "version": f"farm {farm.__version__}",
        # farm's own ids: the job and each image's lineage under /api/v1.
        "farm": {"job": str(job.id), "status": job.status, "outputs": [str(output.id) for output in job.outputs]},
    }
    images = [base64.b64encode(common.image_bytes(ctx, output)).decode() for output in job.outputs] if body.send_images else []
    parameters = body.model_dump()
    if isinstance(body, A1111Img2Img) and not body.include_init_images:
        parameters["init_images"], parameters["mask"] = None, None
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


def _render(body: A1111Txt2Img):
    ctx = farm_context()
    with ctx.db.session() as session:
        entries = list(session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars())
        default_model = session.execute(select(User.default_model).where(User.id == g.user.id)).scalar_one_or_none()
    payload, names = job_payload(body, entries, default_model, farm_default(entries, ctx.settings))
    try:
        if isinstance(body, A1111Img2Img):
            payload.update(image_fields(ctx, g.user, body))
        job = common.submit(ctx, g.user, payload, INTERFACE)
    except RequestError as exc:
        raise renamed(exc, names) from None
    (job,) = common.wait_for(ctx, g.user, [job.id], ctx.settings.adapter_wait_s)
    if not states.is_final(job.status):
        raise ApiError(504, f"job {job.id} is still {job.status} after {ctx.settings.adapter_wait_s:g} s (FARM_ADAPTER_WAIT_S); "
                            f"it goes on: GET /api/v1/jobs/{job.id} has its images when it is done")
    if job.status == "failed":
        raise ApiError(500, f"job {job.id} failed: {job.error or 'no reason recorded'}")
    entry = next((e for e in entries if e.id == job.model_id), None)
    return jsonify(images_answer(ctx, job, body, entry))


_RENDER_ANSWERS = {
    200: A1111Images,
    500: Answer(A1111Error, "The job failed on its worker; the message names it and says why"),
    504: Answer(A1111Error, "The job did not finish within FARM_ADAPTER_WAIT_S; it goes on, and the message names it"),
}


@bp.post("/txt2img")
@declare("Text to image (AUTOMATIC1111): waits for the images (base64 PNG) and answers them with A1111's info",
         _RENDER_ANSWERS, body=A1111Txt2Img, schemes=SCHEMES, error_model=A1111Error)
def txt2img(body: A1111Txt2Img):
    return _render(body)


@bp.post("/img2img")
@declare("Image to image and inpainting (AUTOMATIC1111): one base64 init image, an optional mask (white repaints)",
         _RENDER_ANSWERS, body=A1111Img2Img, schemes=SCHEMES, error_model=A1111Error)
def img2img(body: A1111Img2Img):
    return _render(body)


# --------------------------------------------------------------------------- progress and interrupt

ACTIVE = ("queued", "assigned", "running")


def active_jobs(session, user: User) -> list[Job]:
    """The caller's own unfinished jobs of this interface: the running ones first
    (latest start first), then the queued ones in the order they run."""
    jobs = list(session.execute(select(Job).where(Job.user_id == user.id, Job.interface == INTERFACE,
                                                  Job.status.in_(ACTIVE)).order_by(Job.created_at, Job.id)).scalars())
    running = sorted((job for job in jobs if job.status != "queued"), key=lambda job: job.started_at or job.created_at, reverse=True)
    return running + [job for job in jobs if job.status == "queued"]


def progress_answer(ctx, jobs: list[Job], skip_current_image: bool) -> dict[str, Any]:
    idle = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if not jobs:
        return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None,
                "current_task": None}
    job = jobs[0]
    step, total, eta = job.progress_step, job.progress_total or job.steps, job.eta_s
    live = ctx.events.latest_live("job", job.id) if job.status == "running" else None
    if live and live.get("type") in ("progress", "preview") and live.get("total"):
        step, total, eta = live.get("step") or 0, live["total"], live.get("eta_s")
    image = None
    if job.status == "running" and not skip_current_image:
        preview = ctx.events.latest_live(PREVIEW, job.id)
        image = preview.get("jpeg") if preview else None
    state = {**idle, "job": f"task({job.id})", "job_count": len(jobs), "job_timestamp": _job_timestamp(job),
             "sampling_step": step, "sampling_steps": total}
    text = {"queued": "Waiting for a worker...", "assigned": "Starting..."}.get(job.status, f"Step {step} of {total}")
    return {"progress": round(step / total, 4) if total else 0.0, "eta_relative": float(eta or 0.0), "state": state,
            "current_image": image, "textinfo": text, "current_task": f"task({job.id})"}


@bp.get("/progress")
@declare("Progress of the caller's current render through this interface (step, ETA, live preview JPEG)",
         {200: A1111Progress}, query=A1111ProgressQuery, schemes=SCHEMES, error_model=A1111Error)
def progress(query: A1111ProgressQuery):
    ctx = farm_context()
    with ctx.db.session() as session:
        jobs = active_jobs(session, g.user)
    return jsonify(progress_answer(ctx, jobs, query.skip_current_image))


@bp.post("/interrupt")
@declare("Stop the caller's current render through this interface (its running jobs; with none running, the next queued one)",
         {200: A1111Empty}, schemes=SCHEMES, error_model=A1111Error)
def interrupt():
    from farm.services import jobs as job_service

    ctx = farm_context()
    with ctx.db.session() as session:
        jobs = active_jobs(session, g.user)
    running = [job for job in jobs if job.status != "queued"]
    for job in running or jobs[:1]:
        try:
            job_service.cancel_job(ctx, g.user, str(job.id))
        except job_service.ConflictError:
            pass  # it ended meanwhile
    return jsonify({})


# --------------------------------------------------------------------------- models, samplers, options

@bp.get("/sd-models")
@declare("Checkpoints: farm's registered models", {200: A1111Checkpoints}, schemes=SCHEMES, error_model=A1111Error)
def sd_models():
    ctx = farm_context()
    with ctx.db.session() as session:
        entries = list(session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars())
    return jsonify([{"title": checkpoint_title(e), "model_name": e.id, "hash": e.weights_sha256[:10] if e.weights_sha256 else None,
                     "sha256": e.weights_sha256, "filename": e.source, "config": None} for e in entries])


@bp.get("/samplers")
@declare("Samplers by A1111's names (with farm's as aliases)", {200: A1111Samplers}, schemes=SCHEMES, error_model=A1111Error)
def samplers():
    return jsonify([{"name": name, "aliases": [*aliases, sampler], "options": {"scheduler": schedule} if schedule else {}}
                    for sampler, (name, aliases, schedule) in SAMPLERS.items()])


@bp.get("/schedulers")
@declare("Sigma schedules by A1111's names ('automatic' is accepted too)", {200: A1111Schedules}, schemes=SCHEMES,
         error_model=A1111Error)
def schedulers():
    return jsonify([{"name": name, "label": label, "aliases": list(aliases) or None, "default_rho": rho, "need_inner_model": inner}
                    for name, (label, aliases, rho, inner) in SCHEDULES.items()])


def current_options(session, user: User) -> dict[str, Any]:
    entries = list(session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars())
    chosen = session.execute(select(User.default_model).where(User.id == user.id)).scalar_one_or_none()
    entry = find_model(entries, chosen) or farm_default(entries, farm_context().settings)
    return {"sd_model_checkpoint": checkpoint_title(entry) if entry else None,
            "sd_checkpoint_hash": entry.weights_sha256 if entry else None,
            "samples_format": "png", "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "eta_noise_seed_delta": 0}


@bp.get("/options")
@declare("Settings: the caller's checkpoint (sd_model_checkpoint) and the few others farm keeps", {200: A1111Options},
         schemes=SCHEMES, error_model=A1111Error)
def get_options():
    with farm_context().db.session() as session:
        return jsonify(current_options(session, g.user))


@bp.post("/options")
@declare("Set the caller's checkpoint (sd_model_checkpoint), used by this interface's requests naming none; "
         "other settings are farm's and may only be sent back unchanged",
         {200: Answer(description="Saved (null, as A1111 answers)", media={"application/json": {"type": "null"}})},
         body=A1111OptionsUpdate, schemes=SCHEMES, error_model=A1111Error)
def set_options(body: A1111OptionsUpdate):
    ctx = farm_context()
    with ctx.db.session() as session:
        options = current_options(session, g.user)
        entries = list(session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars())
    problems = [FieldProblem(name, f"farm keeps {name} at {options[name]!r} for everyone; only sd_model_checkpoint is "
                                   "yours to set") for name, value in (body.model_extra or {}).items()
                if name in options and value != options[name]]
    entry = _checkpoint(entries, body.sd_model_checkpoint, "sd_model_checkpoint") if body.sd_model_checkpoint else None
    if entry is not None and is_refiner(entry.family):
        problems.append(FieldProblem("sd_model_checkpoint", f"{entry.id} is an SDXL refiner, which only finishes renders; "
                                                            "pick it as refiner_checkpoint"))
    if problems:
        raise RequestError(problems)
    if entry is not None:
        with ctx.db.transaction() as session:
            session.execute(update(User).where(User.id == g.user.id).values(default_model=entry.id))
        logger.info("user %s renders with %s through the A1111 interface", g.user.name, entry.id)
    return jsonify(None)


# --------------------------------------------------------------------------- listings clients ask for

class A1111PromptStyle(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class A1111PromptStyles(RootModel[list[A1111PromptStyle]]):
    pass


class A1111Upscaler(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class A1111Upscalers(RootModel[list[A1111Upscaler]]):
    pass


class A1111Names(RootModel[list[dict[str, Any]]]):
    pass


class A1111Scripts(BaseModel):
    txt2img: list[str]
    img2img: list[str]


@bp.get("/prompt-styles")
@declare("Styles by name for the styles field: farm's style library ({prompt} marks where the prompt goes)",
         {200: A1111PromptStyles}, schemes=SCHEMES, error_model=A1111Error)
def prompt_styles():
    from farm.generation.resources import generation_resources

    library = generation_resources(farm_context().settings).styles
    return jsonify([{"name": style.name, "prompt": style.positive, "negative_prompt": style.negative} for style in library.all()])


@bp.get("/upscalers")
@declare("Upscalers: none (farm has no hires fix; clients list this before offering one)", {200: A1111Upscalers},
         schemes=SCHEMES, error_model=A1111Error)
def upscalers():
    return jsonify([{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}])


@bp.get("/latent-upscale-modes")
@declare("Latent upscale modes: none (no hires fix on farm)", {200: A1111Names}, schemes=SCHEMES, error_model=A1111Error)
def latent_upscale_modes():
    return jsonify([])


@bp.get("/sd-vae")
@declare("Separate VAEs: none (farm renders with each model's own VAE)", {200: A1111Names}, schemes=SCHEMES,
         error_model=A1111Error)
def sd_vae():
    return jsonify([])


@bp.get("/scripts")
@declare("Scripts: none (webuiapi asks at start which extensions the server has)", {200: A1111Scripts}, schemes=SCHEMES,
         error_model=A1111Error)
def scripts():
    return jsonify({"txt2img": [], "img2img": []})


# --------------------------------------------------------------------------- png-info

_SETTING = re.compile(r'\s*([\w ()-]+):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """A 'parameters' text ("prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ...")
    as a dict: Prompt, Negative prompt, then each "key: value" of the last line.
    The last line holds the settings only with three or more of them, as A1111
    reads it, so a one-line prompt such as "photo: a cat" stays the prompt."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if len(_SETTING.findall(lines[-1])) >= 3 else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    parsed: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _SETTING.findall(settings_line):
        parsed[key.strip()] = value.strip()
    return parsed


@bp.post("/png-info")
@declare("The generation parameters a PNG carries (farm's 'parameters' and 'farm' text chunks); read-only tokens may call it",
         {200: A1111PngInfo}, body=A1111PngInfoRequest, schemes=SCHEMES, error_model=A1111Error, reads=True)
def png_info(body: A1111PngInfoRequest):
    data = common.decode_base64_image(body.image, "image")
    try:
        with PIL.Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as image:
            items = {key: value for key, value in image.info.items() if isinstance(value, str)}
    except Exception:
        raise RequestError([FieldProblem("image", "is not a PNG, JPEG or WebP image")]) from None
    text = items.pop("parameters", "")
    return jsonify({"info": text, "items": items, "parameters": parse_infotext(text) if text else {}})
