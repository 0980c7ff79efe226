"""/api/v1/uploads: images for image-to-image requests (sources and masks)."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request

from farm.api.errors import ApiError
from farm.api.security import farm_context, require_user
from farm.services import uploads as upload_service

logger = logging.getLogger(__name__)
bp = Blueprint("uploads", __name__)


@bp.post("/uploads")
@require_user
def create_upload():
    """Store an image sent as the raw body or as multipart field ``file``; 201 {"id", "width", "height"}."""
    ctx = farm_context()
    # Images are larger than JSON requests: this route alone takes up to max_upload_bytes.
    request.max_content_length = ctx.settings.max_upload_bytes
    if request.mimetype == "multipart/form-data":
        file = request.files.get("file")
        if file is None:
            raise ApiError(400, "send the image as form field 'file'")
        data = file.read()
    else:
        data = request.get_data()
    try:
        upload = upload_service.store_upload(ctx, g.user, data)
    except upload_service.UploadError as exc:
        raise ApiError(exc.status, str(exc)) from None
    body = {"id": upload.id, "width": upload.width, "height": upload.height, "byte_size": upload.byte_size}
    return jsonify(body), 201
