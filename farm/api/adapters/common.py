"""What every adapter does the same way: submit through the job service with
the adapter's interface name, wait a bounded time for jobs to finish, read or
link their images, and store images a client sent inline as uploads."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import current_app, url_for

from farm.context import FarmContext
from farm.models import Job, Output, User
from farm.services import jobs as job_service
from farm.services import uploads as upload_service
from farm.spec import FieldProblem, RequestError


def submit(ctx: FarmContext, user: User, payload: dict, interface: str) -> Job:
    """One farm job from a translated request (farm.spec.GenerationRequest fields)."""
    return job_service.submit_job(ctx, user, payload, interface=interface)


def wait_for(ctx: FarmContext, user: User, job_ids: list[uuid.UUID | str], timeout_s: float) -> list[Job]:
    """The jobs, each waited for until it is final or ``timeout_s`` (in all) has passed."""
    deadline = time.monotonic() + timeout_s
    found = []
    for job_id in job_ids:
        job = job_service.get_job(ctx, user, str(job_id), wait_s=max(deadline - time.monotonic(), 0.0))
        found.append(job)
    return found



def image_bytes(ctx: FarmContext, output: Output) -> bytes:
    return ctx.storage.get(output.object_key)


def image_url(output: Output) -> str:
    """An absolute URL of the output's image on this api (it answers with the
    image or a redirect to a presigned store URL); needs a request context."""
    return url_for("outputs.get_output_image", output_id=output.id, _external=True)


def image_link(ctx: FarmContext, output: Output) -> str:
    """A URL a client can fetch the image from without farm's token: a presigned
    store URL (valid FARM_S3_PRESIGN_S) where the store makes them, else
    :func:`image_url` (a local store under `farm up`: the token is needed)."""
    return ctx.storage.url(output.object_key, ctx.settings.s3_presign_s) or image_url(output)


@dataclass(frozen=True)
class NativeError:
    """How farm's own API answers an error: status, code, message, details, headers."""

    status: int
    code: str
    message: str
    details: Any
    headers: dict[str, str]


def native_error(exc: Exception) -> NativeError:
    """What farm's native handlers (farm/api/errors.py, the throttle's) answer for
    ``exc``, so an adapter's blueprint handler can say the same thing in its
    interface's error shape without copying their logic (database outages,
    store outages, throttling, HTTP errors, unexpected errors logged once)."""
    app = current_app._get_current_object()
    handler = app._find_error_handler(exc, [])  # the app's own handlers, not the blueprint's
    if handler is None:  # not reached: the app handles Exception
        raise exc
    response = app.make_response(handler(exc))
    error = (response.get_json(silent=True) or {}).get("error") or {}
    headers = {name: response.headers[name] for name in ("Retry-After", "Allow") if name in response.headers}
    return NativeError(response.status_code, error.get("code", "error"), error.get("message", ""), error.get("details"), headers)


def decode_base64_image(value: str, field: str) -> bytes:
    """A base64 image as clients send it, bare or as a data: URL; else a RequestError naming ``field``."""
    text = value.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError([FieldProblem(field, "is not a base64-encoded PNG, JPEG or WebP image")]) from None


def store_image(ctx: FarmContext, user: User, data: bytes, field: str, prepare=None) -> upload_service.Upload:
    """An image a client sent inline, stored as the user's upload; errors name ``field``.
    ``prepare`` changes the decoded image first (farm.services.uploads.store_upload)."""
    try:
        return upload_service.store_upload(ctx, user, data, prepare=prepare)
    except upload_service.UploadError as exc:
        raise RequestError([FieldProblem(field, str(exc))], status=exc.status if exc.status in (413, 503) else 422) from None
