"""Deadlines and queue forecasts on Postgres with the live scheduler's pass (issue 23): queue position and
predicted start through GET /jobs/{id}, and a campaign turning at risk with one webhook event."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.models import WebhookDelivery, Worker, utcnow
from farm.scheduler.service import Scheduler
from farm.services import webhooks
from farm.settings import Settings
from tests.support.api import auth, truncate_all
from tests.support.factories import ensure_model
from tests.support.receivers import Receiver
from tests.unit.test_deadlines_service import Dispatcher, make_campaign, submit

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(tmp_path, migrated_postgres_url, redis_url):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, broker_url=redis_url,
                        webhook_allow="127.0.0.1", heartbeat_timeout_s=3600)  # a slow run never loses the worker
    ctx = build_context(settings)
    truncate_all(ctx)
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, token = create_user(session, "deadline-ana")
        session.add(Worker(id="w-deadlines", host="h", queue="q-w", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
    yield ctx, create_app(settings, context=ctx).test_client(), token
    truncate_all(ctx)
    ctx.db.dispose()


def test_queue_position_and_at_risk_on_postgres(env):
    ctx, client, token = env
    ids = [submit(client, token, width=512, height=512, steps=30).get_json()["id"] for _ in range(3)]
    receiver = Receiver()
    try:
        campaign_id = make_campaign(client, token, utcnow() + dt.timedelta(seconds=10), 20, receiver.url)
        scheduler = Scheduler(ctx, Dispatcher())
        for _ in range(2):
            scheduler._forecast_due = float("-inf")
            scheduler.run_pass()
        positions = [client.get(f"/api/v1/jobs/{i}", headers=auth(token)).get_json()["queue"] for i in ids]
        queued = [p for p in positions if p is not None]
        # One slot: one job went; the others of the sd class (with the campaign's) wait in queue order.
        assert [p["position"] for p in queued] == [1, 2]
        assert queued[0]["predicted_start"] < queued[1]["predicted_start"]
        view = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(token)).get_json()
        assert view["at_risk"] is True
        with ctx.db.session() as session:
            assert [d.event for d in session.query(WebhookDelivery).filter_by(campaign_id=uuid.UUID(campaign_id))] == \
                ["campaign.at_risk"]
        assert webhooks.deliver_campaign_events(ctx) == 1 and webhooks.deliver_campaign_events(ctx) == 0
        assert json.loads(receiver.received[0][1])["type"] == "campaign.at_risk"
    finally:
        receiver.close()
