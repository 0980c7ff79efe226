"""/api/v1/campaigns: submit (JSON, or multipart with a CSV/JSONL rows file), follow, control, export."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body, require_user
from farm.api.views import job_view
from farm.services import campaigns as service
from farm.services import jobs as job_service

logger = logging.getLogger(__name__)
bp = Blueprint("campaigns", __name__)


def _campaign_payload():
    if request.mimetype == "multipart/form-data":
        try:
            payload = json.loads(request.form.get("request", "{}"))
        except json.JSONDecodeError:
            raise ApiError(400, "the 'request' form field must be a JSON object") from None
        upload = request.files.get("rows")
        if upload is None:
            return payload, None, None
        fmt = service.rows_format(upload.filename) or "csv"
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError(400, "the rows file must be UTF-8 text (CSV or JSONL)") from None
        return payload, text, fmt
    return json_body(), None, None


@bp.post("/campaigns")
@require_user
def submit_campaign():
    payload, rows_text, fmt = _campaign_payload()
    req = service.parse_campaign(payload, rows_text, fmt)
    result = service.submit_campaign(farm_context(), g.user, req)
    return jsonify(result), (200 if req.dry_run else 201)


@bp.get("/campaigns/<campaign_id>")
@require_user
def get_campaign(campaign_id: str):
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.get("/campaigns/<campaign_id>/jobs")
@require_user
def campaign_jobs(campaign_id: str):
    ctx = farm_context()
    with ctx.db.session() as session:
        service.visible_campaign(session, g.user, campaign_id)
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    # Jobs of a visible campaign are visible to whoever may see the campaign.
    page = job_service.list_jobs(ctx, g.user, status=request.args.get("status"), campaign=campaign_id,
                                 cursor=request.args.get("cursor"), limit=limit, any_owner=True)
    return jsonify({"jobs": [job_view(job) for job in page.jobs], "next_cursor": page.next_cursor})


@bp.post("/campaigns/<campaign_id>/pause")
@require_user
def pause(campaign_id: str):
    service.set_paused(farm_context(), g.user, campaign_id, True)
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.post("/campaigns/<campaign_id>/resume")
@require_user
def resume(campaign_id: str):
    service.set_paused(farm_context(), g.user, campaign_id, False)
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.post("/campaigns/<campaign_id>/cancel")
@require_user
def cancel(campaign_id: str):
    canceled = service.cancel_campaign(farm_context(), g.user, campaign_id)
    return jsonify({**service.campaign_view(farm_context(), g.user, campaign_id), "canceled_jobs": canceled})


@bp.post("/campaigns/<campaign_id>/retry-failed")
@require_user
def retry_failed(campaign_id: str):
    retried = service.retry_failed(farm_context(), g.user, campaign_id)
    return jsonify({**service.campaign_view(farm_context(), g.user, campaign_id), "retried_jobs": retried})


@bp.get("/campaigns/<campaign_id>/manifest")
@require_user
def manifest(campaign_id: str):
    fmt = request.args.get("format", "jsonl")
    if fmt not in ("csv", "jsonl"):
        raise ApiError(400, "format must be csv or jsonl")
    return manifest_download(farm_context(), g.user, campaign_id, fmt)


@bp.get("/campaigns/<campaign_id>/export.zip")
@require_user
def export(campaign_id: str):
    return zip_download(farm_context(), g.user, campaign_id)


def manifest_download(ctx, user, campaign_id: str, fmt: str) -> Response:
    """The campaign's manifest (csv or jsonl) as a streamed attachment; the API and the dashboard both serve it."""
    with ctx.db.session() as session:
        service.visible_campaign(session, user, campaign_id)  # 404 before streaming starts
    rows = service.manifest_rows(ctx, user, campaign_id)
    body = service.manifest_csv(rows) if fmt == "csv" else service.manifest_jsonl(rows)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(body), mimetype=mimetype,
                    headers={"Content-Disposition": f"attachment; filename=campaign-{campaign_id}.{fmt}"})


def zip_download(ctx, user, campaign_id: str) -> Response:
    """The campaign's images and manifest as a streamed ZIP attachment."""
    with ctx.db.session() as session:
        service.visible_campaign(session, user, campaign_id)
    return Response(stream_with_context(service.export_zip(ctx, user, campaign_id)), mimetype="application/zip",
                    headers={"Content-Disposition": f"attachment; filename=campaign-{campaign_id}.zip"})
