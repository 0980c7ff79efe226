"""/api/v1/outputs: lineage records and images."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g, jsonify, redirect, url_for

from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.security import farm_context
from farm.api.views import output_view
from farm.services import jobs as job_service
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)
bp = Blueprint("outputs", __name__)

IMAGE_MEDIA = {media: {"type": "string", "format": "binary"} for media in ("image/png", "image/jpeg", "image/webp")}


@bp.get("/outputs/<output_id>")
@declare("The lineage record of one image", {200: schemas.OutputRecord}, path=schemas.OutputPath)
def get_output(output_id: str):
    return jsonify(output_view(job_service.get_output(farm_context(), g.user, output_id)))


@bp.post("/outputs/<output_id>/rerender")
@declare("Render again from the lineage; the new job reports rerender_matches",
         {202: Answer(schemas.RerenderAccepted, "Queued", headers={"Location": "The new job's polling URL"})},
         path=schemas.OutputPath, errors=(429,))
def rerender(output_id: str):
    """Render the image again from its lineage; GET the job to see whether the hashes match."""
    job = job_service.rerender_output(farm_context(), g.user, output_id)
    body = {"id": str(job.id), "status": job.status, "polling_url": url_for("jobs.get_job", job_id=job.id),
            "rerender_of": output_id}
    return jsonify(body), 202, {"Location": body["polling_url"]}


@bp.get("/outputs/<output_id>/image")
@declare("The image: a redirect to a presigned URL where the store has them, else the bytes",
         {200: Answer(description="The image", media=IMAGE_MEDIA),
          302: Answer(description="Fetch the image from the presigned store URL", headers={"Location": "Presigned URL"})},
         path=schemas.OutputPath)
def get_output_image(output_id: str):
    ctx = farm_context()
    return image_response(ctx, job_service.get_output(ctx, g.user, output_id))


def image_response(ctx, output) -> Response:
    """An output's image: a redirect to a presigned store URL where the store has them, else the bytes."""
    url = ctx.storage.url(output.object_key, ctx.settings.s3_presign_s)
    if url:
        return redirect(url, code=302)
    try:
        data = ctx.storage.get(output.object_key)
    except ObjectNotFoundError:
        raise ApiError(404, f"the image of output {output.id} is missing from the store") from None
    return Response(data, mimetype=output.content_type, headers={"Cache-Control": "private, max-age=86400", "ETag": output.content_sha256})
