"""/api/v1/jobs/{id}/events and /api/v1/campaigns/{id}/events: progress,
previews, status changes and outputs as Server-Sent Events (issue 19; the
stream itself is farm/api/streams.py)."""

from __future__ import annotations

import logging

from flask import Blueprint, g

from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.security import farm_context
from farm.api.streams import last_event_id, stream_response
from farm.services.live import CampaignFeed, JobFeed

logger = logging.getLogger(__name__)
bp = Blueprint("events", __name__)

# One event of the stream, as parsed (schemathesis checks each against it):
# data is a JSON object whose fields depend on the event's name.
EVENT_STREAM = {"text/event-stream": {"type": "object", "properties": {
    "event": {"type": "string", "enum": ["status", "progress", "preview", "output", "job", "end"]},
    "data": {"type": "string", "contentMediaType": "application/json"},
    "id": {"type": "string", "pattern": "^[0-9]+$"},
    "retry": {"type": "integer"}}}}


@bp.get("/jobs/<job_id>/events")
@declare("A job's progress (step, total, eta_s), live previews (base64 JPEG), status changes and outputs as "
         "Server-Sent Events; ends with an 'end' event when the job is final or after FARM_SSE_MAX_S",
         {200: Answer(description="An event stream", media=EVENT_STREAM)}, path=schemas.JobPath)
def job_events(job_id: str):
    ctx = farm_context()
    return stream_response(JobFeed(ctx, g.user, job_id, after=last_event_id()), ctx)


@bp.get("/campaigns/<campaign_id>/events")
@declare("A campaign's progress (counts, percent, images per minute, eta_s), status changes, its jobs' placement "
         "on workers ('job': job, status, worker, attempt) and outputs as "
         "Server-Sent Events; ends with an 'end' event when the campaign is final or after FARM_SSE_MAX_S",
         {200: Answer(description="An event stream", media=EVENT_STREAM)}, path=schemas.CampaignPath)
def campaign_events(campaign_id: str):
    ctx = farm_context()
    return stream_response(CampaignFeed(ctx, g.user, campaign_id, after=last_event_id()), ctx)
