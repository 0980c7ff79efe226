"""Uploaded images for image-to-image work (sources and masks).

An upload is stored once per user and content: ``uploads/u{user}/{sha256}.png``,
normalised to PNG (RGB for images, L for masks decides the worker). Its id is
the content hash, so uploading the same image twice gives the same id, and
another user's id finds nothing under your prefix.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import PIL.Image

from farm.context import FarmContext
from farm.models import User
from farm.spec import FieldProblem, RequestError, SourceImage
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_UPLOAD_SIDE = 8192
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
DECODE_WAIT_S = 30.0
_decode_slots: dict[int, threading.BoundedSemaphore] = {}
_decode_slots_lock = threading.Lock()


def _decodes(slots: int) -> threading.BoundedSemaphore:
    """The process-wide bound on uploads decoded at once (FARM_UPLOAD_DECODES)."""
    with _decode_slots_lock:
        return _decode_slots.setdefault(slots, threading.BoundedSemaphore(slots))


class UploadError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    id: str
    width: int
    height: int
    byte_size: int


def upload_key(user_id: int, upload_id: str) -> str:
    return f"uploads/u{user_id}/{upload_id}.png"


def store_upload(ctx: FarmContext, user: User, data: bytes,
                 prepare: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None) -> Upload:
    """Check, normalise and store an uploaded image; the same content gives the same id.

    ``prepare`` changes the decoded image before it is normalised (an adapter
    turning a foreign mask convention into farm's, say): it runs after the
    header checks and within the decode slot, and may raise UploadError.
    """
    if not data:
        raise UploadError("the body is empty; send the image file (PNG, JPEG or WebP) as the body or as form field 'file'", 400)
    # Only the header is read here: the size is refused before any pixel is
    # decoded, and only the three documented decoders are ever tried (no
    # TIFF, BMP, GIF, ICO, PPM, TGA or EPS, which would run Ghostscript).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError):
        raise UploadError("the image is too large to decode safely", 413) from None
    except Exception:
        raise UploadError("the body is not a PNG, JPEG or WebP image; send one of those") from None
    width, height = image.size
    limit = ctx.settings.max_upload_pixels
    if width * height > limit or max(width, height) > MAX_UPLOAD_SIDE:
        raise UploadError(f"the image is {width}x{height}; uploads up to {limit} pixels (FARM_MAX_UPLOAD_PIXELS) and sides "
                          f"up to {MAX_UPLOAD_SIDE} are accepted", 413)
    slots = _decodes(ctx.settings.upload_decodes)
    if not slots.acquire(timeout=DECODE_WAIT_S):
        raise UploadError("the server is decoding too many uploads; try again shortly", 503)
    try:
        # Decoding and normalising hold the pixels: both count against the slot.
        normalised, mode = _normalise(image, prepare)
        buf = io.BytesIO()
        normalised.save(buf, format="PNG", compress_level=6)
    finally:
        slots.release()
    png = buf.getvalue()
    upload_id = hashlib.sha256(png).hexdigest()
    key = upload_key(user.id, upload_id)
    if not ctx.storage.exists(key):
        ctx.storage.put(key, png, "image/png")
    logger.info("upload %s by %s: %dx%d %s", upload_id[:12], user.name, normalised.width, normalised.height, mode)
    return Upload(upload_id, normalised.width, normalised.height, len(png))


def _normalise(image: PIL.Image.Image, prepare=None) -> tuple[PIL.Image.Image, str]:
    try:
        image.load()
    except Exception:
        raise UploadError("the image is damaged or truncated; send a complete PNG, JPEG or WebP file") from None
    if prepare is not None:
        image = prepare(image)
    mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent parts become white (for a mask: repainted).
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode), mode


def find_upload(ctx: FarmContext, user: User, upload_id: str, field: str) -> SourceImage:
    """The stored upload as a source image, or a RequestError naming ``field``."""
    if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
        raise RequestError([FieldProblem(field, f"{upload_id!r} is not an upload id (64 hex digits from POST /api/v1/uploads)")])
    key = upload_key(user.id, upload_id)
    try:
        data = ctx.storage.get(key)
    except ObjectNotFoundError:
        raise RequestError([FieldProblem(field, f"no upload {upload_id} of yours; upload the image with POST /api/v1/uploads")]) from None
    with PIL.Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return SourceImage(object_key=key, width=width, height=height, upload=upload_id)
