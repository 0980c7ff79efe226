"""Standard Webhooks from campaigns and single jobs against local receivers that
verify every delivery with the standardwebhooks package: signatures, the same
webhook-id on retries (dropped as a duplicate), giving up, secrets, the
outbound-address rules."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, Job, WebhookDelivery
from farm.services.webhooks import deliver_due, deliver_job_events, mark_finished_campaigns, queue_job_events
from farm.settings import Settings
from tests.support.factories import ensure_model
from tests.support.api import truncate_all
from tests.support.receivers import RebindingResolver, Receiver, StandardReceiver

pytestmark = pytest.mark.integration
SECRET = "whsec_" + base64.b64encode(b"farm-webhook-test-key-32-bytes!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-of-thirty-two-bytes!").decode()
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


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
    for (job_id,) in ids:
        finish(ctx, job_id)


def finish(ctx, job_id):
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, "w", 30)
        states.start_job(session, job_id, 1, "w", 30)
        states.complete_job(session, job_id, 1, "w", gpu_seconds=1.0)


def wait_for(predicate, ctx, rounds=200):
    """What the scheduler's webhook thread does, pass after pass, until ``predicate``."""
    for _ in range(rounds):
        mark_finished_campaigns(ctx)
        deliver_due(ctx)
        queue_job_events(ctx)
        deliver_job_events(ctx)
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("webhook did not reach the expected state")


def test_campaign_delivery_verifies_and_keeps_its_id_across_retries(farm_api):
    ctx, client, headers = farm_api
    receiver = StandardReceiver(SECRET, fail_first=2)
    answer = client.post("/api/v1/campaigns", json={"name": "hooked", "base": SMALL, "matrix": {"seed": [1, 2]},
                                                    "webhook": {"url": receiver.url, "secret": SECRET}}, headers=headers)
    assert answer.status_code == 201 and answer.get_json()["webhook"] == {"url": receiver.url, "secret": SECRET}
    campaign_id = answer.get_json()["id"]
    wait_for(lambda: True, ctx, rounds=1)
    assert receiver.received == []  # not finished yet: nothing is sent
    finish_all(ctx, campaign_id)
    wait_for(lambda: len(receiver.received) == 3, ctx)
    # Every try verified, carried one id, and was processed once; the retries were dropped by id.
    assert receiver.rejected == 0 and len(set(receiver.ids())) == 1
    assert len(receiver.processed) == 1 and len(receiver.dropped) == 2
    [payload] = receiver.processed.values()
    assert payload["type"] == "campaign.completed" and set(payload) == {"type", "timestamp", "data"}
    assert payload["data"]["id"] == campaign_id and payload["data"]["counts"] == {"succeeded": 2}
    received_headers, body = receiver.received[-1]
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, received_headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", received_headers)
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
    assert (campaign.webhook_state, campaign.webhook_attempts, campaign.status) == ("delivered", 3, "completed")


def test_a_generated_secret_is_shown_once_and_signs(farm_api):
    ctx, client, headers = farm_api
    receiver = StandardReceiver(OTHER_SECRET)
    answer = client.post("/api/v1/campaigns", json={"name": "keyless", "base": SMALL, "webhook": {"url": receiver.url}},
                         headers=headers)
    assert answer.status_code == 201, answer.get_json()
    secret = answer.get_json()["webhook"]["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    receiver.webhook = Webhook(secret)  # what the client keeps from the answer
    client.post(f"/api/v1/campaigns/{answer.get_json()['id']}/cancel", headers=headers)
    wait_for(lambda: receiver.processed, ctx)
    assert receiver.rejected == 0 and [p["type"] for p in receiver.processed.values()] == ["campaign.canceled"]
    shown = client.get(f"/api/v1/campaigns/{answer.get_json()['id']}", headers=headers).get_json()
    assert shown["webhook"]["completion"]["state"] == "delivered" and secret not in json.dumps(shown)
    again = client.post("/api/v1/campaigns", json={"name": "keyless", "base": SMALL, "webhook": {"url": receiver.url}}, headers=headers)
    assert again.get_json()["webhook"]["secret"] != secret  # a new secret for each webhook


def test_a_campaign_secret_stored_before_standard_webhooks_still_signs(farm_api):
    """Campaigns created with a plain-text secret keep working: its UTF-8 bytes
    are the key, which a receiver gives its library as bytes or as whsec_ + base64."""
    ctx, client, headers = farm_api
    legacy = "s3cret-webhook-key-123"
    receiver = StandardReceiver(legacy.encode())
    campaign_id = client.post("/api/v1/campaigns", json={"name": "old", "base": SMALL, "webhook": {"url": receiver.url}},
                              headers=headers).get_json()["id"]
    with ctx.db.transaction() as session:
        session.get(Campaign, uuid.UUID(campaign_id)).webhook_secret = legacy
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers)
    wait_for(lambda: receiver.processed, ctx)
    assert receiver.rejected == 0
    received_headers, body = receiver.received[0]
    assert Webhook("whsec_" + base64.b64encode(legacy.encode()).decode()).verify(body, received_headers)["type"] == "campaign.canceled"


def test_gives_up_after_max_attempts_and_refuses_bad_hooks(farm_api):
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=99)
    campaign_id = client.post("/api/v1/campaigns", json={"name": "doomed", "base": SMALL,
                                                         "webhook": {"url": receiver.url, "secret": SECRET}}, headers=headers).get_json()["id"]
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers)

    def failed():
        with ctx.db.session() as session:
            return session.get(Campaign, uuid.UUID(campaign_id)).webhook_state == "failed"
    wait_for(failed, ctx)
    assert len(receiver.received) == 3 and json.loads(receiver.received[0][1])["type"] == "campaign.canceled"
    # The owner sees on the campaign how the delivery went, and never the secret.
    shown = client.get(f"/api/v1/campaigns/{campaign_id}", headers=headers).get_json()["webhook"]
    assert shown["url"] == receiver.url and shown["completion"]["state"] == "failed"
    assert shown["completion"]["attempts"] == 3 and "500" in shown["completion"]["last_error"]
    assert SECRET not in json.dumps(shown)
    bad = client.post("/api/v1/campaigns", json={"name": "b", "base": SMALL, "webhook": {"url": "ftp://x", "secret": "short"}}, headers=headers)
    assert bad.status_code == 422 and {d["field"] for d in bad.get_json()["error"]["details"]} == {"webhook.url", "webhook.secret"}
    own = client.post("/api/v1/campaigns", json={"name": "b", "base": {**SMALL, "webhook": {"url": receiver.url}},
                                                 "rows": [{}, {"webhook": {"url": receiver.url}}]}, headers=headers)
    assert own.status_code == 422 and {d["field"] for d in own.get_json()["error"]["details"]} == {"base.webhook", "rows.1.webhook"}


@pytest.mark.parametrize("secret", [
    "s3cret-webhook-key-123",  # plain text: accepted from stored campaigns only
    "whsec_",
    "whsec_not*base64*at*all*not*base64*at*all",
    "whsec_" + base64.b64encode(b"x" * 23).decode(),  # a key shorter than 24 bytes
    "whsec_" + base64.b64encode(b"x" * 65).decode(),  # longer than 64
    "WHSEC_" + base64.b64encode(b"x" * 32).decode(),
])
@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/campaigns"])
def test_a_malformed_secret_is_refused_naming_it(farm_api, path, secret):
    ctx, client, headers = farm_api
    hook = {"url": "http://127.0.0.1:9/hook", "secret": secret}
    body = {**SMALL, "webhook": hook} if path.endswith("jobs") else {"name": "b", "base": SMALL, "webhook": hook}
    answer = client.post(path, json=body, headers=headers)
    assert answer.status_code == 422, answer.get_json()
    [problem] = answer.get_json()["error"]["details"]
    assert problem["field"] == "webhook.secret" and "whsec_" in problem["message"]
    with ctx.db.session() as session:
        assert session.execute(select(Job.id)).first() is None


def test_unpadded_and_longest_secrets_are_accepted(farm_api):
    _, client, headers = farm_api
    for key in (b"k" * 31, b"k" * 64):  # 31 bytes: base64 with padding, given without it
        secret = "whsec_" + base64.b64encode(key).decode().rstrip("=")
        answer = client.post("/api/v1/jobs", json={**SMALL, "webhook": {"url": "http://127.0.0.1:9/hook", "secret": secret}},
                             headers=headers)
        assert answer.status_code == 202, answer.get_json()


def test_per_job_events_of_a_campaign_are_signed_and_retried(farm_api):
    ctx, client, headers = farm_api
    receiver = StandardReceiver(SECRET, fail_first=1)
    campaign_id = client.post("/api/v1/campaigns", json={
        "name": "per-job", "base": SMALL, "matrix": {"seed": [1, 2]},
        "webhook": {"url": receiver.url, "secret": SECRET, "per_job": True}}, headers=headers).get_json()["id"]
    finish_all(ctx, campaign_id)
    # 2 jobs' events (the first answered 500 and sent again) and the campaign's end.
    wait_for(lambda: len(receiver.processed) == 3 and len(receiver.received) == 4, ctx)
    assert receiver.rejected == 0 and len(receiver.dropped) == 1
    events = [p for p in receiver.processed.values() if p["type"] == "job.succeeded"]
    with ctx.db.session() as session:
        job_ids = {str(j) for (j,) in session.query(Job.id).filter(Job.campaign_id == uuid.UUID(campaign_id))}
    assert {e["data"]["id"] for e in events} == job_ids and all(e["data"]["campaign"] == campaign_id for e in events)
    wait_for(lambda: True, ctx, rounds=3)
    assert len(receiver.received) == 4  # each job's event is delivered once


def submit_hooked_job(client, headers, hook):
    answer = client.post("/api/v1/jobs", json={**SMALL, "webhook": hook}, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def test_a_single_job_announces_its_success_once(farm_api):
    ctx, client, headers = farm_api
    receiver = StandardReceiver(OTHER_SECRET, fail_first=1)
    accepted = submit_hooked_job(client, headers, {"url": receiver.url})
    secret = accepted["webhook"]["secret"]
    assert accepted["webhook"]["url"] == receiver.url and secret.startswith("whsec_") and secret != OTHER_SECRET
    receiver.webhook = Webhook(secret)  # what the client keeps from the answer
    view = client.get(accepted["polling_url"], headers=headers).get_json()
    assert view["webhook"] == {"url": receiver.url, "state": "waiting", "event": None, "attempts": 0, "last_error": None,
                               "next_at": None}
    wait_for(lambda: True, ctx, rounds=2)
    assert receiver.received == []  # nothing until the job ends
    finish(ctx, uuid.UUID(accepted["id"]))
    wait_for(lambda: len(receiver.received) == 2, ctx)
    # Answered 500 once, sent again with the same id, dropped by the receiver.
    assert receiver.rejected == 0 and len(set(receiver.ids())) == 1 and receiver.dropped == receiver.ids()[:1]
    [payload] = receiver.processed.values()
    assert payload["type"] == "job.succeeded" and set(payload) == {"type", "timestamp", "data"}
    assert payload["data"]["id"] == accepted["id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["campaign"] is None and payload["data"]["interface"] == "api"
    view = client.get(accepted["polling_url"], headers=headers).get_json()
    assert view["webhook"]["state"] == "delivered" and view["webhook"]["event"] == "job.succeeded"
    assert view["webhook"]["attempts"] == 2 and view["webhook"]["last_error"] is None
    listed = client.get("/api/v1/jobs", headers=headers).get_json()["jobs"]
    assert [job["webhook"]["state"] for job in listed] == ["delivered"]
    # The secret is in no view, and not in the request the lineage records.
    assert secret not in json.dumps(view) + json.dumps(listed)
    with ctx.db.session() as session:
        job = session.get(Job, uuid.UUID(accepted["id"]))
        assert "webhook" not in job.request and secret not in json.dumps(job.params)
    wait_for(lambda: True, ctx, rounds=3)
    assert len(receiver.received) == 2


def test_a_single_job_announces_its_cancellation(farm_api):
    ctx, client, headers = farm_api
    receiver = StandardReceiver(SECRET)
    accepted = submit_hooked_job(client, headers, {"url": receiver.url, "secret": SECRET})
    assert accepted["webhook"] == {"url": receiver.url, "secret": SECRET}
    canceled = client.post(f"/api/v1/jobs/{accepted['id']}/cancel", headers=headers).get_json()
    assert canceled["status"] == "canceled" and canceled["webhook"]["state"] == "waiting"
    other = submit_hooked_job(client, headers, {"url": receiver.url, "secret": SECRET})
    client.post(f"/api/v1/jobs/{other['id']}/cancel", headers=headers)
    wait_for(lambda: len(receiver.processed) == 2, ctx)
    assert receiver.rejected == 0 and receiver.dropped == []
    assert sorted((p["type"], p["data"]["id"]) for p in receiver.processed.values()) == sorted(
        [("job.canceled", accepted["id"]), ("job.canceled", other["id"])])
    assert len(set(receiver.ids())) == 2  # two deliveries, two ids
    assert client.get(accepted["polling_url"], headers=headers).get_json()["webhook"]["state"] == "delivered"
    with ctx.db.session() as session:
        rows = session.execute(select(WebhookDelivery.event, WebhookDelivery.campaign_id)).all()
    assert sorted(rows) == [("job.canceled", None)] * 2


def test_a_job_webhook_gives_up_after_max_attempts(farm_api):
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=99)
    accepted = submit_hooked_job(client, headers, {"url": receiver.url, "secret": SECRET})
    client.post(f"/api/v1/jobs/{accepted['id']}/cancel", headers=headers)
    wait_for(lambda: client.get(accepted["polling_url"], headers=headers).get_json()["webhook"]["state"] == "failed", ctx)
    shown = client.get(accepted["polling_url"], headers=headers).get_json()["webhook"]
    assert shown["attempts"] == 3 == len(receiver.received) and shown["last_error"] == "HTTP 500"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "[::1]",
                                  "[::ffff:127.0.0.1]", "10.0.0.1", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                  "100.64.0.1", "0.0.0.0", "224.0.0.1", "metadata.google.internal"])
def test_webhooks_to_addresses_that_are_not_public_are_refused(farm_api, host):
    ctx, _, headers = farm_api
    client = create_app(ctx.settings.model_copy(update={"webhook_allow": None}), context=_without_allow(ctx)).test_client()
    hook = {"url": f"http://{host}:8080/hook", "secret": SECRET}
    for path, body in (("/api/v1/campaigns", {"name": "ssrf", "base": SMALL, "webhook": hook}),
                       ("/api/v1/jobs", {**SMALL, "webhook": hook})):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == 422, answer.get_json()
        [problem] = answer.get_json()["error"]["details"]
        assert problem["field"] == "webhook.url" and ("address" in problem["message"] or "metadata" in problem["message"])
    with ctx.db.session() as session:
        assert session.execute(select(Job.id)).first() is None


def test_delivery_checks_the_address_again(farm_api):
    """A hook accepted while its host was allowed (or resolved elsewhere) is
    not delivered once it points at an address that is not public."""
    ctx, client, headers = farm_api
    receiver = Receiver(fail_first=0)
    campaign_id = client.post("/api/v1/campaigns", json={"name": "rebound", "base": SMALL,
                                                         "webhook": {"url": receiver.url, "secret": SECRET}},
                              headers=headers).get_json()["id"]
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers)
    job = submit_hooked_job(client, headers, {"url": receiver.url})
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers)
    strict = _without_allow(ctx)

    def failed():
        with ctx.db.session() as session:
            return (session.get(Campaign, uuid.UUID(campaign_id)).webhook_state == "failed"
                    and session.execute(select(WebhookDelivery.state)).scalar_one() == "failed")
    wait_for(failed, strict)
    assert receiver.received == []
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        delivery = session.execute(select(WebhookDelivery)).scalar_one()
    for error in (campaign.webhook_last_error, delivery.last_error):
        assert error.startswith("refused: ") and "loopback" in error


def _without_allow(ctx):
    return build_context(ctx.settings.model_copy(update={"webhook_allow": None}), events=LocalEvents())


def test_delivery_connects_to_the_address_it_checked(farm_api, monkeypatch):
    """DNS rebinding (issue 18): the hook's name answers the allowed 127.0.0.1
    when the campaign is created and when the delivery checks it, and the
    refused 127.0.0.2 to any later lookup. The delivery goes to the checked
    address with the URL's Host header; a trap on 127.0.0.2 hears nothing."""
    ctx, client, headers = farm_api
    receiver = StandardReceiver(SECRET)
    trap = Receiver(fail_first=0, host="127.0.0.2", port=receiver.port)
    resolver = RebindingResolver("hooks.example.test", ["127.0.0.1", "127.0.0.1"], then="127.0.0.2")
    monkeypatch.setattr("socket.getaddrinfo", resolver)
    url = f"http://hooks.example.test:{receiver.port}/hook"
    answer = client.post("/api/v1/campaigns", json={"name": "pinned", "base": SMALL, "webhook": {"url": url, "secret": SECRET}},
                         headers=headers)
    assert answer.status_code == 201, answer.get_json()
    client.post(f"/api/v1/campaigns/{answer.get_json()['id']}/cancel", headers=headers)
    wait_for(lambda: receiver.received, ctx)
    assert trap.received == [] and len(receiver.received) == 1
    received_headers, _ = receiver.received[0]
    assert received_headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert receiver.rejected == 0 and len(receiver.processed) == 1
    assert resolver.lookups == ["127.0.0.1", "127.0.0.1"]  # creation and delivery; nothing resolved the name again
    receiver.close()
    trap.close()


def test_only_the_leading_scheduler_sends_webhooks(farm_api):
    """A standby scheduler (another holds the leader lock) sends nothing; once
    it leads, each event goes out once. Before, every scheduler process ran a
    sender, and leader and standby raced for the same due rows."""
    import threading

    from sqlalchemy import text

    from farm.scheduler.service import LEADER_LOCK_KEY, run_scheduler

    ctx, client, headers = farm_api
    receiver = Receiver()
    other = ctx.db.engine.connect()
    try:
        assert other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_KEY}).scalar()
        other.commit()
        job = submit_hooked_job(client, headers, {"url": receiver.url, "secret": SECRET})
        finish(ctx, uuid.UUID(job["id"]))
        stop = threading.Event()
        standby = threading.Thread(target=run_scheduler, args=(ctx, stop), daemon=True)
        standby.start()
        try:
            time.sleep(3.5)  # three sender intervals as a standby
            assert receiver.received == []
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK_KEY})
            other.commit()
            deadline = time.monotonic() + 30
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.5)  # later passes must not send it again
            assert [json.loads(body)["type"] for _, body in receiver.received] == ["job.succeeded"]
        finally:
            stop.set()
            standby.join(timeout=10)
    finally:
        other.close()
        receiver.close()
