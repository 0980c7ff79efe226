"""Jobs and images: a job's live status, thumbnails served small from the store, the full image."""

from __future__ import annotations

import io
import logging

from flask import Response, abort, g, redirect, render_template, request, url_for

from dashboard.core import bp, farm_ctx, login_required
from farm.api.outputs import image_response
from farm.models import Job
from farm.services import jobs as job_service
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)

THUMB_PX = 256
IMAGE_ACTIONS = {"vary_subtle": "Vary (subtle)", "vary_strong": "Vary (strong)", "upscale_1.5x": "Upscale 1.5×", "upscale_2x": "Upscale 2×"}


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str):
    found = job_service.get_job(farm_ctx(), g.dashboard_user, job_id)
    template = "partials/job_status.html" if request.args.get("fragment") else "job.html"
    return render_template(template, job=found)


def thumbnail_key(object_key: str) -> str:
    return f"thumbs/{object_key}.webp"


@bp.get("/thumbs/<output_id>.webp")
@login_required
def thumbnail(output_id: str):
    """A 256 px WebP of an output, made once and kept in the store beside the image."""
    ctx = farm_ctx()
    output = job_service.get_output(ctx, g.dashboard_user, output_id)
    key = thumbnail_key(output.object_key)
    try:
        data = ctx.storage.get(key)
    except ObjectNotFoundError:
        from PIL import Image

        try:
            original = ctx.storage.get(output.object_key)
        except ObjectNotFoundError:
            return Response("the image is missing from the store", status=404, mimetype="text/plain")
        image = Image.open(io.BytesIO(original))
        image.thumbnail((THUMB_PX, THUMB_PX))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="WEBP", quality=80)
        data = buffer.getvalue()
        ctx.storage.put(key, data, "image/webp")
    return Response(data, mimetype="image/webp", headers={"Cache-Control": "private, max-age=86400"})


@bp.get("/images/<output_id>/full")
@login_required
def full_image(output_id: str):
    ctx = farm_ctx()
    return image_response(ctx, job_service.get_output(ctx, g.dashboard_user, output_id))


def _lineage_rows(value, prefix: str = "") -> list[tuple[str, str]]:
    """A nested lineage record as (field, value) rows: dotted names, lists joined."""
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            rows.extend(_lineage_rows(item, f"{prefix}{key}."))
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for i, item in enumerate(value):
            rows.extend(_lineage_rows(item, f"{prefix}{i}."))
    else:
        rows.append((prefix.rstrip("."), ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


@bp.get("/images/<output_id>")
@login_required
def image(output_id: str):
    output = job_service.get_output(farm_ctx(), g.dashboard_user, output_id)
    return render_template("image.html", output=output, lineage=_lineage_rows(output.lineage), image_modes=IMAGE_ACTIONS)


@bp.post("/images/<output_id>/rerender")
@login_required
def rerender(output_id: str):
    new = job_service.rerender_output(farm_ctx(), g.dashboard_user, output_id)
    return redirect(url_for("dashboard.job", job_id=new.id))


@bp.post("/images/<output_id>/<mode>")
@login_required
def image_task(output_id: str, mode: str):
    """Vary or upscale an image: a new image-to-image job from it, with its job's prompt and model."""
    if mode not in IMAGE_ACTIONS:
        abort(404, description=f"no image action {mode!r}")
    ctx, user = farm_ctx(), g.dashboard_user
    output = job_service.get_output(ctx, user, output_id)
    with ctx.db.session() as session:
        original = session.get(Job, output.job_id).request
    payload = {"prompt": original["prompt"], "model": original.get("model"), "negative_prompt": original.get("negative_prompt", ""),
               "styles": original.get("styles", []), "image_mode": mode, "parent_output": str(output.id)}
    new = job_service.submit_job(ctx, user, {k: v for k, v in payload.items() if v is not None})
    return redirect(url_for("dashboard.job", job_id=new.id))
