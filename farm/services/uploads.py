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
import warnings
from dataclasses import dataclass

import PIL.Image

from farm.context import FarmContext
from farm.models import User
from farm.spec import FieldProblem, RequestError, SourceImage
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_UPLOAD_SIDE = 8192


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


def store_upload(ctx: FarmContext, user: User, data: bytes) -> Upload:
    """Check, normalise and store an uploaded image; the same content gives the same id."""
    if not data:
        raise UploadError("the body is empty; send the image file (PNG, JPEG or WebP) as the body or as form field 'file'", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = PIL.Image.open(io.BytesIO(data))
            image.load()
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError):
        raise UploadError("the image is too large to decode safely", 413) from None
    except Exception:
        raise UploadError("the body is not an image PIL can read; send a PNG, JPEG or WebP file") from None
    if max(image.size) > MAX_UPLOAD_SIDE:
        raise UploadError(f"the image is {image.width}x{image.height}; sides up to {MAX_UPLOAD_SIDE} are accepted", 413)
    mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent parts become white (for a mask: repainted).
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
    normalised = image.convert(mode)
    buf = io.BytesIO()
    normalised.save(buf, format="PNG", compress_level=6)
    png = buf.getvalue()
    upload_id = hashlib.sha256(png).hexdigest()
    key = upload_key(user.id, upload_id)
    if not ctx.storage.exists(key):
        ctx.storage.put(key, png, "image/png")
    logger.info("upload %s by %s: %dx%d %s", upload_id[:12], user.name, normalised.width, normalised.height, mode)
    return Upload(upload_id, normalised.width, normalised.height, len(png))


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
