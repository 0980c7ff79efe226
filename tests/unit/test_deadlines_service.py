"""Deadlines and queue forecasts through the API and the live scheduler on the embedded database (issue 23):
deadline validation, the job's queue position and predicted start after a pass, campaigns at risk with one
webhook event per transition, and misses recorded at the end."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, Job, WebhookDelivery, Worker, utcnow
from farm.scheduler.forecast import forecast
from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState
from farm.scheduler.service import Scheduler
from farm.services import webhooks
from tests.support.api import assert_error, auth
from tests.support.factories import ensure_model, make_job
from tests.support.receivers import Receiver


class Dispatcher:
    def __init__(self) -> None:
        self.sent = []

    def send(self, job_id, attempt, queue, evict=()) -> None:
        self.sent.append(job_id)

    def send_preload(self, queue, model_id, evict=()) -> None:
        pass


@pytest.fixture()
def env(sqlite_settings):
    sqlite_settings.webhook_allow = "127.0.0.1"
    sqlite_settings.heartbeat_timeout_s = 3600  # w1 never heartbeats: a slow run must not lose it between passes
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, alice = create_user(session, "alice")
        session.add(Worker(id="w1", host="h", queue="q-w1", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
    app = create_app(sqlite_settings, context=ctx)
    yield ctx, app.test_client(), alice
    ctx.db.dispose()


def iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def submit(client, token, **body):
    return client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, **body},
                       headers=auth(token))


def test_a_job_deadline_must_have_a_zone_and_be_in_the_future(env):
    ctx, client, token = env
    error = assert_error(submit(client, token, deadline=iso(utcnow() - dt.timedelta(minutes=1))), 422, "deadline")
    assert "in the past" in json.dumps(error["details"])
    error = assert_error(submit(client, token, deadline="2999-01-01T10:00:00"), 422, "deadline")
    assert "time zone" in json.dumps(error["details"])
    assert_error(submit(client, token, deadline="next tuesday"), 422, "deadline")
    due = utcnow() + dt.timedelta(hours=1)
    response = submit(client, token, deadline=iso(due))
    assert response.status_code == 202
    body = client.get(f"/api/v1/jobs/{response.get_json()['id']}", headers=auth(token)).get_json()
    assert dt.datetime.fromisoformat(body["deadline"]) == due.replace(microsecond=due.microsecond)
    assert body["deadline_missed"] is False and body["at_risk"] is False
    assert "deadline" not in body["params"]  # scheduling, not rendering


def test_a_campaign_deadline_in_the_past_is_refused_and_its_jobs_take_none_of_their_own(env):
    ctx, client, token = env
    base = {"prompt": "p", "width": 64, "height": 64, "steps": 2}
    past = iso(utcnow() - dt.timedelta(hours=1))
    assert_error(client.post("/api/v1/campaigns", json={"name": "c", "base": base, "rows": [{}], "deadline": past},
                             headers=auth(token)), 422, "deadline")
    response = client.post("/api/v1/campaigns", json={"name": "c", "base": {**base, "deadline": iso(utcnow())},
                                                      "rows": [{}]}, headers=auth(token))
    error = assert_error(response, 422, "base.deadline")
    assert "give deadline on the campaign" in json.dumps(error["details"])


def test_queued_jobs_get_a_position_and_a_predicted_start_from_the_last_pass(env):
    ctx, client, token = env
    # Renders long enough (512x512, 30 steps) that the predicted starts differ at 0.1 s.
    ids = [submit(client, token, width=512, height=512, steps=30).get_json()["id"] for _ in range(3)]
    body = client.get(f"/api/v1/jobs/{ids[0]}", headers=auth(token)).get_json()
    assert body["queue"] == {"position": None, "predicted_start": None, "computed_at": None}  # no pass yet
    dispatcher = Dispatcher()
    Scheduler(ctx, dispatcher).run_pass()
    assert [str(i) for i in dispatcher.sent] == ids[:1]  # one worker, one slot: the oldest goes
    first = client.get(f"/api/v1/jobs/{ids[0]}", headers=auth(token)).get_json()
    assert first["status"] == "assigned" and first["queue"] is None
    second, third = (client.get(f"/api/v1/jobs/{i}", headers=auth(token)).get_json()["queue"] for i in ids[1:])
    assert (second["position"], third["position"]) == (1, 2)
    # The slot is busy with the first job, so both wait; the third starts after the second.
    computed = dt.datetime.fromisoformat(second["computed_at"])
    assert computed < dt.datetime.fromisoformat(second["predicted_start"]) < dt.datetime.fromisoformat(third["predicted_start"])


def make_campaign(client, token, deadline: dt.datetime, jobs: int, webhook_url: str | None) -> str:
    body = {"name": "launch", "base": {"prompt": "p", "width": 512, "height": 512, "steps": 30}, "rows": [{}] * jobs,
            "deadline": iso(deadline)}
    if webhook_url:
        body["webhook"] = {"url": webhook_url}
    response = client.post("/api/v1/campaigns", json=body, headers=auth(token))
    assert response.status_code in (200, 201, 202), response.get_json()
    return response.get_json()["id"]


def test_a_campaign_turns_at_risk_once_and_its_webhook_hears_it_once(env):
    ctx, client, token = env
    receiver = Receiver()
    try:
        # Twenty 512x512 renders of 30 steps on one GPU cannot end within ten seconds.
        campaign_id = make_campaign(client, token, utcnow() + dt.timedelta(seconds=10), 20, receiver.url)
        scheduler = Scheduler(ctx, Dispatcher())
        for _ in range(3):  # the forecast is written each time it is due
            scheduler._forecast_due = float("-inf")
            scheduler.run_pass()
        view = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(token)).get_json()
        assert view["at_risk"] is True
        assert dt.datetime.fromisoformat(view["predicted_finish_at"]) > dt.datetime.fromisoformat(view["deadline"])
        with ctx.db.session() as session:
            events = session.query(WebhookDelivery).filter_by(campaign_id=uuid.UUID(campaign_id)).all()
        assert [e.event for e in events] == ["campaign.at_risk"]
        assert webhooks.deliver_campaign_events(ctx) == 1
        assert webhooks.deliver_campaign_events(ctx) == 0
        (headers, body), = receiver.received
        payload = json.loads(body)
        assert payload["type"] == "campaign.at_risk" and payload["data"]["id"] == campaign_id
        # The job deliveries' view of the campaign's webhook does not mistake it for a job's.
        assert view["webhook"]["last_job_delivery"] is None
    finally:
        receiver.close()


def test_pausing_or_canceling_an_at_risk_campaign_clears_the_prediction_and_resuming_tells_the_turn_again(env):
    ctx, client, token = env
    headers = auth(token)
    scheduler = Scheduler(ctx, Dispatcher())

    def pass_and_view(campaign_id):
        scheduler._forecast_due = float("-inf")
        scheduler.run_pass()
        return client.get(f"/api/v1/campaigns/{campaign_id}", headers=headers).get_json()

    def at_risk_events(campaign_id):
        with ctx.db.session() as session:
            return session.query(WebhookDelivery).filter_by(campaign_id=uuid.UUID(campaign_id),
                                                            event="campaign.at_risk").count()

    campaign_id = make_campaign(client, token, utcnow() + dt.timedelta(seconds=10), 20, "http://127.0.0.1:9/hook")
    assert pass_and_view(campaign_id)["at_risk"] is True
    paused = client.post(f"/api/v1/campaigns/{campaign_id}/pause", headers=headers).get_json()
    assert paused["at_risk"] is False and paused["predicted_finish_at"] is None
    # A pass while paused predicts nothing for it: it stays clear.
    view = pass_and_view(campaign_id)
    assert view["status"] == "paused" and view["at_risk"] is False and view["predicted_finish_at"] is None
    assert client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=headers).status_code == 200
    assert pass_and_view(campaign_id)["at_risk"] is True
    assert at_risk_events(campaign_id) == 2  # the turn after the resume is a new one
    canceled = client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=headers).get_json()
    assert canceled["status"] == "canceled" and canceled["at_risk"] is False and canceled["predicted_finish_at"] is None
    assert pass_and_view(campaign_id)["at_risk"] is False


def test_a_campaign_with_time_to_spare_is_not_at_risk(env):
    ctx, client, token = env
    campaign_id = make_campaign(client, token, utcnow() + dt.timedelta(days=1), 3, None)
    Scheduler(ctx, Dispatcher()).run_pass()
    view = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(token)).get_json()
    assert view["at_risk"] is False and view["predicted_finish_at"] is not None


def test_misses_are_recorded_for_jobs_and_campaigns(env):
    ctx, client, token = env
    job_id = make_job(ctx, deadline=utcnow() - dt.timedelta(seconds=30))
    on_time = make_job(ctx, deadline=utcnow() + dt.timedelta(hours=1))
    with ctx.db.transaction() as session:
        for jid in (job_id, on_time):
            states.assign_job(session, jid, 1, "w1", 60)
            states.start_job(session, jid, 1, "w1", 60)
            states.complete_job(session, jid, 1, "w1", 1.0)
    late, fine = (client.get(f"/api/v1/jobs/{j}", headers=auth(token)).get_json() for j in (job_id, on_time))
    assert late["deadline_missed"] is True and late["deadline_missed_s"] >= 30
    assert fine["deadline_missed"] is False and fine["deadline_missed_s"] is None
    campaign_id = make_campaign(client, token, utcnow() + dt.timedelta(seconds=60), 1, None)
    with ctx.db.transaction() as session:
        session.get(Campaign, uuid.UUID(campaign_id)).deadline = utcnow() - dt.timedelta(seconds=5)
        for job in session.query(Job).filter_by(campaign_id=uuid.UUID(campaign_id)):
            states.cancel_job(session, job.id)
    webhooks.mark_finished_campaigns(ctx)
    view = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(token)).get_json()
    assert view["status"] == "completed" and view["deadline_missed"] is True and view["deadline_missed_s"] >= 5


def test_forecast_positions_count_only_jobs_that_compete_for_the_same_workers():
    def job(i, model, family):
        return QueuedJob(id=i, attempt=1, user_id=1, model_id=model, family=family, model_gb=2.0, width=512,
                         height=512, priority=0, queued_at=float(i), est_seconds=10.0)

    def gpu(wid, families):
        return WorkerState(id=wid, families=frozenset(families), max_pixels=1 << 22, vram_total_gb=24.0,
                           vram_free_gb=24.0, loaded_models={}, serves_models=None, busy=0)

    jobs = [job(1, "a", "sd"), job(2, "x", "flux"), job(3, "a", "sd"), job(4, "x", "flux"), job(5, "a", "sd")]
    result = forecast(Snapshot(jobs, [gpu("sd-only", ["sd"]), gpu("flux-only", ["flux"])], now=0.0))
    assert result.models["a"].job_ids == [1, 3, 5] and result.models["a"].positions == [1, 2, 3]
    assert result.models["x"].job_ids == [2, 4] and result.models["x"].positions == [1, 2]
    # One free slot each, holding no model: the first job of each class starts once its model is loaded
    # (2 GB at 2 GB/s), the next after one 10 s render on the GPU that now holds it.
    assert result.models["a"].starts_s == [1.0, 11.0, 21.0] and result.models["x"].starts_s == [1.0, 11.0]


def test_the_cli_refuses_a_deadline_it_cannot_read_in_one_line():
    from click.testing import CliRunner

    from farm.cli import main

    # Checked by the client before anything is sent (nothing listens on port 9).
    result = CliRunner().invoke(main, ["submit", "a lighthouse", "--deadline", "tomorrow", "--api", "http://127.0.0.1:9",
                                       "--token", "t"])
    assert result.exit_code != 0 and "deadline" in result.output and "Traceback" not in result.output
