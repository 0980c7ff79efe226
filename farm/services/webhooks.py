"""Signed webhooks: a campaign's URL receives an HMAC-signed POST when it ends
(and, if the campaign asks, one per finished job).

The body is JSON; ``X-Farm-Signature: t=<unix seconds>,v1=<hex>`` where hex is
HMAC-SHA256(secret, "<t>.<body>"). Receivers recompute it and reject old
timestamps. Deliveries are retried with exponential backoff until a 2xx or
``FARM_WEBHOOK_MAX_ATTEMPTS``; the scheduler process sends them from its own
thread so a slow receiver never delays placement. Each delivery checks the URL
again and connects to exactly the address that check approved
(:class:`farm.outbound.OutboundClient`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any

import urllib3
from sqlalchemy import exists, select

from farm.db import classify_database_error
from farm.outbound import OutboundClient, OutboundRefused
from farm.context import FarmContext
from farm.models import Campaign, CampaignStatus, Job, JobStatus, Output, WebhookDelivery, utcnow

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Farm-Signature"
EVENT_HEADER = "X-Farm-Event"
MAX_BACKOFF_S = 3600.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does (and what the tests use)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def mark_finished_campaigns(ctx: FarmContext) -> int:
    """Campaigns whose jobs are all final become completed; their webhook becomes due."""
    unfinished = exists().where(Job.campaign_id == Campaign.id,
                                Job.status.in_([JobStatus.queued.value, JobStatus.assigned.value, JobStatus.running.value]))
    with ctx.db.transaction() as session:
        done = session.execute(
            select(Campaign).where(Campaign.status.in_([CampaignStatus.active.value, CampaignStatus.paused.value]), ~unfinished)
        ).scalars().all()
        for campaign in done:
            campaign.status, campaign.finished_at = CampaignStatus.completed.value, utcnow()
        # Canceled and completed campaigns with a URL and no delivery yet are due now.
        due = session.execute(
            select(Campaign).where(Campaign.webhook_url.is_not(None), Campaign.webhook_state.is_(None),
                                   Campaign.status.in_([CampaignStatus.completed.value, CampaignStatus.canceled.value]))
        ).scalars().all()
        for campaign in due:
            campaign.webhook_state, campaign.webhook_next_at = "pending", utcnow()
    return len(done)


def _payload(session, campaign: Campaign) -> dict[str, Any]:
    from sqlalchemy import func

    counts = dict(session.execute(select(Job.status, func.count()).where(Job.campaign_id == campaign.id).group_by(Job.status)).all())
    return {
        "event": f"campaign.{campaign.status}",
        "campaign": {"id": str(campaign.id), "name": campaign.name, "status": campaign.status, "jobs": campaign.job_count,
                     "counts": counts, "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
                     "manifest_url": f"/api/v1/campaigns/{campaign.id}/manifest"},
    }


def _post(client: OutboundClient, url: str, secret: str, payload: dict) -> str | None:
    """Send one signed event; None on a 2xx, else what went wrong. The client
    checks the URL again (what it resolves to may have changed since it was
    given) and connects to the address it checked."""
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    headers = {"Content-Type": "application/json", EVENT_HEADER: payload["event"],
               SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
    try:
        status = client.post(url, body, headers)
    except OutboundRefused as exc:
        return f"refused: {exc}"[:500]
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if 200 <= status < 300 else f"HTTP {status}"


def _backoff_s(settings, attempts: int) -> float:
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)


def queue_job_events(ctx: FarmContext) -> int:
    """A pending delivery for each newly finished job of a campaign that asked for per-job events."""
    final = [JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.canceled.value]
    delivered_already = exists().where(WebhookDelivery.job_id == Job.id)
    with ctx.db.transaction() as session:
        rows = session.execute(
            select(Job.id, Job.campaign_id, Job.status).join(Campaign, Campaign.id == Job.campaign_id)
            .where(Campaign.webhook_per_job, Job.status.in_(final), ~delivered_already).limit(1000)
        ).all()
        for row in rows:
            session.add(WebhookDelivery(campaign_id=row.campaign_id, job_id=row.id, event=f"job.{row.status}"))
    return len(rows)


def deliver_job_events(ctx: FarmContext, client: OutboundClient | None = None) -> int:
    client = client or OutboundClient(ctx.settings.webhook_allow)
    with ctx.db.session() as session:
        due = session.execute(
            select(WebhookDelivery, Campaign.webhook_url, Campaign.webhook_secret, Job.attempt, Job.error)
            .join(Campaign, Campaign.id == WebhookDelivery.campaign_id).join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_at <= utcnow()).limit(200)
        ).all()
        outputs = {}
        if due:
            for output in session.execute(select(Output).where(Output.job_id.in_([d[0].job_id for d in due]))).scalars():
                outputs.setdefault(output.job_id, []).append({"id": str(output.id), "url": f"/api/v1/outputs/{output.id}/image"})
    delivered = 0
    for delivery, url, secret, attempt, job_error in due:
        payload = {"event": delivery.event, "campaign_id": str(delivery.campaign_id),
                   "job": {"id": str(delivery.job_id), "status": delivery.event.split(".", 1)[1], "attempt": attempt,
                           "error": job_error, "outputs": outputs.get(delivery.job_id, [])}}
        error = _post(client, url, secret or "", payload)
        with ctx.db.transaction() as session:
            row = session.get(WebhookDelivery, delivery.id)
            row.attempts += 1
            if error is None:
                row.state, row.last_error = "delivered", None
                delivered += 1
            elif row.attempts >= ctx.settings.webhook_max_attempts:
                row.state, row.last_error = "failed", error
            else:
                row.next_at, row.last_error = utcnow() + dt.timedelta(seconds=_backoff_s(ctx.settings, row.attempts)), error
    return delivered


def deliver_due(ctx: FarmContext, client: OutboundClient | None = None) -> int:
    """Send every due webhook once; returns how many were delivered."""
    client = client or OutboundClient(ctx.settings.webhook_allow)
    settings = ctx.settings
    with ctx.db.session() as session:
        due = session.execute(
            select(Campaign).where(Campaign.webhook_state == "pending", Campaign.webhook_next_at <= utcnow())
        ).scalars().all()
        work = [(c.id, c.webhook_url, c.webhook_secret or "", _payload(session, c)) for c in due]
    delivered = 0
    for campaign_id, url, secret, payload in work:
        error = _post(client, url, secret, payload)
        with ctx.db.transaction() as session:
            campaign = session.get(Campaign, campaign_id)
            campaign.webhook_attempts += 1
            if error is None:
                campaign.webhook_state, campaign.webhook_last_error = "delivered", None
                delivered += 1
            elif campaign.webhook_attempts >= settings.webhook_max_attempts:
                campaign.webhook_state, campaign.webhook_last_error = "failed", error
                logger.warning("webhook of campaign %s failed for good: %s", campaign_id, error)
            else:
                backoff = _backoff_s(settings, campaign.webhook_attempts)
                campaign.webhook_next_at = utcnow() + dt.timedelta(seconds=backoff)
                campaign.webhook_last_error = error
                logger.info("webhook of campaign %s: %s; retry in %.1fs", campaign_id, error, backoff)
    return delivered


class WebhookSender:
    """The scheduler process's webhook thread."""

    def __init__(self, ctx: FarmContext, interval_s: float = 1.0) -> None:
        self.ctx = ctx
        self.interval_s = interval_s

    def run(self, stop: threading.Event) -> None:
        client = OutboundClient(self.ctx.settings.webhook_allow)
        while not stop.wait(self.interval_s):
            try:
                mark_finished_campaigns(self.ctx)
                deliver_due(self.ctx, client)
                queue_job_events(self.ctx)
                deliver_job_events(self.ctx, client)
            except Exception as exc:
                # The next pass is the retry; an outage is not a bug.
                if classify_database_error(exc) is None:
                    logger.exception("webhook pass failed")
                else:
                    logger.warning("webhook pass skipped, the database is unavailable: %s", exc)
        client.close()
