"""Signed campaign webhooks against a local receiver: signature, retries with backoff, giving up."""

from __future__ import annotations

import json
import uuid

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, Job
from farm.services.webhooks import SIGNATURE_HEADER, deliver_due, mark_finished_campaigns, verify
from farm.settings import Settings
from tests.support.factories import ensure_model
from tests.support.api import truncate_all
from tests.support.receivers import RebindingResolver, Receiver

pytestmark = pytest.mark.integration
SECRET = "s3cret-webhook-key-123"


@pytest.fixture()
def farm_api(tmp_path, migrated_postgres_url):
    # The receivers listen on loopback, which webhooks reach only when allowed.
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, webhook_backoff_s=0.01, webhook_max_attempts=3,
                        webhook_allow="127.0.0.1")
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, token = create_user(session, f"ana-{uuid.uuid4().hex[:6]}")
    yield ctx, create_app(settings, context=ctx).test_client(), {"Authorization": f"Bearer {token}"}
    truncate_all(ctx)
    ctx.db.dispose()


def finish_all(ctx, campaign_id):
    with ctx.db.session() as session:
        ids = session.query(Job.id).filter(Job.campaign_id == uuid.UUID(campaign_id)).all()
    with ctx.db.transaction() as session:
        for (job_id,) in ids:
            states.assign_job(session, job_id, 1, "w", 30)
            states.start_job(session, job_id, 1, "w", 30)
            states.complete_job(session, job_id, 1, "w", gpu_seconds=1.0)


def wait_for(predicate, ctx, rounds=200):
    import time

    for _ in range(rounds):
        mark_finished_campaigns(ctx)
        deliver_due(ctx)
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("webhook did not reach the expected state")


def test_signed_delivery_with_retries(farm_api):
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=2)
    campaign_id = client.post("/api/v1/campaigns", json={"name": "hooked", "base": {"prompt": "x", "width": 64, "height": 64, "steps": 2},
                                                         "matrix": {"seed": [1, 2]}, "webhook": {"url": receiver.url, "secret": SECRET}},
                              headers=headers).get_json()["id"]
    mark_finished_campaigns(ctx)
    deliver_due(ctx)
    assert receiver.received == []  # not finished yet: nothing is sent
    finish_all(ctx, campaign_id)
    wait_for(lambda: len(receiver.received) == 3, ctx)
    headers_, body = receiver.received[-1]
    assert verify(SECRET, body, headers_[SIGNATURE_HEADER])
    assert not verify("another-secret-value", body, headers_[SIGNATURE_HEADER])
    assert not verify(SECRET, body + b" ", headers_[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["event"] == "campaign.completed" and payload["campaign"]["counts"] == {"succeeded": 2}
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
    assert (campaign.webhook_state, campaign.webhook_attempts, campaign.status) == ("delivered", 3, "completed")


def test_gives_up_after_max_attempts_and_refuses_bad_hooks(farm_api):
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=99)
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    campaign_id = client.post("/api/v1/campaigns", json={"name": "doomed", "base": base,
                                                         "webhook": {"url": receiver.url, "secret": SECRET}}, headers=headers).get_json()["id"]
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers)

    def failed():
        with ctx.db.session() as session:
            return session.get(Campaign, uuid.UUID(campaign_id)).webhook_state == "failed"
    wait_for(failed, ctx)
    assert len(receiver.received) == 3 and json.loads(receiver.received[0][1])["event"] == "campaign.canceled"
    # The owner sees on the campaign how the delivery went, and never the secret.
    shown = client.get(f"/api/v1/campaigns/{campaign_id}", headers=headers).get_json()["webhook"]
    assert shown["url"] == receiver.url and shown["completion"]["state"] == "failed"
    assert shown["completion"]["attempts"] == 3 and "500" in shown["completion"]["last_error"]
    assert SECRET not in json.dumps(shown)
    bad = client.post("/api/v1/campaigns", json={"name": "b", "base": base, "webhook": {"url": "ftp://x", "secret": "short"}}, headers=headers)
    assert bad.status_code == 422 and {d["field"] for d in bad.get_json()["error"]["details"]} == {"webhook.url", "webhook.secret"}


def test_per_job_events_are_signed_and_retried(farm_api):
    from farm.services.webhooks import deliver_job_events, queue_job_events

    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=1)
    campaign_id = client.post("/api/v1/campaigns", json={
        "name": "per-job", "base": {"prompt": "x", "width": 64, "height": 64, "steps": 2}, "matrix": {"seed": [1, 2]},
        "webhook": {"url": receiver.url, "secret": SECRET, "per_job": True}}, headers=headers).get_json()["id"]
    finish_all(ctx, campaign_id)
    import time

    for _ in range(200):
        queue_job_events(ctx)
        deliver_job_events(ctx)
        events = [json.loads(body) for _, body in receiver.received]
        if sum(1 for e in events if e["event"] == "job.succeeded") >= 3:  # 2 jobs + 1 retried after the first 500
            break
        time.sleep(0.02)
    delivered = [json.loads(body) for h, body in receiver.received if verify(SECRET, body, h[SIGNATURE_HEADER])]
    assert len(delivered) == len(receiver.received) == 3
    with ctx.db.session() as session:
        job_ids = {str(j) for (j,) in session.query(Job.id).filter(Job.campaign_id == uuid.UUID(campaign_id))}
    assert {e["job"]["id"] for e in delivered} == job_ids and all(e["campaign_id"] == campaign_id for e in delivered)
    assert all(e["job"]["status"] == "succeeded" for e in delivered)
    queue_job_events(ctx)
    deliver_job_events(ctx)
    assert len(receiver.received) == 3  # each job's event is delivered once


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "[::1]",
                                  "[::ffff:127.0.0.1]", "10.0.0.1", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                  "100.64.0.1", "0.0.0.0", "224.0.0.1", "metadata.google.internal"])
def test_webhooks_to_addresses_that_are_not_public_are_refused(farm_api, host):
    ctx, _, headers = farm_api
    client = create_app(ctx.settings.model_copy(update={"webhook_allow": None}), context=_without_allow(ctx)).test_client()
    answer = client.post("/api/v1/campaigns", json={"name": "ssrf", "base": {"prompt": "x", "width": 64, "height": 64, "steps": 2},
                                                    "webhook": {"url": f"http://{host}:8080/hook", "secret": SECRET}},
                         headers=headers)
    assert answer.status_code == 422, answer.get_json()
    [problem] = answer.get_json()["error"]["details"]
    assert problem["field"] == "webhook.url" and ("address" in problem["message"] or "metadata" in problem["message"])


def test_delivery_checks_the_address_again(farm_api):
    """A hook accepted while its host was allowed (or resolved elsewhere) is
    not delivered once it points at an address that is not public."""
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=0)
    campaign_id = client.post("/api/v1/campaigns", json={"name": "rebound", "base": {"prompt": "x", "width": 64, "height": 64,
                                                                                      "steps": 2},
                                                         "webhook": {"url": receiver.url, "secret": SECRET}},
                              headers=headers).get_json()["id"]
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers)
    strict = _without_allow(ctx)

    def failed():
        with ctx.db.session() as session:
            return session.get(Campaign, uuid.UUID(campaign_id)).webhook_state == "failed"
    wait_for(failed, strict)
    assert receiver.received == []
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
    assert campaign.webhook_last_error.startswith("refused: ") and "loopback" in campaign.webhook_last_error


def _without_allow(ctx):
    return build_context(ctx.settings.model_copy(update={"webhook_allow": None}), events=LocalEvents())


def test_delivery_connects_to_the_address_it_checked(farm_api, monkeypatch):
    """DNS rebinding (issue 18): the hook's name answers the allowed 127.0.0.1
    when the campaign is created and when the delivery checks it, and the
    refused 127.0.0.2 to any later lookup. The delivery goes to the checked
    address with the URL's Host header; a trap on 127.0.0.2 hears nothing."""
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=0)
    trap = Receiver(fail_first=0, host="127.0.0.2", port=receiver.port)
    resolver = RebindingResolver("hooks.example.test", ["127.0.0.1", "127.0.0.1"], then="127.0.0.2")
    monkeypatch.setattr("socket.getaddrinfo", resolver)
    url = f"http://hooks.example.test:{receiver.port}/hook"
    answer = client.post("/api/v1/campaigns", json={"name": "pinned", "base": {"prompt": "x", "width": 64, "height": 64, "steps": 2},
                                                    "webhook": {"url": url, "secret": SECRET}}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    client.post(f"/api/v1/campaigns/{answer.get_json()['id']}/cancel", headers=headers)
    wait_for(lambda: receiver.received, ctx)
    assert trap.received == [] and len(receiver.received) == 1
    received_headers, body = receiver.received[0]
    assert received_headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert verify(SECRET, body, received_headers[SIGNATURE_HEADER])
    assert resolver.lookups == ["127.0.0.1", "127.0.0.1"]  # creation and delivery; nothing resolved the name again
    receiver.close()
    trap.close()
