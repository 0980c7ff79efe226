"""/api/v1/campaigns: submit (JSON, or multipart with a CSV/JSONL rows file), follow, control, export."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from farm import safejson
from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body
from farm.api.views import job_view
from farm.services import campaigns as service
from farm.services import jobs as job_service

logger = logging.getLogger(__name__)
bp = Blueprint("campaigns", __name__)


def _campaign_payload():
    if request.mimetype == "multipart/form-data":
        try:
            payload = safejson.loads(request.form.get("request", "{}"))
        except safejson.UnsafeJSONError as exc:
            raise ApiError(400 if exc.malformed else 422, f"the 'request' form field: {exc}",
                           [{"field": f"request.{exc.field}", "message": exc.message}]) from None
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


CAMPAIGN_MULTIPART = {"multipart/form-data": {
    "type": "object",
    "properties": {"request": {"type": "string", "description": "The campaign request as JSON (as the JSON body)"},
                   "rows": {"type": "string", "format": "binary", "description": "Rows as a .csv or .jsonl file"}}}}


CAMPAIGN_LINKS = {
    "GetCampaign": "GET /api/v1/campaigns/{campaign_id}", "CampaignJobs": "GET /api/v1/campaigns/{campaign_id}/jobs",
    "PauseCampaign": "POST /api/v1/campaigns/{campaign_id}/pause", "ResumeCampaign": "POST /api/v1/campaigns/{campaign_id}/resume",
    "CancelCampaign": "POST /api/v1/campaigns/{campaign_id}/cancel", "Manifest": "GET /api/v1/campaigns/{campaign_id}/manifest",
}


@bp.post("/campaigns")
@declare("Submit a campaign (JSON, or multipart with a rows file); dry_run answers the job count and cost",
         {201: Answer(schemas.CampaignSubmitted, "Queued", links={
             name: (target, {"campaign_id": "$response.body#/id"}) for name, target in CAMPAIGN_LINKS.items()}), 200: Answer(schemas.CampaignSubmitted, "Dry run: nothing queued")},
         body=service.CampaignRequest, body_media=CAMPAIGN_MULTIPART, parse_body=False, errors=(429,))
def submit_campaign():
    payload, rows_text, fmt = _campaign_payload()
    req = service.parse_campaign(payload, rows_text, fmt)
    result = service.submit_campaign(farm_context(), g.user, req)
    return jsonify(result), (200 if req.dry_run else 201)


@bp.get("/campaigns/<campaign_id>")
@declare("Counts, percent, images per minute, ETA and the webhook's last delivery", {200: schemas.CampaignView},
         path=schemas.CampaignPath)
def get_campaign(campaign_id: str):
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.get("/campaigns/<campaign_id>/jobs")
@declare("The campaign's jobs, newest first (cursor paginated)", {200: schemas.JobPage}, path=schemas.CampaignPath,
         query=schemas.CampaignJobsQuery)
def campaign_jobs(campaign_id: str, query: schemas.CampaignJobsQuery):
    ctx = farm_context()
    with ctx.db.session() as session:
        service.visible_campaign(session, g.user, campaign_id)
    # Jobs of a visible campaign are visible to whoever may see the campaign.
    page = job_service.list_jobs(ctx, g.user, status=query.status, campaign=campaign_id,
                                 cursor=query.cursor, limit=query.limit, any_owner=True)
    return jsonify({"jobs": [job_view(job) for job in page.jobs], "next_cursor": page.next_cursor})


@bp.post("/campaigns/<campaign_id>/pause")
@declare("Pause: queued jobs stay queued and are not placed", {200: schemas.CampaignView}, path=schemas.CampaignPath,
         errors=(409,))
def pause(campaign_id: str):
    service.set_paused(farm_context(), g.user, campaign_id, True)
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.post("/campaigns/<campaign_id>/resume")
@declare("Resume a paused campaign", {200: schemas.CampaignView}, path=schemas.CampaignPath, errors=(409,))
def resume(campaign_id: str):
    service.set_paused(farm_context(), g.user, campaign_id, False)
    return jsonify(service.campaign_view(farm_context(), g.user, campaign_id))


@bp.post("/campaigns/<campaign_id>/cancel")
@declare("Cancel queued jobs and stop running ones", {200: schemas.CampaignCanceled}, path=schemas.CampaignPath,
         errors=(409,))
def cancel(campaign_id: str):
    canceled = service.cancel_campaign(farm_context(), g.user, campaign_id)
    return jsonify({**service.campaign_view(farm_context(), g.user, campaign_id), "canceled_jobs": canceled})


@bp.post("/campaigns/<campaign_id>/retry-failed")
@declare("Queue the failed jobs again", {200: schemas.CampaignRetried}, path=schemas.CampaignPath, errors=(409, 429))
def retry_failed(campaign_id: str):
    retried = service.retry_failed(farm_context(), g.user, campaign_id)
    return jsonify({**service.campaign_view(farm_context(), g.user, campaign_id), "retried_jobs": retried})


@bp.get("/campaigns/<campaign_id>/manifest")
@declare("Every output with its URL and lineage, as JSON lines or CSV",
         {200: Answer(description="The manifest", media={"application/x-ndjson": {"type": "string"}, "text/csv": {"type": "string"}})},
         path=schemas.CampaignPath, query=schemas.ManifestQuery)
def manifest(campaign_id: str, query: schemas.ManifestQuery):
    return manifest_download(farm_context(), g.user, campaign_id, query.format)


@bp.get("/campaigns/<campaign_id>/export.zip")
@declare("The images and the manifest as a streamed ZIP",
         {200: Answer(description="A ZIP archive", media={"application/zip": {"type": "string", "format": "binary"}})},
         path=schemas.CampaignPath)
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
