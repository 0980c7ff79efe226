"""Event streams of the dashboard's live pages (issue 19): the API's job and
campaign streams under the session cookie (an EventSource sends no bearer
token), with the session checks of every dashboard page. ``static/live.js``
reads them; the pages' htmx polls are the fallback."""

from __future__ import annotations

import logging

from flask import g

from dashboard.core import bp, farm_ctx, login_required
from farm.api.streams import last_event_id, stream_response
from farm.services.live import CampaignFeed, JobFeed

logger = logging.getLogger(__name__)


@bp.get("/jobs/<job_id>/events")
@login_required
def job_events(job_id: str):
    ctx = farm_ctx()
    return stream_response(JobFeed(ctx, g.dashboard_user, job_id, after=last_event_id()), ctx)


@bp.get("/campaigns/<campaign_id>/events")
@login_required
def campaign_events(campaign_id: str):
    ctx = farm_ctx()
    return stream_response(CampaignFeed(ctx, g.dashboard_user, campaign_id, after=last_event_id()), ctx)
