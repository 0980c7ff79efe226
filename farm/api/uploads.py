"""/api/v1/uploads: images for image-to-image requests (sources and masks)."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request

from farm.api import schemas
from farm.api.contract import declare
from farm.api.errors import ApiError
from farm.api.security import farm_context
from farm.services import uploads as upload_service

logger = logging.getLogger(__name__)
bp = Blueprint("uploads", __name__)

_BINARY = {"type": "string", "format": "binary"}
UPLOAD_MEDIA = {
    **{media: _BINARY for media in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")},
    "multipart/form-data": {"type": "object", "required": ["file"], "properties": {"file": _BINARY}},
}


@bp.post("/uploads")
@declare("Upload a source image or mask (PNG, JPEG or WebP; the raw body or multipart field 'file')",
         {201: schemas.UploadView}, body_media=UPLOAD_MEDIA)
def create_upload():
    """Store an image sent as the raw body or as multipart field ``file``; 201 {"id", "width", "height"}."""
    ctx = farm_context()
    # Images are larger than JSON requests: this route alone takes up to max_upload_bytes.
    request.max_content_length = ctx.settings.max_upload_bytes
    if request.mimetype == "multipart/form-data":
        file = request.files.get("file")
        if file is None:
            raise ApiError(400, "send the image as form field 'file'", [{"field": "file", "message": "required"}])
        data = file.read()
    else:
        data = request.get_data()
    try:
        upload = upload_service.store_upload(ctx, g.user, data)
    except upload_service.UploadError as exc:
        raise ApiError(exc.status, str(exc)) from None
    body = {"id": upload.id, "width": upload.width, "height": upload.height, "byte_size": upload.byte_size}
    return jsonify(body), 201
