"""OpenAI Images under /v1 (issue 20): ``OpenAI(base_url="http://farm:8000/v1",
api_key=TOKEN)`` works unchanged for images.generate, images.edit,
images.create_variation, models.list and models.retrieve.

Each request becomes one farm job (``interface="openai"``) through the job
service, so checks, quotas, isolation and lineage are farm's own; the answer
waits for the job (at most FARM_ADAPTER_WAIT_S) because OpenAI's Images API is
synchronous. How OpenAI's fields map onto farm's request:

- ``model``: a farm model id (GET /v1/models lists them); absent: farm's
  default model; an id farm does not know: 404 ``model_not_found``.
- ``n`` -> ``num_images`` (one job; FARM_MAX_IMAGES_PER_JOB may be below
  OpenAI's 10); ``size`` "WxH" -> width and height, "auto" -> the model's
  default; ``output_format`` png/jpeg/webp as is.
- ``quality`` is a hint, as in OpenAI's API: "high", "hd", "xhigh" and "max"
  ask for farm's ``quality`` performance mode (1.5x the model's steps); the
  other values keep the model's defaults. ``style``, ``moderation``,
  ``complexity``, ``output_compression``, ``user`` and ``safety_identifier``
  are accepted and ignored. What farm cannot do is refused naming the field:
  ``background: "transparent"``, ``stream: true``.
- edits: the first ``image`` is the source; a ``mask`` (its fully transparent
  pixels mark what to repaint, OpenAI's convention) becomes farm's inpaint
  mask (white = repaint). Without a mask, an image with fully transparent
  pixels is inpainted there (DALL-E 2's behaviour); an opaque one is re-rendered
  with the prompt as an image-to-image variation, ``vary_subtle`` with
  ``input_fidelity: "high"``, else ``vary_strong``. Further images
  (``image[]``) become image prompts, which need an IP-Adapter for the
  model's family (FARM_IP_ADAPTERS); without one the request is refused
  naming ``image``. A ``size`` that differs from the image's resizes image and
  mask to it first; without one the source's size is kept (rounded to what
  the model family needs). On a FLUX.2 model (no mask) every image is a
  reference of a new render, as gpt-image's edits combine several; on an
  instruction-editing model (FLUX.1 Kontext, Qwen-Image-Edit) the one image
  is edited as the prompt says (``image_mode: "edit"``).
- variations: ``vary_subtle`` of the image. OpenAI's variations take no
  prompt; farm's jobs need one, so :data:`VARIATION_PROMPT` stands in.
- answers: ``{"created", "data": [{"url" | "b64_json", "revised_prompt"}],
  "output_format", "size"}``; ``revised_prompt`` is farm's final prompt
  (after styles and expansion); a ``url`` is a presigned store URL (valid
  FARM_S3_PRESIGN_S), or the api's own image URL, which needs the token, where
  the store makes none (`farm up`).

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with the status the SDK turns into its exception classes: 400 naming the
``param`` (farm's field names translated back), 401 ``invalid_api_key``, 403
for a read-only token, 404, 429 (``insufficient_quota`` for farm's image,
GPU-second, pixel and step limits; ``rate_limit_exceeded`` for the queue limit
and throttling) with Retry-After, 500 when the job fails, 503 during outages,
504 when the wait ends first (the message names the job, which goes on).
Failed jobs and timeouts carry ``x-should-retry: false``: the SDK would
otherwise submit the same work again.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import re
from typing import Annotated, Any, Literal

import PIL.Image
from flask import Blueprint, g, jsonify, request
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import select

from farm import states
from farm.api.adapters import common
from farm.api.contract import Answer, declare, validate
from farm.api.security import farm_context
from farm.models import JobStatus, ModelEntry
from farm.safejson import CheckedModel
from farm.services.quotas import QuotaExceededError
from farm.services.uploads import UploadError
from farm.families import find_family, is_refiner
from farm.spec import MAX_IMAGE_PROMPTS, RequestError

logger = logging.getLogger(__name__)
bp = Blueprint("openai_images", __name__, url_prefix="/v1")

INTERFACE = "openai"
#: The prompt of a variation job: OpenAI's variations send none, farm's jobs need one.
VARIATION_PROMPT = "a variation of this image"
#: OpenAI ``quality`` values that ask for farm's ``quality`` performance mode.
HIGH_QUALITY = ("high", "hd", "xhigh", "max")
#: OpenAI ``quality`` values (the SDK's, gpt-image and dall-e-3 alike).
Quality = Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]
OutputFormat = Literal["png", "jpeg", "webp"]
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
# Farm's request fields (farm.spec.GenerationRequest) as the OpenAI parameter a client set them through.
_PARAM_OF_FIELD = {
    "num_images": "n", "width": "size", "height": "size", "aspect_ratio": "size", "variant": "model",
    "performance": "quality", "steps": "quality", "negative_prompt": "prompt", "styles": "prompt",
    "prompt_expansion": "prompt", "parent_output": "image", "image_mode": "image", "image_prompts": "image",
    "references": "image",
}
# Quota limits that waiting minutes will not lift (OpenAI's insufficient_quota); others are rate limits.
_BUDGET_LIMITS = ("images_per_day", "gpu_seconds_per_month", "max_pixels", "max_steps")
_TYPE_OF_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
                   413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
                   429: "requests", 500: "server_error", 503: "server_error", 504: "server_error"}
_CODE_OF_STATUS = {401: "invalid_api_key", 403: "insufficient_permissions", 404: "not_found", 405: "method_not_allowed",
                   413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
                   500: "internal_error", 503: "service_unavailable", 504: "timeout"}


# --------------------------------------------------------------------------- shapes

class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="The request parameter to fix, if one is to blame")
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error shape; the status picks the SDK's exception class."""

    error: OpenAIErrorDetail


class ImageData(BaseModel):
    url: str | None = Field(default=None, description="With response_format url: where to fetch the image")
    b64_json: str | None = Field(default=None, description="With response_format b64_json: the image, base64")
    revised_prompt: str | None = Field(default=None, description="farm's final prompt, after styles and expansion")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the job was submitted")
    data: list[ImageData]
    output_format: OutputFormat
    size: str = Field(description="WIDTHxHEIGHT of the images")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class ModelPath(CheckedModel):
    model: Annotated[str, Field(min_length=1, max_length=128)]


Flag = Annotated[bool, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=1, le=10)]


class ImageGenerationRequest(CheckedModel):
    """POST /v1/images/generations, as the OpenAI SDK sends it (JSON)."""

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = Field(default=None, max_length=128, description="A farm model id (GET /v1/models); absent: farm's default")
    n: Count | None = Field(default=None, description="Images to make, one job (num_images)")
    size: str | None = Field(default=None, max_length=32, description="WIDTHxHEIGHT, or auto for the model's default")
    quality: Quality | None = Field(default=None, description="A hint: high, hd, xhigh and max use farm's quality performance mode")
    style: Literal["vivid", "natural"] | None = Field(default=None, description="Accepted and ignored")
    response_format: Literal["url", "b64_json"] | None = Field(default=None, description="Default url")
    output_format: OutputFormat | None = None
    output_compression: Annotated[int, Field(strict=True, ge=0, le=100)] | None = Field(default=None, description="Accepted and ignored")
    background: Literal["transparent", "opaque", "auto"] | None = Field(default=None, description="transparent is refused")
    moderation: Literal["low", "auto"] | None = Field(default=None, description="Accepted and ignored")
    complexity: Literal["low", "medium", "high"] | None = Field(default=None, description="Accepted and ignored")
    partial_images: Annotated[int, Field(strict=True, ge=0, le=3)] | None = Field(default=None, description="Accepted and ignored (no streaming)")
    stream: Flag | None = Field(default=None, description="true is refused: farm answers when the images are done")
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored")
    safety_identifier: str | None = Field(default=None, max_length=256, description="Accepted and ignored")


# Multipart fields arrive as text: null cannot be sent, so "absent" is the only None.
FormText = Annotated[str, Field(max_length=256)]


class ImageVariationForm(CheckedModel):
    """POST /v1/images/variations's form fields (besides the ``image`` file)."""

    model: FormText | SkipJsonSchema[None] = None
    n: Annotated[int, Field(ge=1, le=10)] | SkipJsonSchema[None] = None
    size: Annotated[str, Field(max_length=32)] | SkipJsonSchema[None] = None
    response_format: Literal["url", "b64_json"] | SkipJsonSchema[None] = None
    user: FormText | SkipJsonSchema[None] = None


class ImageEditForm(ImageVariationForm):
    """POST /v1/images/edits's form fields (besides the ``image``, ``image[]`` and ``mask`` files)."""

    prompt: str = Field(min_length=1, max_length=32000)
    quality: Quality | SkipJsonSchema[None] = None
    output_format: OutputFormat | SkipJsonSchema[None] = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | SkipJsonSchema[None] = None
    background: Literal["transparent", "opaque", "auto"] | SkipJsonSchema[None] = None
    input_fidelity: Literal["high", "low"] | SkipJsonSchema[None] = None
    partial_images: Annotated[int, Field(ge=0, le=3)] | SkipJsonSchema[None] = None
    stream: Literal["true", "false"] | SkipJsonSchema[None] = None
    safety_identifier: FormText | SkipJsonSchema[None] = None


# File parts are described the OpenAPI 3.1 way (a string with a contentMediaType) rather than
# 3.0's format: binary, which says the same: schemathesis cannot build negative cases for such
# forms with binary parts (it checks its drawn values with a validator that refuses its own
# binary wrapper), and its text parts reach the views as files all the same.
_FILE = {"type": "string", "contentMediaType": "application/octet-stream"}


def _form_schema(model: type[BaseModel], files: dict[str, dict], description: str) -> dict:
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise RuntimeError(f"{model.__name__}: form fields must be plain values")
    schema.pop("title", None)
    schema["properties"] = {**schema["properties"], **files}
    schema["description"] = description
    return schema


# Several images come as repeated "image[]" parts (the openai SDK's encoding of a list).
EDIT_FORM = _form_schema(ImageEditForm, {
    "image": {**_FILE, "description": "PNG, JPEG or WebP"},
    "image[]": {**_FILE, "description": f"repeated, up to {1 + MAX_IMAGE_PROMPTS} parts"},
    "mask": {**_FILE, "description": "PNG with an alpha channel"},
}, "image (or image[], repeated: the first is the source, the others image prompts) is required; "
   "mask: a PNG whose fully transparent pixels mark what to repaint, the size of the image")
VARIATION_FORM = _form_schema(ImageVariationForm, {"image": {**_FILE, "description": "PNG, JPEG or WebP"}}, "image is required")
_ANSWERS = {
    200: ImagesResponse,
    500: Answer(OpenAIError, "The job failed or was canceled; the message names it"),
    504: Answer(OpenAIError, "The job did not finish within FARM_ADAPTER_WAIT_S; it goes on, and the message names it"),
}
# The image routes' declaration options beside their answers (404: a model farm does not know).
_IMAGES = {"error_model": OpenAIError, "errors": (404,)}


class OpenAIFailure(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else _CODE_OF_STATUS.get(status)
        self.type = type_ or _TYPE_OF_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


# --------------------------------------------------------------------------- routes

@bp.post("/images/generations")
@declare("Create images from a prompt (OpenAI Images: images.generate)", _ANSWERS, body=ImageGenerationRequest, **_IMAGES)
def create_images(body: ImageGenerationRequest):
    _refuse_unsupported(body.background, body.stream is True)
    payload = _common_fields(body.model, body.n, body.quality, body.output_format)
    payload["prompt"] = body.prompt
    size = parse_size(body.size)
    if size is not None:
        payload["width"], payload["height"] = size
    return _render(payload, body.response_format)


@bp.post("/images/edits")
@declare("Edit an image: inpaint under a mask, or re-render it with a prompt (OpenAI Images: images.edit)", _ANSWERS,
         body_media={"multipart/form-data": EDIT_FORM}, parse_body=False, **_IMAGES)
def edit_image():
    ctx = farm_context()
    form, images, mask = _read_form(ImageEditForm, ("image", "image[]"), ctx.settings.max_upload_bytes * (2 + MAX_IMAGE_PROMPTS))
    _refuse_unsupported(form.background, form.stream == "true")
    if not images:
        raise OpenAIFailure(400, "image: send the image to edit as the multipart file 'image'", param="image")
    if len(images) > 1 + MAX_IMAGE_PROMPTS:
        raise OpenAIFailure(400, f"image: at most {1 + MAX_IMAGE_PROMPTS} images (the source and {MAX_IMAGE_PROMPTS} "
                                 f"image prompts); {len(images)} were sent", param="image")
    size = _upload_size(ctx, form.size)
    found_mask: dict[str, PIL.Image.Image] = {}

    def source_prepare(image: PIL.Image.Image) -> PIL.Image.Image:
        # Without a mask, transparent pixels of the image itself mark what to repaint.
        if mask is None and has_transparency(image):
            found_mask["mask"] = _resized(openai_mask(image), size, PIL.Image.NEAREST)
        return _resized(image, size, PIL.Image.LANCZOS)

    source = common.store_image(ctx, g.user, images[0], "image", prepare=source_prepare)
    payload = _common_fields(form.model, form.n, form.quality, form.output_format)
    payload.update(prompt=form.prompt, image=source.id)
    mask_upload = None
    if mask is not None:
        mask_upload = common.store_image(ctx, g.user, mask, "mask",
                                         prepare=lambda image: _resized(openai_mask(image), size, PIL.Image.NEAREST))
    elif "mask" in found_mask:
        mask_upload = common.store_image(ctx, g.user, _png(found_mask["mask"]), "image")
    found = None if mask_upload is not None else find_family(_family_of(ctx, form.model))
    if mask_upload is not None:
        payload.update(image_mode="inpaint", mask=mask_upload.id)
    elif found is not None and found.max_references:
        # A FLUX.2 model: the images are references of a new render, as gpt-image's edits combine several.
        payload.pop("image")
        payload["references"] = [{"image": source.id}, *({"image": common.store_image(ctx, g.user, data, "image").id}
                                                          for data in images[1:])]
        if size is not None:
            payload["width"], payload["height"] = size
        return _render(payload, form.response_format)
    elif found is not None and found.edits:
        # An instruction-editing model (FLUX.1 Kontext, Qwen-Image-Edit): the prompt says what to change.
        if len(images) > 1:
            raise OpenAIFailure(400, f"image: {found.title} models edit one image; {len(images)} were sent", param="image")
        payload["image_mode"] = "edit"
        return _render(payload, form.response_format)
    else:
        payload["image_mode"] = "vary_subtle" if form.input_fidelity == "high" else "vary_strong"
    if len(images) > 1:
        payload["image_prompts"] = [{"image": common.store_image(ctx, g.user, data, "image").id} for data in images[1:]]
    return _render(payload, form.response_format)


def _family_of(ctx, model: str | None) -> str | None:
    """The family of the model an edit names, or of farm's default model; None when there is none such."""
    from farm.registry import model_infos
    from farm.spec import default_model_id

    with ctx.db.session() as session:
        infos = model_infos(session)
    info = infos.get(model or default_model_id(infos, ctx.settings) or "")
    return info.family if info is not None else None


@bp.post("/images/variations")
@declare("Variations of an image (OpenAI Images: images.create_variation)", _ANSWERS,
         body_media={"multipart/form-data": VARIATION_FORM}, parse_body=False, **_IMAGES)
def create_variations():
    ctx = farm_context()
    form, images, _ = _read_form(ImageVariationForm, ("image",), ctx.settings.max_upload_bytes)
    if len(images) != 1:
        raise OpenAIFailure(400, "image: send exactly one image as the multipart file 'image'", param="image")
    size = _upload_size(ctx, form.size)
    source = common.store_image(ctx, g.user, images[0], "image",
                                prepare=lambda image: _resized(image, size, PIL.Image.LANCZOS))
    payload = _common_fields(form.model, form.n, None, None)
    payload.update(prompt=VARIATION_PROMPT, image=source.id, image_mode="vary_subtle")
    return _render(payload, form.response_format)


@bp.get("/models")
@declare("farm's models, as the OpenAI SDK lists them (models.list)", {200: OpenAIModelList}, error_model=OpenAIError)
def list_models():
    return jsonify({"object": "list", "data": [_model_view(entry) for entry in _renderers()]})


@bp.get("/models/<model>")
@declare("One of farm's models (models.retrieve)", {200: OpenAIModel}, path=ModelPath, error_model=OpenAIError)
def retrieve_model(model: str):
    for entry in _renderers():
        if entry.id == model:
            return jsonify(_model_view(entry))
    raise OpenAIFailure(404, f"The model '{model}' does not exist on this farm; GET /v1/models lists them",
                        param="model", code="model_not_found")


@bp.errorhandler(Exception)
def _error_answer(exc: Exception):
    """Every error raised in this blueprint's views, in OpenAI's shape."""
    failure = to_failure(exc)
    body = {"error": {"message": failure.message, "type": failure.type, "param": failure.param, "code": failure.code}}
    return jsonify(body), failure.status, failure.headers


# --------------------------------------------------------------------------- translation

def parse_size(value: str | None) -> tuple[int, int] | None:
    """(width, height) of an OpenAI ``size`` such as "1024x1536"; None for "auto" or absent."""
    if value is None or value.strip().lower() == "auto":
        return None
    match = _SIZE.match(value)
    if not match or not int(match.group(1)) or not int(match.group(2)):
        raise OpenAIFailure(400, f"size: {value!r} is not 'auto' or WIDTHxHEIGHT such as '1024x1024'", param="size")
    return int(match.group(1)), int(match.group(2))


def has_transparency(image: PIL.Image.Image) -> bool:
    """Whether ``image`` has an alpha channel with at least one fully transparent pixel."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return False
    alpha = image.getchannel("A") if "A" in image.getbands() else image.convert("RGBA").getchannel("A")
    return alpha.getextrema()[0] == 0


def openai_mask(image: PIL.Image.Image) -> PIL.Image.Image:
    """farm's inpaint mask (L, white = repaint) from an OpenAI mask, whose fully
    transparent pixels (alpha 0) mark what to repaint; every other pixel is kept."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise UploadError("the mask needs an alpha channel (a PNG with transparency): its fully transparent pixels "
                          "mark where to edit", 400)
    alpha = image.getchannel("A") if "A" in image.getbands() else image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    if mask.getbbox() is None:
        raise UploadError("the mask has no fully transparent pixel, so nothing would be edited; make the part to "
                          "edit transparent", 400)
    return mask


def to_failure(exc: Exception) -> OpenAIFailure:
    """The OpenAI error answer for anything a view raised; farm's own handlers
    decide outages, throttling and unexpected errors (common.native_error)."""
    if isinstance(exc, OpenAIFailure):
        return exc
    if isinstance(exc, RequestError):
        return _request_failure(exc)
    if isinstance(exc, QuotaExceededError):
        budget = exc.limit in _BUDGET_LIMITS
        return OpenAIFailure(429, str(exc), code="insufficient_quota" if budget else "rate_limit_exceeded",
                             type_="insufficient_quota" if budget else "requests",
                             headers={"Retry-After": str(exc.retry_after_s)})
    native = common.native_error(exc)
    code = "missing_api_key" if native.status == 401 and native.message.startswith("missing") else None
    param = None
    if isinstance(native.details, list) and native.details and isinstance(native.details[0], dict):
        param = native.details[0].get("field")
    return OpenAIFailure(native.status, native.message, param=None if param == "body" else param, code=code,
                         headers=native.headers)


def _request_failure(exc: RequestError) -> OpenAIFailure:
    """A farm request check's problems, named by the OpenAI parameters they came through."""
    named = []
    for problem in exc.problems:
        field = problem.field.split(".")[0]
        param = _PARAM_OF_FIELD.get(field, field)
        named.append((param, problem.field, problem.message))
    param, field, message = named[0]
    text = "; ".join(f"{p}: {m}" if p == f else f"{p} ({f}): {m}" for p, f, m in named)
    # farm.spec.resolve_request says "unknown model" for an id that names no registered model.
    if field == "model" and message.startswith("unknown model"):
        return OpenAIFailure(404, text, param="model", code="model_not_found")
    status = exc.status if exc.status in (413, 503) else 400
    return OpenAIFailure(status, text, param=param, code="invalid_value" if status == 400 else None)


def _refuse_unsupported(background: str | None, streaming: bool) -> None:
    if background == "transparent":
        raise OpenAIFailure(400, "background: farm renders opaque images; use 'opaque' or 'auto'", param="background")
    if streaming:
        raise OpenAIFailure(400, "stream: farm answers once the images are done; streaming partial images is not "
                                 "supported (leave stream out or false)", param="stream")


def _common_fields(model: str | None, n: int | None, quality: str | None, output_format: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if model:
        payload["model"] = model
    if n is not None:
        payload["num_images"] = n
    if quality in HIGH_QUALITY:
        payload["performance"] = "quality"
    if output_format is not None:
        payload["output_format"] = output_format
    return payload


def _upload_size(ctx, value: str | None) -> tuple[int, int] | None:
    """The ``size`` of an edit or variation, checked before any image is resized to it."""
    size = parse_size(value)
    if size is not None and size[0] * size[1] > ctx.settings.max_pixels:
        raise OpenAIFailure(400, f"size: {value} is {size[0] * size[1]} pixels; the limit is {ctx.settings.max_pixels}",
                            param="size")
    return size


def _resized(image: PIL.Image.Image, size: tuple[int, int] | None, resample) -> PIL.Image.Image:
    return image if size is None or image.size == size else image.resize(size, resample)


def _png(image: PIL.Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _read_form(model: type[CheckedModel], image_fields: tuple[str, ...], max_bytes: int):
    """The form fields as ``model``, the images (in order) and the mask of a multipart request."""
    if request.mimetype != "multipart/form-data":
        raise OpenAIFailure(415, "send multipart/form-data with the image as a file field, as the OpenAI SDK does")
    # Images are larger than JSON requests (as for POST /api/v1/uploads).
    request.max_content_length = max_bytes
    files = request.files
    form = request.form
    images = [file.read() for name in image_fields for file in files.getlist(name)]
    # A part without a file name arrives as text; it is read as the file it should have been.
    images += [value.encode("utf-8", "surrogateescape") for name in image_fields for value in form.getlist(name)]
    mask_parts = [file.read() for file in files.getlist("mask")] + [v.encode("utf-8", "surrogateescape") for v in form.getlist("mask")]
    if len(mask_parts) > 1:
        raise OpenAIFailure(400, "mask: send one mask", param="mask")
    values = {name: form.get(name) for name in form if name not in image_fields + ("mask",)}
    # Unknown fields of either kind are refused by the model, files included.
    values.update({name: "(a file)" for name in files if name not in image_fields + ("mask",)})
    return validate(model, values, status=400), images, (mask_parts[0] if mask_parts else None)


def _render(payload: dict[str, Any], response_format: str | None):
    """Submit the job, wait for it, and answer with its images."""
    ctx = farm_context()
    job = common.submit(ctx, g.user, payload, INTERFACE)
    [job] = common.wait_for(ctx, g.user, [job.id], ctx.settings.adapter_wait_s)
    no_retry = {"x-should-retry": "false"}  # a retry would submit the same work again
    if not states.is_final(job.status):
        raise OpenAIFailure(504, f"job {job.id} is still {job.status} after {ctx.settings.adapter_wait_s:g} s; it goes on: "
                                 f"GET /api/v1/jobs/{job.id} shows it and its images when done", headers=no_retry)
    if job.status != JobStatus.succeeded.value:
        why = f": {job.error}" if job.error else ""
        raise OpenAIFailure(500, f"job {job.id} {job.status}{why}", code=f"job_{job.status}", headers=no_retry)
    data = []
    for output in job.outputs:
        # Each image's own final prompt: wildcards draw per image.
        revised = ((output.lineage or {}).get("params") or {}).get("final_prompt") \
            or job.params.get("final_prompt", job.params.get("prompt"))
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(common.image_bytes(ctx, output)).decode("ascii"), "revised_prompt": revised})
        else:
            data.append({"url": common.image_link(ctx, output), "revised_prompt": revised})
    return jsonify({"created": _unix(job.created_at), "data": data,
                    "output_format": job.params.get("output_format", "png"), "size": f"{job.width}x{job.height}"})


def _renderers() -> list[ModelEntry]:
    """Registered models a request can name (refiners only finish other models' renders)."""
    with farm_context().db.session() as session:
        entries = session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
    return [entry for entry in entries if not is_refiner(entry.family)]


def _model_view(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": _unix(entry.created_at), "owned_by": "farm"}


def _unix(moment: dt.datetime) -> int:
    # SQLite (farm up) gives naive datetimes; farm stores UTC.
    return int((moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp())
