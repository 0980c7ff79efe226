"""The BFL FLUX API (Black Forest Labs' api.bfl.ai) on farm's job service:
``POST /v1/<model>`` queues one image and answers ``{id, polling_url}``;
``GET /v1/get_result?id=`` answers its status and, once Ready, its sample URL.
The token comes in the ``x-key`` header, as BFL's clients send it.

``input_image`` .. ``input_image_8`` (base64; farm fetches no URLs) are what
the model's family takes: FLUX.2's reference images (up to its limit), or the
one image FLUX.1 Kontext or Qwen-Image-Edit edits as the prompt instructs.

Which farm model renders: the path names a farm model id (``POST
/v1/my-flux``); BFL's own names (``flux-dev``, ``flux-pro-1.1``, any
``flux-...``) that are not farm model ids go to farm's default model
(FARM_DEFAULT_MODEL, else the first registered). Other names are 404.

``/v1/<model>`` is one path segment under /v1, where OpenAI's ``/v1/models``
and this module's ``/v1/get_result`` also live. Werkzeug matches static
segments first, but only for the methods they allow: a POST to /v1/models
would fall through to a plain ``<model>`` rule. The rule's converter
therefore refuses the names of the other /v1 routes, and those answer 405.

Each job is recorded with ``interface="bfl"``; quotas, isolation and lineage
are the native API's. Errors are FastAPI's shape, as BFL's (``{"detail"}``,
422 with a list naming each field); a farm quota refusal is BFL's 429.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from flask import Blueprint, g, jsonify, url_for
from pydantic import BaseModel, Field
from werkzeug.routing import BaseConverter

from farm.api.adapters import common
from farm.api.adapters.fastapi_errors import FastApiError, register_error_handlers, remember_fields
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.schemas import Params
from farm.api.security import farm_context
from farm.models import Job
from farm.safejson import CheckedModel
from farm.services import jobs as job_service
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)
bp = Blueprint("bfl", __name__)
register_error_handlers(bp)

INTERFACE = "bfl"
SCHEMES = ("x-key", "bearer")
# Single segments under /v1 that belong to other routes (OpenAI's, Fooocus-API's, get_result).
RESERVED = ("models", "images", "generation", "engines", "get_result")
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# Pixels of a frame picked from an aspect_ratio alone: about one megapixel, as FLUX renders by default.
RATIO_PIXELS = 1024 * 1024
SIDE_MULTIPLE = 32  # BFL's sizes are multiples of 32


class BflModelConverter(BaseConverter):
    """A /v1/<model> segment that is not another /v1 route's (see the module docstring).
    Any other segment reaches the view, whose path check answers a malformed
    name with a 400 in this interface's shape rather than the app's 404."""

    regex = rf"(?!(?:{'|'.join(RESERVED)})$)[^/]+"


# Registered before the routes below are added (deferred functions run in order).
bp.record_once(lambda state: state.app.url_map.converters.setdefault("bfl_model", BflModelConverter))


class ModelPath(CheckedModel):
    model: str = Field(pattern=rf"^{MODEL_NAME}$", description="A farm model id, or a BFL model name such as flux-dev")


class BflRequest(CheckedModel):
    prompt: str = Field(max_length=100_000)
    image_prompt: str | None = Field(default=None, description="base64 image that steers the result (farm's image prompt)")
    image_prompt_strength: float | None = Field(default=None, ge=0, le=1)
    width: int | None = Field(default=None, ge=64, le=16384)
    height: int | None = Field(default=None, ge=64, le=16384)
    aspect_ratio: str | None = Field(default=None, pattern=r"^\d{1,2}:\d{1,2}$", examples=["16:9"])
    seed: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=1, le=1000)
    guidance: float | None = Field(default=None, ge=0, le=30)
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    prompt_upsampling: bool = Field(default=False, description="farm's prompt expansion")
    safety_tolerance: int = Field(default=2, ge=0, le=6, description="Accepted; farm does not moderate")
    raw: bool = Field(default=False, description="Accepted and ignored")
    input_image: str | None = Field(default=None, description="base64 image: FLUX.2's first reference image, or the image an editing model (FLUX.1 Kontext, Qwen-Image-Edit) edits as the prompt says")
    input_image_2: str | None = Field(default=None, description="base64 image: FLUX.2's second reference image")
    input_image_3: str | None = None
    input_image_4: str | None = None
    input_image_5: str | None = None
    input_image_6: str | None = None
    input_image_7: str | None = None
    input_image_8: str | None = None
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_secret: str | None = Field(default=None, max_length=128, description="A Standard Webhooks secret (whsec_...); farm makes one when absent")


class ResultQuery(Params):
    id: str = Field(max_length=64)


class BflAccepted(BaseModel):
    id: str
    polling_url: str


class BflSample(BaseModel):
    sample: str
    seed: int
    prompt: str
    start_time: float | None
    end_time: float | None
    duration: float | None


class BflResult(BaseModel):
    id: str
    status: Literal["Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"]
    result: BflSample | None
    progress: float | None = Field(description="Fraction of the denoising steps done, 0..1, while Pending")
    details: dict[str, Any] | None


def frame(ratio: str) -> tuple[int, int]:
    """Width and height of about RATIO_PIXELS with the ratio 'W:H', sides multiples of 32."""
    w, h = (int(part) for part in ratio.split(":"))
    if not w or not h:
        raise RequestError([FieldProblem("aspect_ratio", f"{ratio!r} has a zero side; give a ratio like '16:9'")])
    if max(w, h) / min(w, h) > 4:
        raise RequestError([FieldProblem("aspect_ratio", f"{ratio!r} is wider than 4:1; give one between 4:1 and 1:4")])
    width = math.sqrt(RATIO_PIXELS * w / h)
    return (max(SIDE_MULTIPLE, round(width / SIDE_MULTIPLE) * SIDE_MULTIPLE),
            max(SIDE_MULTIPLE, round(width * h / w / SIDE_MULTIPLE) * SIDE_MULTIPLE))


INPUT_IMAGES = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))


def input_images(body: BflRequest) -> list[tuple[str, str]]:
    """(BFL field, value) of the request's input images, in order; a gap (input_image_3 without _2) is refused."""
    given = [(name, getattr(body, name)) for name in INPUT_IMAGES]
    last = max((i for i, (_, value) in enumerate(given) if value is not None), default=-1)
    for name, value in given[:last + 1]:
        if value is None:
            raise RequestError([FieldProblem(name, f"is missing while {given[last][0]} is set; send the input images in order")])
        if value.strip().lower().startswith(("http://", "https://")):
            raise RequestError([FieldProblem(name, "is a URL; farm does not fetch images from URLs: send the image "
                                                   "base64-encoded (bare or as a data: URL)")])
    return given[:last + 1]


def translate(body: BflRequest, model: str | None, family: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The farm request (farm.spec.GenerationRequest fields) of a BFL request, and
    farm field -> BFL field for error answers. ``model``: the farm model id, or
    None for farm's default; ``family``: that model's family, which decides what
    the input images are (FLUX.2's references, or the source an editing model
    edits). Pure: the images are stored by the caller, which fills their upload ids."""
    payload: dict[str, Any] = {"prompt": body.prompt, "output_format": body.output_format}
    fields: dict[str, str] = {}
    images = input_images(body)
    if images:
        payload.update(_input_image_fields(images, family, fields))
    if model is not None:
        payload["model"] = model
    if body.aspect_ratio is not None:
        if body.width is not None or body.height is not None:
            raise RequestError([FieldProblem("aspect_ratio", "give aspect_ratio or width and height, not both")])
        payload["width"], payload["height"] = frame(body.aspect_ratio)
        fields["width"] = fields["height"] = "aspect_ratio"
    else:
        for side in ("width", "height"):
            if getattr(body, side) is not None:
                payload[side] = getattr(body, side)
    for name, farm_name in (("seed", "seed"), ("steps", "steps"), ("guidance", "guidance_scale")):
        if getattr(body, name) is not None:
            payload[farm_name] = getattr(body, name)
            fields[farm_name] = name
    if body.prompt_upsampling:
        payload["prompt_expansion"] = True
        fields["prompt_expansion"] = "prompt_upsampling"
    if body.image_prompt is not None:
        payload["image_prompts"] = [{"image": None}]  # the upload id, once stored
        fields.update({"image_prompts": "image_prompt", "image_prompts.0": "image_prompt", "image_prompts.0.image": "image_prompt"})
        if body.image_prompt_strength is not None:
            payload["image_prompt_weight"] = body.image_prompt_strength
            fields["image_prompt_weight"] = "image_prompt_strength"
    elif body.image_prompt_strength is not None:
        raise RequestError([FieldProblem("image_prompt_strength", "only used with image_prompt; send one or leave it out")])
    if body.webhook_url is not None:
        payload["webhook"] = {"url": body.webhook_url, **({"secret": body.webhook_secret} if body.webhook_secret else {})}
        fields.update({"webhook": "webhook_url", "webhook.url": "webhook_url", "webhook.secret": "webhook_secret"})
    elif body.webhook_secret is not None:
        raise RequestError([FieldProblem("webhook_secret", "only used with webhook_url; send one or leave it out")])
    return payload, fields


def _input_image_fields(images: list[tuple[str, str]], family: str | None, fields: dict[str, str]) -> dict[str, Any]:
    """The farm fields the input images become for ``family`` (upload ids filled by the caller)."""
    from farm.families import editing_names, find_family, reference_families

    found = find_family(family)
    if found is not None and found.max_references:
        for index, (name, _) in enumerate(images):
            fields.update({f"references.{index}": name, f"references.{index}.image": name})
        fields["references"] = images[0][0] if len(images) == 1 else "input_image"
        return {"references": [{"image": None} for _ in images]}
    if found is not None and found.edits:
        if len(images) > 1:
            raise RequestError([FieldProblem(images[1][0], f"{family} models edit one image; send it as input_image "
                                                           "and leave input_image_2 to input_image_8 out")])
        fields.update({"image": "input_image", "image_mode": "input_image"})
        return {"image_mode": "edit", "image": None}
    takers = ", ".join((*reference_families(), *editing_names()))
    raise RequestError([FieldProblem("input_image", f"{family or 'this'} models take no input image; the families "
                                                    f"that do: {takers} (image_prompt steers any FLUX model)")])


def farm_model(name: str, known: set[str]) -> str | None:
    """The farm model a path names: itself when registered, farm's default (None)
    for BFL's flux-* names; anything else is not found."""
    if name in known:
        return name
    if name.lower().startswith("flux"):
        return None
    raise ApiError(404, f"no model {name!r}: POST /v1/<farm model id> (GET /api/v1/models lists them) or a FLUX API "
                        "name such as /v1/flux-dev for farm's default model")


def result(ctx, job: Job) -> dict[str, Any]:
    """BFL's get_result answer for a job this user can see."""
    answer: dict[str, Any] = {"id": str(job.id), "result": None, "progress": None, "details": None}
    if job.status == "succeeded" and job.outputs:
        output = job.outputs[0]
        start = job.started_at.timestamp() if job.started_at else None
        end = job.finished_at.timestamp() if job.finished_at else None
        answer.update(status="Ready", result={
            "sample": common.image_link(ctx, output), "seed": output.seed, "prompt": job.params.get("prompt", ""),
            "start_time": start, "end_time": end,
            "duration": round(end - start, 3) if start is not None and end is not None else None})
    elif job.status in ("failed", "canceled", "succeeded"):
        answer.update(status="Error", details={"error": job.error or job.status})
    else:
        total = job.progress_total or job.steps
        answer.update(status="Pending", progress=round(job.progress_step / total, 3) if total else 0.0)
    return answer


@bp.post("/v1/<bfl_model:model>")
@declare("BFL FLUX API: queue one image with a farm model (or farm's default for flux-* names)",
         {200: Answer(BflAccepted, "Queued; poll polling_url")}, path=ModelPath, body=BflRequest,
         schemes=SCHEMES, error_model=FastApiError, errors=(429,))
def generate(model: str, body: BflRequest):
    from farm.registry import model_infos

    from farm.spec import default_model_id

    ctx = farm_context()
    with ctx.db.session() as session:
        infos = model_infos(session)
    chosen = farm_model(model, set(infos))
    family_of = infos.get(chosen or default_model_id(infos, ctx.settings))
    payload, fields = translate(body, chosen, family_of.family if family_of is not None else None)
    remember_fields(fields)
    if body.image_prompt is not None:
        data = common.decode_base64_image(body.image_prompt, "image_prompt")
        payload["image_prompts"][0]["image"] = common.store_image(ctx, g.user, data, "image_prompt").id
    stored = [common.store_image(ctx, g.user, common.decode_base64_image(value, name), name).id
              for name, value in input_images(body)]
    if "references" in payload:
        payload["references"] = [{"image": upload} for upload in stored]
    elif payload.get("image_mode") == "edit":
        payload["image"] = stored[0]
    job = common.submit(ctx, g.user, payload, INTERFACE)
    return jsonify({"id": str(job.id), "polling_url": url_for("bfl.get_result", id=str(job.id), _external=True)})


@bp.get("/v1/get_result")
@declare("BFL FLUX API: a queued image's status and, once Ready, its sample URL", {200: BflResult},
         query=ResultQuery, schemes=SCHEMES, error_model=FastApiError)
def get_result(query: ResultQuery):
    ctx = farm_context()
    try:
        job = job_service.get_job(ctx, g.user, query.id)
    except job_service.NotFoundError:
        # BFL answers an unknown id (here also another user's) with this status, not an HTTP error.
        return jsonify({"id": query.id, "status": "Task not found", "result": None, "progress": None, "details": None})
    return jsonify(result(ctx, job))
