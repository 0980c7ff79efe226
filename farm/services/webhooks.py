"""Webhooks: a job's or a campaign's end announced to a URL, as Standard
Webhooks (standardwebhooks.com) define it, so receivers verify with any
Standard Webhooks library.

Each delivery is a JSON POST of the recommended envelope ``{"type":
"job.succeeded", "timestamp": <when it happened>, "data": {...}}`` with the
headers ``webhook-id`` (the same on every retry of one delivery, different
between deliveries, so a receiver drops duplicates by it),
``webhook-timestamp`` (the attempt's Unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), signed by the
``standardwebhooks`` package. Secrets are ``whsec_`` and base64 key bytes;
farm generates one when the client gives none. Campaign secrets stored before
(plain text, no prefix) still sign: their UTF-8 bytes are the key, which a
receiver gives its library as bytes or as ``whsec_`` + their base64.

What is announced: a campaign's end (completed or canceled); each job of a
campaign that asked for per-job events; a job submitted with its own webhook
(``farm.spec.WebhookRequest``). Deliveries are retried with exponential
backoff until a 2xx or ``FARM_WEBHOOK_MAX_ATTEMPTS``; the scheduler process
sends them from its own thread so a slow receiver never delays placement. Each
delivery checks the URL again and connects to exactly the address that check
approved (:class:`farm.outbound.OutboundClient`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import threading
import uuid
from typing import Any, Callable, Iterable

import urllib3
from sqlalchemy import exists, func, select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from farm.context import FarmContext
from farm.db import classify_database_error
from farm.metrics import WEBHOOK_DELIVERIES
from farm.models import Campaign, CampaignStatus, Job, JobStatus, Output, WebhookDelivery, utcnow
from farm.outbound import OutboundClient, OutboundRefused, check_url
from farm.spec import WEBHOOK_SECRET_PREFIX, FieldProblem, RequestError, WebhookRequest

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600.0
NEW_KEY_BYTES = 32
FINAL_JOB_STATUSES = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.canceled.value)
# How a delivery's last_error starts when the outbound check refused its address.
REFUSED = "refused: "


def new_secret() -> str:
    """A fresh Standard Webhooks secret (the package verifies and signs but
    makes none)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode()


def accept(webhook: WebhookRequest, settings) -> tuple[str, str]:
    """The URL and secret to keep for a webhook a client asked for: the URL
    checked now (422 naming ``webhook.url`` if the farm may not reach it), the
    client's secret or a new one."""
    try:
        check_url(webhook.url, settings.webhook_allow)
    except OutboundRefused as exc:
        raise RequestError([FieldProblem("webhook.url", str(exc))]) from None
    return webhook.url, webhook.secret or new_secret()


def signer(secret: str) -> Webhook:
    """The signer of a stored secret: a ``whsec_`` secret as the spec reads it;
    a campaign secret from before Standard Webhooks (plain text) as its UTF-8
    bytes, so receivers that verify those keep working."""
    return Webhook(secret if secret.startswith(WEBHOOK_SECRET_PREFIX) else secret.encode())


def message_id(kind: str, object_id: uuid.UUID, event: str) -> str:
    """The webhook-id of one delivery: derived from what is announced, so every
    retry carries the same id and two deliveries never share one."""
    return f"msg_{kind}_{object_id.hex}_{event.rpartition('.')[2]}"


def envelope(event: str, occurred_at: dt.datetime | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event, "timestamp": (occurred_at or utcnow()).isoformat(), "data": data}


def _post(client: OutboundClient, url: str, secret: str | None, msg_id: str, payload: dict) -> str | None:
    """Send one signed event; None on a 2xx, else what went wrong. The client
    checks the URL again (what it resolves to may have changed since it was
    given) and connects to the address it checked."""
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    now = utcnow()
    try:
        signature = signer(secret or "").sign(msg_id, now, body)
    except (EmptyWebhookSecretError, ValueError) as exc:  # a stored secret it cannot use: this delivery fails, the others go on
        return f"cannot sign with the stored secret: {type(exc).__name__}"
    headers = {"Content-Type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    try:
        status = client.post(url, body, headers)
    except OutboundRefused as exc:
        return f"{REFUSED}{exc}"[:500]
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if 200 <= status < 300 else f"HTTP {status}"


def _backoff_s(settings, attempts: int) -> float:
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)


def _record(row, settings, error: str | None, what: str) -> bool:
    """One attempt's outcome on a delivery (a WebhookDelivery, or a Campaign
    through its webhook_* columns): delivered, failed for good, or due again
    after the backoff. True when delivered."""
    prefix = "webhook_" if isinstance(row, Campaign) else ""
    attempts = getattr(row, prefix + "attempts") + 1
    setattr(row, prefix + "attempts", attempts)
    setattr(row, prefix + "last_error", error)
    if error is None:
        setattr(row, prefix + "state", "delivered")
        WEBHOOK_DELIVERIES.labels(result="delivered").inc()
        return True
    if attempts >= settings.webhook_max_attempts:
        setattr(row, prefix + "state", "failed")
        logger.warning("webhook of %s failed for good: %s", what, error)
        result = "gave_up"
    else:
        backoff = _backoff_s(settings, attempts)
        setattr(row, prefix + "next_at", utcnow() + dt.timedelta(seconds=backoff))
        logger.info("webhook of %s: %s; retry in %.1fs", what, error, backoff)
        result = "retrying"
    # An address the outbound check refused is counted as such, whatever follows.
    WEBHOOK_DELIVERIES.labels(result="refused" if error.startswith(REFUSED) else result).inc()
    return False


def mark_finished_campaigns(ctx: FarmContext) -> int:
    """Campaigns whose jobs are all final become completed; their webhook becomes due."""
    unfinished = exists().where(Job.campaign_id == Campaign.id,
                                Job.status.in_([JobStatus.queued.value, JobStatus.assigned.value, JobStatus.running.value]))
    with ctx.db.transaction() as session:
        done = session.execute(
            select(Campaign).where(Campaign.status.in_([CampaignStatus.active.value, CampaignStatus.paused.value]), ~unfinished)
        ).scalars().all()
        for campaign in done:
            campaign.complete(utcnow())
        # Canceled and completed campaigns with a URL and no delivery yet are due now.
        due = session.execute(
            select(Campaign).where(Campaign.webhook_url.is_not(None), Campaign.webhook_state.is_(None),
                                   Campaign.status.in_([CampaignStatus.completed.value, CampaignStatus.canceled.value]))
        ).scalars().all()
        for campaign in due:
            campaign.webhook_state, campaign.webhook_next_at = "pending", utcnow()
    return len(done)


def _campaign_payload(session, campaign: Campaign) -> dict[str, Any]:
    counts = dict(session.execute(select(Job.status, func.count()).where(Job.campaign_id == campaign.id).group_by(Job.status)).all())
    return envelope(f"campaign.{campaign.status}", campaign.finished_at or campaign.updated_at, {
        "id": str(campaign.id), "name": campaign.name, "status": campaign.status, "jobs": campaign.job_count,
        "counts": counts, "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
        "manifest_url": f"/api/v1/campaigns/{campaign.id}/manifest"})


def _job_payload(job: Job, event: str) -> dict[str, Any]:
    return envelope(event, job.finished_at, {
        "id": str(job.id), "status": event.split(".", 1)[1], "campaign": str(job.campaign_id) if job.campaign_id else None,
        "interface": job.interface, "attempt": job.attempt, "error": job.error,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None, "polling_url": f"/api/v1/jobs/{job.id}",
        "outputs": [{"id": str(o.id), "url": f"/api/v1/outputs/{o.id}/image", "lineage_url": f"/api/v1/outputs/{o.id}"}
                    for o in job.outputs]})


def queue_job_events(ctx: FarmContext) -> int:
    """Make deliveries due for jobs that ended: a job's own webhook (its waiting
    row gets the event), and a new row per job of a campaign that asked for
    per-job events."""
    delivered_already = exists().where(WebhookDelivery.job_id == Job.id)
    with ctx.db.transaction() as session:
        waiting = session.execute(
            select(WebhookDelivery, Job.status).join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.state == "waiting", Job.status.in_(FINAL_JOB_STATUSES)).limit(1000)
        ).all()
        for delivery, status in waiting:
            delivery.event, delivery.state, delivery.next_at = f"job.{status}", "pending", utcnow()
        rows = session.execute(
            select(Job.id, Job.campaign_id, Job.status).join(Campaign, Campaign.id == Job.campaign_id)
            .where(Campaign.webhook_per_job, Job.status.in_(FINAL_JOB_STATUSES), ~delivered_already).limit(1000)
        ).all()
        for row in rows:
            session.add(WebhookDelivery(campaign_id=row.campaign_id, job_id=row.id, event=f"job.{row.status}"))
    return len(waiting) + len(rows)


def deliver_job_events(ctx: FarmContext, client: OutboundClient | None = None) -> int:
    """Send every due job event once (to the job's own webhook, or its
    campaign's); returns how many were delivered."""
    client = client or OutboundClient(ctx.settings.webhook_allow)
    with ctx.db.session() as session:
        due = session.execute(
            select(WebhookDelivery, Job, Campaign.webhook_url, Campaign.webhook_secret)
            .join(Job, Job.id == WebhookDelivery.job_id).outerjoin(Campaign, Campaign.id == WebhookDelivery.campaign_id)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_at <= utcnow()).limit(200)
        ).all()
        work = [(delivery.id, delivery.job_id, delivery.event, job.webhook_url or campaign_url,
                 job.webhook_secret if job.webhook_url else campaign_secret, _job_payload(job, delivery.event))
                for delivery, job, campaign_url, campaign_secret in due]
    delivered = 0
    for delivery_id, job_id, event, url, secret, payload in work:
        error = _post(client, url, secret, message_id("job", job_id, event), payload)
        with ctx.db.transaction() as session:
            delivered += _record(session.get(WebhookDelivery, delivery_id), ctx.settings, error, f"job {job_id}")
    return delivered


AT_RISK_EVENT = "campaign.at_risk"


def queue_at_risk_event(session, campaign: Campaign) -> None:
    """A campaign's prediction just passed its deadline: announce it once (per transition) to its webhook, if any.

    The delivery row carries a fresh id in job_id: each transition is its own
    message (and webhook-id), and the job deliveries' join skips it.
    """
    if campaign.webhook_url:
        session.add(WebhookDelivery(campaign_id=campaign.id, job_id=uuid.uuid4(), event=AT_RISK_EVENT))


def _at_risk_payload(campaign: Campaign, occurred_at: dt.datetime) -> dict[str, Any]:
    return envelope(AT_RISK_EVENT, occurred_at, {
        "id": str(campaign.id), "name": campaign.name, "status": campaign.status,
        "deadline": campaign.deadline.isoformat() if campaign.deadline else None,
        "predicted_finish_at": campaign.predicted_finish_at.isoformat() if campaign.predicted_finish_at else None,
        "polling_url": f"/api/v1/campaigns/{campaign.id}"})


def deliver_campaign_events(ctx: FarmContext, client: OutboundClient | None = None) -> int:
    """Send every due campaign event other than the end (campaign.at_risk) once; returns how many were delivered."""
    client = client or OutboundClient(ctx.settings.webhook_allow)
    with ctx.db.session() as session:
        due = session.execute(
            select(WebhookDelivery, Campaign).join(Campaign, Campaign.id == WebhookDelivery.campaign_id)
            .where(WebhookDelivery.event == AT_RISK_EVENT, WebhookDelivery.state == "pending",
                   WebhookDelivery.next_at <= utcnow()).limit(200)
        ).all()
        work = [(delivery.id, delivery.job_id, campaign.webhook_url, campaign.webhook_secret,
                 _at_risk_payload(campaign, delivery.created_at)) for delivery, campaign in due]
    delivered = 0
    for delivery_id, message, url, secret, payload in work:
        error = _post(client, url, secret, message_id("campaign", message, AT_RISK_EVENT), payload)
        with ctx.db.transaction() as session:
            delivered += _record(session.get(WebhookDelivery, delivery_id), ctx.settings, error, f"campaign event {message}")
    return delivered


def deliver_due(ctx: FarmContext, client: OutboundClient | None = None) -> int:
    """Send every due campaign webhook once; returns how many were delivered."""
    client = client or OutboundClient(ctx.settings.webhook_allow)
    with ctx.db.session() as session:
        due = session.execute(
            select(Campaign).where(Campaign.webhook_state == "pending", Campaign.webhook_next_at <= utcnow())
        ).scalars().all()
        work = [(c.id, c.webhook_url, c.webhook_secret, _campaign_payload(session, c)) for c in due]
    delivered = 0
    for campaign_id, url, secret, payload in work:
        # One delivery per campaign (its state is never reset), whatever its final status.
        error = _post(client, url, secret, message_id("campaign", campaign_id, "end"), payload)
        with ctx.db.transaction() as session:
            delivered += _record(session.get(Campaign, campaign_id), ctx.settings, error, f"campaign {campaign_id}")
    return delivered


def job_webhooks(ctx: FarmContext, jobs: Iterable[Job]) -> dict[uuid.UUID, dict[str, Any]]:
    """Where each job's own webhook stands, for the job view (one query for all
    of them; never the secret): url, state (waiting until the job ends, then
    pending, delivered or failed), event, attempts, last_error, next_at."""
    hooked = {job.id: job.webhook_url for job in jobs if job.webhook_url}
    if not hooked:
        return {}
    with ctx.db.session() as session:
        rows = {row.job_id: row for row in session.execute(
            select(WebhookDelivery).where(WebhookDelivery.job_id.in_(list(hooked)), WebhookDelivery.campaign_id.is_(None))).scalars()}
    views = {}
    for job_id, url in hooked.items():
        row = rows.get(job_id)
        views[job_id] = {"url": url, "state": row.state if row else "waiting", "event": row.event if row else None,
                         "attempts": row.attempts if row else 0, "last_error": row.last_error if row else None,
                         "next_at": row.next_at.isoformat() if row and row.state == "pending" else None}
    return views


class WebhookSender:
    """The leading scheduler's webhook thread."""

    def __init__(self, ctx: FarmContext, interval_s: float = 1.0) -> None:
        self.ctx = ctx
        self.interval_s = interval_s

    def run(self, stop: threading.Event, active: Callable[[], bool] = lambda: True) -> None:
        """Deliver what is due every ``interval_s`` while ``active()``.

        ``active`` is the scheduler's leadership: a standby that also sent
        would race the leader for the same due rows and post some twice."""
        client = OutboundClient(self.ctx.settings.webhook_allow)
        while not stop.wait(self.interval_s):
            if not active():
                continue
            try:
                mark_finished_campaigns(self.ctx)
                deliver_due(self.ctx, client)
                deliver_campaign_events(self.ctx, client)
                queue_job_events(self.ctx)
                deliver_job_events(self.ctx, client)
            except Exception as exc:
                # The next pass is the retry; an outage is not a bug.
                if classify_database_error(exc) is None:
                    logger.exception("webhook pass failed")
                else:
                    logger.warning("webhook pass skipped, the database is unavailable: %s", exc)
        client.close()
