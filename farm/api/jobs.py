"""/api/v1/jobs: submit, look up, list, cancel."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request, url_for

from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body, require_user
from farm.api.views import job_view
from farm.services import jobs as job_service

logger = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

MAX_WAIT_S = 30.0


@bp.post("/jobs")
@require_user
def submit_job():
    job = job_service.submit_job(farm_context(), g.user, json_body())
    body = {"id": str(job.id), "status": job.status, "polling_url": url_for("jobs.get_job", job_id=job.id)}
    return jsonify(body), 202, {"Location": body["polling_url"]}


@bp.get("/jobs/<job_id>")
@require_user
def get_job(job_id: str):
    wait = request.args.get("wait", "0")
    try:
        wait_s = min(float(wait), MAX_WAIT_S)
    except ValueError:
        raise ApiError(400, f"wait must be a number of seconds (at most {MAX_WAIT_S:g})") from None
    ctx = farm_context()
    job = job_service.get_job(ctx, g.user, job_id, wait_s=max(wait_s, 0.0))
    return jsonify(job_view(job, job_service.rerender_match(ctx, job)))


@bp.get("/jobs")
@require_user
def list_jobs():
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    page = job_service.list_jobs(
        farm_context(), g.user,
        status=request.args.get("status"), campaign=request.args.get("campaign"),
        cursor=request.args.get("cursor"), limit=limit,
    )
    return jsonify({"jobs": [job_view(job) for job in page.jobs], "next_cursor": page.next_cursor})


@bp.post("/jobs/<job_id>/cancel")
@require_user
def cancel_job(job_id: str):
    job = job_service.cancel_job(farm_context(), g.user, job_id)
    return jsonify(job_view(job))
