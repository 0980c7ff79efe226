"""The Fooocus-API interface (mrhan1993/Fooocus-API, its v1 endpoints) on farm's
job service: /v1/generation/* and /v1/engines/*.

Fooocus-API takes JSON for text to image and, for the image endpoints, a
multipart form in v1 and JSON with base64 images in v2. Here each v1 image
endpoint takes both: a JSON body (v2's fields) or a multipart form (v1's).
Every request becomes one farm job (``interface="fooocus"``) through
farm.services.jobs, so quotas, isolation and lineage are those of the native
API; its answers and errors keep Fooocus-API's shapes (FastAPI's
``{"detail": ...}``), naming fields the way the client sent them.

Names are farm's: ``base_model_name`` is a farm model id (``GET
/v1/engines/all-models``), styles are farm's styles (``GET /v1/engines/styles``)
and "Fooocus V2", Fooocus' prompt expansion, turns on farm's. What farm
cannot render is refused with a 422 naming the field rather than dropped;
Fooocus' tuning knobs without a farm counterpart (sharpness, ADM scalers,
ControlNet stops, ...) are accepted and ignored, as Fooocus treats them as
hints to its own sampler. README "Fooocus-API clients" lists the mapping.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, RootModel

from farm import states
from farm.api.adapters import common
from farm.api.adapters.fastapi_errors import FastApiError, register_error_handlers, remember_fields
from farm.api.contract import Answer, declare, validate
from farm.api.schemas import Params
from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body
from farm.events import PREVIEW
from farm.models import Job
from farm.safejson import CheckedModel
from farm.services import jobs as job_service
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)
bp = Blueprint("fooocus", __name__)
register_error_handlers(bp)

INTERFACE = "fooocus"
# Fooocus-API clients send their key as X-API-KEY; farm's bearer token works too.
SCHEMES = ("bearer", "x-api-key")

PERFORMANCE = {"Speed": "speed", "Quality": "quality", "Extreme Speed": "extreme_speed", "Lightning": "lightning"}
# Fooocus' style that runs its prompt expansion (a GPT-2 prompt writer): farm's prompt_expansion.
EXPANSION_STYLE = "fooocus v2"
UOV_MODES = {"Vary (Subtle)": "vary_subtle", "Vary (Strong)": "vary_strong", "Upscale (1.5x)": "upscale_1.5x",
             "Upscale (2x)": "upscale_2x",
             # Fooocus' fast 2x skips diffusion; farm upscales the one way it has.
             "Upscale (Fast 2x)": "upscale_2x"}
CUSTOM_UPSCALES = {1.5: "upscale_1.5x", 2.0: "upscale_2x"}
# Fooocus' (ComfyUI's) sampler names -> farm's; the _gpu variants are the same samplers.
SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_ancestral", "heun": "heun", "dpmpp_2m": "dpmpp_2m",
            "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "dpmpp_sde": "dpmpp_sde",
            "dpmpp_sde_gpu": "dpmpp_sde", "uni_pc": "unipc", "uni_pc_bh2": "unipc", "ddim": "ddim", "lcm": "lcm"}
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform")
OUTPUT_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
MODEL_SUFFIXES = (".safetensors", ".ckpt")

JobType = Literal["Text to Image", "Image Upscale or Variation", "Image Inpaint or Outpaint", "Image Prompt", "Not Found"]
JobStage = Literal["WAITING", "RUNNING", "SUCCESS", "ERROR"]
FinishReason = Literal["SUCCESS", "QUEUE_IS_FULL", "USER_CANCEL", "ERROR"]
_STAGES = {"queued": "WAITING", "assigned": "WAITING", "running": "RUNNING", "succeeded": "SUCCESS",
           "failed": "ERROR", "canceled": "ERROR"}


# --------------------------------------------------------------------------- request shapes

class FooocusLora(CheckedModel):
    model_name: str = Field(description="A farm LoRA id (GET /v1/engines/all-models); 'None' is an empty slot")
    weight: float = Field(default=0.5, ge=-2, le=2)
    enabled: bool = True


class FooocusAdvancedParams(CheckedModel):
    """The knobs farm has a counterpart for; Fooocus' others are ignored (hints to its own sampler)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    sampler_name: str | None = None
    scheduler_name: str | None = None
    overwrite_step: int = Field(default=-1, ge=-1, le=1000)
    overwrite_width: int = Field(default=-1, ge=-1, le=16384)
    overwrite_height: int = Field(default=-1, ge=-1, le=16384)
    overwrite_vary_strength: float = Field(default=-1, ge=-1, le=1)
    overwrite_upscale_strength: float = Field(default=-1, ge=-1, le=1)
    inpaint_strength: float | None = Field(default=None, ge=0, le=1)
    freeu_enabled: bool = False
    clip_skip: int | None = Field(default=None, ge=1, le=12)


class FooocusImagePrompt(CheckedModel):
    cn_img: str | None = Field(default=None, description="base64 image (or a data: URL)")
    cn_stop: float | None = Field(default=None, ge=0, le=1, description="Accepted; farm applies image prompts to every step")
    cn_weight: float | None = Field(default=None, ge=0, le=2)
    cn_type: Literal["ImagePrompt", "FaceSwap", "PyraCanny", "CPDS"] = "ImagePrompt"


class FooocusText2Img(CheckedModel):
    prompt: str = ""
    negative_prompt: str = ""
    style_selections: list[str] = Field(default_factory=list, max_length=64)
    performance_selection: Literal["Speed", "Quality", "Extreme Speed", "Lightning"] = "Speed"
    aspect_ratios_selection: str | None = Field(default=None, max_length=64, examples=["1152*896"])
    image_number: int = Field(default=1, ge=1, le=32)
    image_seed: int = Field(default=-1, ge=-1, le=2**63 - 1)
    sharpness: float = Field(default=2.0, ge=0, le=30, description="Accepted and ignored (Fooocus' own filter)")
    guidance_scale: float | None = Field(default=None, ge=1, le=30)
    base_model_name: str | None = Field(default=None, max_length=256)
    refiner_model_name: str | None = Field(default=None, max_length=256)
    refiner_switch: float = Field(default=0.5, ge=0.1, le=1.0)
    loras: list[FooocusLora] = Field(default_factory=list, max_length=16)
    advanced_params: FooocusAdvancedParams | None = None
    save_meta: bool = True
    meta_scheme: str | None = Field(default=None, max_length=32)
    save_extension: Literal["png", "jpg", "jpeg", "webp"] = "png"
    save_name: str = Field(default="", max_length=256)
    read_wildcards_in_order: bool = False
    require_base64: bool = False
    async_process: bool = False
    webhook_url: str | None = Field(default=None, max_length=2048)


class FooocusUpscaleVary(FooocusText2Img):
    input_image: str = Field(description="base64 image (JSON) or the file (multipart)")
    uov_method: Literal["Disabled", "Vary (Subtle)", "Vary (Strong)", "Upscale (1.5x)", "Upscale (2x)",
                        "Upscale (Fast 2x)", "Upscale (Custom)"] = "Vary (Subtle)"
    upscale_value: float | None = Field(default=None, ge=1, le=5)
    image_prompts: list[FooocusImagePrompt] = Field(default_factory=list, max_length=4)


class _Painting(FooocusText2Img):
    input_mask: str | None = Field(default=None, description="base64 mask: white is repainted")
    inpaint_additional_prompt: str | None = None
    outpaint_selections: list[Literal["Left", "Right", "Top", "Bottom"]] = Field(default_factory=list, max_length=4)
    outpaint_distance_left: int = Field(default=0, ge=0, le=16384, description="Only 0: farm picks how far it outpaints")
    outpaint_distance_right: int = Field(default=0, ge=0, le=16384, description="Only 0: farm picks how far it outpaints")
    outpaint_distance_top: int = Field(default=0, ge=0, le=16384, description="Only 0: farm picks how far it outpaints")
    outpaint_distance_bottom: int = Field(default=0, ge=0, le=16384, description="Only 0: farm picks how far it outpaints")
    image_prompts: list[FooocusImagePrompt] = Field(default_factory=list, max_length=4)


class FooocusInpaintOutpaint(_Painting):
    input_image: str = Field(description="base64 image (JSON) or the file (multipart)")


class FooocusImagePromptRequest(_Painting):
    input_image: str | None = Field(default=None, description="With input_mask or outpaint_selections: inpaint or outpaint steered by the image prompts")


class JobQuery(Params):
    job_id: str = Field(max_length=64)
    require_step_preview: bool = False


# --------------------------------------------------------------------------- answer shapes

class FooocusImageResult(BaseModel):
    base64: str | None
    url: str | None
    seed: str
    finish_reason: FinishReason


class FooocusJob(BaseModel):
    job_id: str
    job_type: JobType
    job_stage: JobStage
    job_progress: int = Field(ge=0, le=100)
    job_status: str | None
    job_step_preview: str | None
    job_result: list[FooocusImageResult] | None


class FooocusGenerated(RootModel[list[FooocusImageResult] | FooocusJob]):
    """The images (async_process false) or the queued job (async_process true)."""


class FooocusModels(BaseModel):
    model_filenames: list[str]
    lora_filenames: list[str]


class FooocusStyles(RootModel[list[str]]):
    pass


# --------------------------------------------------------------------------- translation

@dataclass
class InlineImage:
    """An image the client sent in the request, stored as an upload before submitting."""

    client_field: str
    data: bytes
    path: tuple  # where its upload id goes in the payload


@dataclass
class Translation:
    payload: dict[str, Any]
    images: list[InlineImage] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # farm field -> client field, for errors


def _problem(client_field: str, message: str) -> RequestError:
    return RequestError([FieldProblem(client_field, message)])


def model_id(name: str) -> str:
    """A farm model or LoRA id from a Fooocus file name ('juggernaut.safetensors' -> 'juggernaut')."""
    for suffix in MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def aspect_ratio(value: str) -> str:
    """'1152*896', '1152×896' or Fooocus' labelled '1152*896 | 9:7' -> '1152*896'."""
    return value.replace("∣", "|").split("|")[0].strip().replace("×", "*")


def translate(req: FooocusText2Img, task: str) -> Translation:
    """The farm request (farm.spec.GenerationRequest fields) of a Fooocus request;
    ``task`` is text, uov, inpaint or prompt (the endpoint). Pure: images are
    decoded but not stored."""
    given = req.model_fields_set
    t = Translation({"prompt": req.prompt, "negative_prompt": req.negative_prompt})
    payload, fields = t.payload, t.fields
    _styles(req, t)
    if "performance_selection" in given:
        payload["performance"] = PERFORMANCE[req.performance_selection]
        fields["performance"] = "performance_selection"
    if "image_number" in given:
        payload["num_images"] = req.image_number
        fields["num_images"] = "image_number"
    if req.image_seed != -1:
        payload["seed"] = req.image_seed
        fields["seed"] = "image_seed"
    if req.guidance_scale is not None:
        payload["guidance_scale"] = req.guidance_scale
    if req.base_model_name:
        payload["model"] = model_id(req.base_model_name)
        fields["model"] = "base_model_name"
    if req.refiner_model_name and req.refiner_model_name != "None":
        payload["refiner"] = model_id(req.refiner_model_name)
        fields["refiner"] = "refiner_model_name"
        if "refiner_switch" in given:
            payload["refiner_switch"] = req.refiner_switch
    _loras(req, t)
    if "save_extension" in given:
        payload["output_format"] = OUTPUT_FORMATS[req.save_extension]
        fields["output_format"] = "save_extension"
    if req.webhook_url:
        # farm.spec.WebhookRequest: farm signs the delivery with a secret of its own (Standard Webhooks).
        payload["webhook"] = {"url": req.webhook_url}
        fields["webhook"] = fields["webhook.url"] = "webhook_url"
    image_mode = _image_task(req, task, t)
    _advanced(req.advanced_params, image_mode, t)
    if image_mode is None and "width" not in payload and req.aspect_ratios_selection:
        # Image tasks take their size from the source; Fooocus clients send a ratio anyway.
        payload["aspect_ratio"] = aspect_ratio(req.aspect_ratios_selection)
        fields["aspect_ratio"] = fields["width"] = fields["height"] = "aspect_ratios_selection"
    return t


def _styles(req: FooocusText2Img, t: Translation) -> None:
    styles = []
    for index, name in enumerate(req.style_selections):
        if name.strip().lower() == EXPANSION_STYLE:
            t.payload["prompt_expansion"] = True
            t.fields["prompt_expansion"] = f"style_selections.{index}"
        else:
            styles.append(name)
    if styles:
        t.payload["styles"] = styles
        t.fields["styles"] = "style_selections"


def _loras(req: FooocusText2Img, t: Translation) -> None:
    loras = []
    for index, lora in enumerate(req.loras):
        if not lora.enabled or lora.model_name in ("None", ""):
            continue  # Fooocus' empty slots
        at = len(loras)
        loras.append({"name": model_id(lora.model_name), "weight": lora.weight})
        t.fields.update({f"loras.{at}": f"loras.{index}", f"loras.{at}.name": f"loras.{index}.model_name"})
    if loras:
        t.payload["loras"] = loras


def _image_task(req: FooocusText2Img, task: str, t: Translation) -> str | None:
    """Fills the image-to-image fields of ``task``; returns farm's image_mode (None: text to image)."""
    payload = t.payload
    if isinstance(req, FooocusUpscaleVary):
        mode = UOV_MODES.get(req.uov_method)
        if req.uov_method == "Upscale (Custom)":
            mode = CUSTOM_UPSCALES.get(req.upscale_value or 0.0)
            if mode is None:
                raise _problem("upscale_value", f"farm upscales by 1.5 or 2, not {req.upscale_value}; "
                                                "use uov_method 'Upscale (1.5x)' or 'Upscale (2x)'")
        elif mode is None:
            raise _problem("uov_method", "'Disabled' asks for nothing to do with input_image; choose a Vary or Upscale method")
        payload["image_mode"] = mode
        _inline(t, req.input_image, "input_image", ("image",))
    elif isinstance(req, _Painting):
        mode = _painting(req, t)
    else:
        mode = None
    if isinstance(req, (FooocusUpscaleVary, _Painting)):
        _image_prompts(req, task, t)
    if mode is not None:
        fields = {"image": "input_image", "parent_output": "input_image", "image_mode": "input_image"}
        t.fields.update({key: value for key, value in fields.items() if key not in t.fields})
    return mode


def _painting(req: _Painting, t: Translation) -> str | None:
    payload = t.payload
    if req.input_image is None:
        for name in ("input_mask", "outpaint_selections"):
            if getattr(req, name):
                raise _problem(name, "works on an input_image; send one")
        return None
    for side in ("left", "right", "top", "bottom"):
        if getattr(req, f"outpaint_distance_{side}"):
            raise _problem(f"outpaint_distance_{side}", "farm picks how far it outpaints from the image's size; leave it 0")
    if req.outpaint_selections:
        if req.input_mask:
            raise _problem("input_mask", "farm outpaints or inpaints in one job, not both: outpaint first, then "
                                         "inpaint the result with its own request")
        mode = "outpaint"
        payload["outpaint"] = [side.lower() for side in req.outpaint_selections]
        t.fields["outpaint"] = "outpaint_selections"
    elif req.input_mask:
        mode = "inpaint"
        _inline(t, req.input_mask, "input_mask", ("mask",))
    else:
        raise _problem("input_mask", "inpainting needs a mask (white is repainted), or give outpaint_selections to outpaint")
    payload["image_mode"] = mode
    _inline(t, req.input_image, "input_image", ("image",))
    if req.inpaint_additional_prompt:
        # As Fooocus does: the additional prompt leads, the prompt follows.
        payload["prompt"] = "\n".join(p for p in (req.inpaint_additional_prompt, req.prompt) if p)
        t.fields.setdefault("prompt", "prompt")
    return mode


def _image_prompts(req, task: str, t: Translation) -> None:
    prompts = t.payload["image_prompts"] = []
    weights = []
    for index, prompt in enumerate(req.image_prompts):
        if not prompt.cn_img:
            continue  # Fooocus' forms carry four slots; empty ones are skipped
        where = f"image_prompts.{index}"
        if prompt.cn_type != "ImagePrompt":
            raise _problem(f"{where}.cn_type", f"farm has image prompts (ImagePrompt), not {prompt.cn_type}")
        if prompt.cn_weight is not None and prompt.cn_weight > 0:
            if weights and prompt.cn_weight != weights[0][1]:
                raise _problem(f"{where}.cn_weight", f"farm applies one weight to all image prompts; this one is "
                                                     f"{prompt.cn_weight}, {weights[0][0]}'s is {weights[0][1]}")
            weights.append((where, prompt.cn_weight))
        at = len(prompts)
        prompts.append({})
        _inline(t, prompt.cn_img, f"{where}.cn_img", ("image_prompts", at, "image"))
        t.fields.update({f"image_prompts.{at}": where, f"image_prompts.{at}.image": f"{where}.cn_img"})
    if task == "prompt" and not prompts:
        raise _problem("image_prompts", "give at least one image prompt with a cn_img")
    if not prompts:
        del t.payload["image_prompts"]
    if weights:
        t.payload["image_prompt_weight"] = weights[0][1]
        t.fields["image_prompt_weight"] = f"{weights[0][0]}.cn_weight"


def _inline(t: Translation, value: str, client_field: str, path: tuple) -> None:
    t.images.append(InlineImage(client_field, common.decode_base64_image(value, client_field), path))
    target = t.payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = None  # the upload id, once stored


def _advanced(params: FooocusAdvancedParams | None, image_mode: str | None, t: Translation) -> None:
    if params is None:
        return
    payload, fields = t.payload, t.fields
    where = "advanced_params."
    if params.sampler_name is not None:
        sampler = SAMPLERS.get(params.sampler_name)
        if sampler is None:
            raise _problem(where + "sampler_name", f"unknown sampler {params.sampler_name!r}; farm has {', '.join(sorted(SAMPLERS))}")
        payload["sampler"] = sampler
        fields["sampler"] = where + "sampler_name"
    if params.scheduler_name is not None:
        if params.scheduler_name not in SCHEDULERS:
            raise _problem(where + "scheduler_name", f"unknown scheduler {params.scheduler_name!r}; farm has {', '.join(SCHEDULERS)}")
        payload["scheduler"] = params.scheduler_name
        fields["scheduler"] = where + "scheduler_name"
    if params.overwrite_step > 0:
        payload["steps"] = params.overwrite_step
        fields["steps"] = where + "overwrite_step"
    for side in ("width", "height"):
        value = getattr(params, f"overwrite_{side}")
        if value > 0:
            payload[side] = value
            fields[side] = where + f"overwrite_{side}"
    if params.freeu_enabled:
        payload["freeu"] = True
        fields["freeu"] = where + "freeu_enabled"
    if params.clip_skip is not None:
        payload["clip_skip"] = params.clip_skip
        fields["clip_skip"] = where + "clip_skip"
    strength, name = None, None
    if image_mode in ("vary_subtle", "vary_strong") and params.overwrite_vary_strength > 0:
        strength, name = params.overwrite_vary_strength, "overwrite_vary_strength"
    elif image_mode in ("upscale_1.5x", "upscale_2x") and params.overwrite_upscale_strength > 0:
        strength, name = params.overwrite_upscale_strength, "overwrite_upscale_strength"
    elif image_mode in ("inpaint", "outpaint") and "inpaint_strength" in params.model_fields_set and params.inpaint_strength:
        strength, name = params.inpaint_strength, "inpaint_strength"
    if strength is not None:
        payload["denoise"] = strength
        fields["denoise"] = where + name


def submit(ctx, user, t: Translation) -> Job:
    """Store the request's inline images as the user's uploads, then submit the job."""
    remember_fields(t.fields)
    for image in t.images:
        upload = common.store_image(ctx, user, image.data, image.client_field)
        target = t.payload
        for key in image.path[:-1]:
            target = target[key]
        target[image.path[-1]] = upload.id
    return common.submit(ctx, user, t.payload, INTERFACE)


# --------------------------------------------------------------------------- multipart forms (v1)

_JSON_FIELDS = ("loras", "advanced_params", "image_prompts")
_LIST_FIELDS = ("style_selections", "outpaint_selections")
_PROMPT_FIELDS = ("prompt", "negative_prompt")


def form_values(form: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
    """A v1 multipart form as the JSON body of the same request: comma lists split,
    JSON-valued fields parsed, files as base64, the cn_*N slots of image-prompt as
    image_prompts, empty values left out (the defaults apply)."""
    values: dict[str, Any] = {}
    slots: dict[int, dict[str, Any]] = {}
    for name, value in form.items():
        slot = _slot(name)
        if slot is not None:
            if value != "":
                slots.setdefault(slot[1], {})[slot[0]] = value
            continue
        if value == "" and name not in _PROMPT_FIELDS:
            continue
        if name in _LIST_FIELDS:
            values[name] = [item.strip() for item in value.split(",") if item.strip()]
        elif name in _JSON_FIELDS:
            try:
                values[name] = json.loads(value)
            except ValueError:
                raise _problem(name, "send it as JSON text in the form field") from None
        elif name in ("refiner_model_name",) and value == "None":
            continue
        else:
            values[name] = value
    for name, data in files.items():
        slot = _slot(name)
        encoded = base64.b64encode(data).decode() if data else None
        if slot is not None:
            if encoded:
                slots.setdefault(slot[1], {})[slot[0]] = encoded
        elif encoded:
            values[name] = encoded
    if slots:
        values["image_prompts"] = [slots[index] for index in sorted(slots)]
    return values


def _slot(name: str) -> tuple[str, int] | None:
    """('cn_img', 1) for 'cn_img2' (v1 image-prompt form slots 1..4), else None."""
    for prefix in ("cn_img", "cn_stop", "cn_weight", "cn_type"):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest in ("1", "2", "3", "4"):
            return prefix, int(rest) - 1
    return None


def _request_body(model: type[FooocusText2Img]) -> FooocusText2Img:
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        # A part without a name (werkzeug keys it None) is no field of any request: left out.
        files = {name: storage.read() for name, storage in request.files.items() if name}
        values = form_values({name: value for name, value in request.form.items() if name}, files)
    else:
        values = json_body()
    return validate(model, values, status=422)


# --------------------------------------------------------------------------- answers

def job_type(job: Job) -> str:
    params = job.params or {}
    mode = (params.get("image_task") or {}).get("mode")
    if params.get("image_prompts"):
        return "Image Prompt"
    if mode in ("inpaint", "outpaint"):
        return "Image Inpaint or Outpaint"
    if mode:
        return "Image Upscale or Variation"
    return "Text to Image"


def image_results(ctx, job: Job, with_base64: bool) -> list[dict[str, Any]]:
    if job.status != "succeeded":
        reason = "USER_CANCEL" if job.status == "canceled" else "ERROR"
        return [{"base64": None, "url": None, "seed": str(job.seed), "finish_reason": reason}]
    return [{"base64": base64.b64encode(common.image_bytes(ctx, output)).decode() if with_base64 else None,
             "url": common.image_link(ctx, output), "seed": str(output.seed), "finish_reason": "SUCCESS"}
            for output in job.outputs]


def job_object(ctx, job: Job, preview: bool) -> dict[str, Any]:
    """Fooocus-API's async job: stage, progress 0..100, status text, live preview, results."""
    total = job.progress_total or job.steps
    step = total if job.status == "succeeded" else job.progress_step
    status = {"queued": "Waiting in queue", "assigned": "Starting on a worker", "succeeded": "Finished",
              "canceled": "Canceled", "failed": job.error or "Failed"}.get(job.status) or f"Sampling step {step} of {total}"
    step_preview = None
    if preview and job.status == "running":
        live = ctx.events.latest_live(PREVIEW, job.id) or {}
        step_preview = live.get("jpeg")  # base64 JPEG of the current latents (farm.workers.previews)
    return {
        "job_id": str(job.id),
        "job_type": job_type(job),
        "job_stage": _STAGES[job.status],
        "job_progress": min(100, int(100 * step / total)) if total else 0,
        "job_status": status,
        "job_step_preview": step_preview,
        # farm does not keep the submit's require_base64: finished jobs answer base64 and url.
        "job_result": image_results(ctx, job, with_base64=True) if job.status == "succeeded" else None,
    }


NOT_FOUND = {"job_id": "", "job_type": "Not Found", "job_stage": "ERROR", "job_progress": 0,
             "job_status": "Job not found", "job_step_preview": None, "job_result": None}


def _generate(model: type[FooocusText2Img], task: str):
    body = _request_body(model)
    ctx = farm_context()
    job = submit(ctx, g.user, translate(body, task))
    if body.async_process:
        return jsonify(job_object(ctx, job, preview=False))
    [job] = common.wait_for(ctx, g.user, [job.id], ctx.settings.adapter_wait_s)
    if not states.is_final(job.status):
        raise ApiError(504, f"job {job.id} is still {job.status} after {ctx.settings.adapter_wait_s:g} s "
                            f"(FARM_ADAPTER_WAIT_S); it goes on: follow it with GET /v1/generation/query-job?job_id={job.id}, "
                            "or send async_process true")
    if request.headers.get("Accept") == "image/png" and job.status == "succeeded" and job.outputs:
        # Fooocus-API's streaming answer: the first image itself. A failed job still answers the JSON list.
        output = job.outputs[0]
        return Response(common.image_bytes(ctx, output), mimetype=output.content_type)
    return jsonify(image_results(ctx, job, with_base64=body.require_base64))


_GENERATED = {200: Answer(FooocusGenerated, "The images (async_process false), or the queued job (async_process true); "
                                            "with 'Accept: image/png' the first image itself (its save_extension's type)",
                          media={f"image/{kind}": {"type": "string", "format": "binary"} for kind in ("png", "jpeg", "webp")}),
              504: Answer(FastApiError, "The job did not finish within FARM_ADAPTER_WAIT_S; it goes on, and the message names it")}
_FORM_SCHEMA = {"type": "object", "additionalProperties": {"type": "string"},
                "properties": {name: {"type": "string", "format": "binary"}
                               for name in ("input_image", "input_mask", "cn_img1", "cn_img2", "cn_img3", "cn_img4")}}
_OPTIONS = dict(schemes=SCHEMES, error_model=FastApiError, parse_body=False, errors=(429,))


@bp.post("/v1/generation/text-to-image")
@declare("Fooocus-API: text to image", _GENERATED, body=FooocusText2Img, **_OPTIONS)
def text_to_image():
    return _generate(FooocusText2Img, "text")


@bp.post("/v1/generation/image-upscale-vary")
@declare("Fooocus-API: upscale or vary an image (JSON with base64, or a v1 multipart form)", _GENERATED,
         body=FooocusUpscaleVary, body_media={"multipart/form-data": _FORM_SCHEMA}, **_OPTIONS)
def image_upscale_vary():
    return _generate(FooocusUpscaleVary, "uov")


@bp.post("/v1/generation/image-inpaint-outpaint")
@declare("Fooocus-API: inpaint or outpaint an image (JSON with base64, or a v1 multipart form)", _GENERATED,
         body=FooocusInpaintOutpaint, body_media={"multipart/form-data": _FORM_SCHEMA}, **_OPTIONS)
def image_inpaint_outpaint():
    return _generate(FooocusInpaintOutpaint, "inpaint")


@bp.post("/v1/generation/image-prompt")
@declare("Fooocus-API: generate steered by image prompts (JSON with base64, or a v1 multipart form)", _GENERATED,
         body=FooocusImagePromptRequest, body_media={"multipart/form-data": _FORM_SCHEMA}, **_OPTIONS)
def image_prompt():
    return _generate(FooocusImagePromptRequest, "prompt")


@bp.get("/v1/generation/query-job")
@declare("Fooocus-API: an async job's stage, progress, live preview and results",
         {200: FooocusJob, 404: Answer(FooocusJob, "No such job that you can see (Fooocus-API's not-found job)")},
         query=JobQuery, schemes=SCHEMES, error_model=FastApiError)
def query_job(query: JobQuery):
    ctx = farm_context()
    try:
        job = job_service.get_job(ctx, g.user, query.job_id)
    except job_service.NotFoundError:
        return jsonify(NOT_FOUND), 404
    return jsonify(job_object(ctx, job, preview=query.require_step_preview))


@bp.get("/v1/engines/all-models")
@declare("Fooocus-API: the farm's model ids and LoRA ids", {200: FooocusModels}, schemes=SCHEMES, error_model=FastApiError)
def all_models():
    from farm.loras import lora_infos
    from farm.registry import model_infos

    with farm_context().db.session() as session:
        models, loras = sorted(model_infos(session)), sorted(lora_infos(session))
    return jsonify({"model_filenames": models, "lora_filenames": loras})


@bp.get("/v1/engines/styles")
@declare("Fooocus-API: the style names farm knows ('Fooocus V2' is its prompt expansion)", {200: FooocusStyles},
         schemes=SCHEMES, error_model=FastApiError)
def styles():
    from farm.generation.resources import generation_resources

    library = generation_resources(farm_context().settings).styles
    return jsonify(["Fooocus V2", *library.names()])
