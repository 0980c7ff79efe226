"""/api/v1/jobs: submit, look up, list, cancel."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, url_for

from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.security import farm_context
from farm.api.views import job_view
from farm.services import jobs as job_service
from farm.services import webhooks
from farm.spec import GenerationRequest

logger = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)


@bp.post("/jobs")
@declare("Submit a generation job", {202: Answer(
    schemas.JobAccepted, "Queued; poll polling_url", headers={"Location": "The job's polling URL"},
    links={"CancelJob": ("POST /api/v1/jobs/{job_id}/cancel", {"job_id": "$response.body#/id"})})},
         body=GenerationRequest, errors=(429,))
def submit_job(body: GenerationRequest):
    job = job_service.submit_job(farm_context(), g.user, body.model_dump(exclude_unset=True))
    accepted = {"id": str(job.id), "status": job.status, "polling_url": url_for("jobs.get_job", job_id=job.id)}
    if job.webhook_url:
        accepted["webhook"] = {"url": job.webhook_url, "secret": job.webhook_secret}  # the only time the secret is shown
    return jsonify(accepted), 202, {"Location": accepted["polling_url"]}


@bp.get("/jobs/<job_id>")
@declare("A job with progress and outputs; ?wait=N long-polls until it is final", {200: schemas.JobView},
         path=schemas.JobPath, query=schemas.WaitQuery)
def get_job(job_id: str, query: schemas.WaitQuery):
    ctx = farm_context()
    job = job_service.get_job(ctx, g.user, job_id, wait_s=query.wait)
    return jsonify(job_view(job, job_service.rerender_match(ctx, job), webhooks.job_webhooks(ctx, [job]).get(job.id),
                            job_service.queue_standing(ctx, job)))


@bp.get("/jobs")
@declare("List jobs, newest first (cursor paginated; filters by status and campaign)", {200: schemas.JobPage},
         query=schemas.JobListQuery)
def list_jobs(query: schemas.JobListQuery):
    ctx = farm_context()
    page = job_service.list_jobs(ctx, g.user, status=query.status, campaign=query.campaign,
                                 cursor=query.cursor, limit=query.limit)
    hooks = webhooks.job_webhooks(ctx, page.jobs)
    return jsonify({"jobs": [job_view(job, webhook=hooks.get(job.id)) for job in page.jobs], "next_cursor": page.next_cursor})


@bp.post("/jobs/<job_id>/cancel")
@declare("Cancel a queued, assigned or running job", {200: schemas.JobView}, path=schemas.JobPath, errors=(409,))
def cancel_job(job_id: str):
    ctx = farm_context()
    job = job_service.cancel_job(ctx, g.user, job_id)
    return jsonify(job_view(job, webhook=webhooks.job_webhooks(ctx, [job]).get(job.id)))
