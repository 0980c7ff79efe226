"""A campaign's numbers (issue 19): images per minute over its own running
time, the ETA from remaining work and recent throughput ("unknown" until
there is something to go on), and GPU-second estimates from the farm's
measured render times. Timestamps are written into the database, so nothing
here depends on how fast the machine is."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from sqlalchemy import select, update

from farm import tallies
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.costs import RenderTimes, estimate_render_s
from farm.events import LocalEvents
from farm.models import Campaign, Job, utcnow
from tests.support.api import auth
from tests.support.factories import ensure_model, make_job

SIZE = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture()
def env(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        ensure_model(session, "m-sd2")
        ensure_model(session, "m-xl", family="sdxl", vram_gb=7.0)
        _, token = create_user(session, "alice", password="alice password 1")
    app = create_app(sqlite_settings, context=ctx)
    return ctx, app, app.test_client(), token


@pytest.fixture()
def frozen_now(monkeypatch) -> dt.datetime:
    """The campaign view's clock, stopped: the figures below follow from how
    long ago jobs ran, and a slow database (CI's, with two test lanes on two
    cores) let seconds pass between writing the jobs and reading the view."""
    now = utcnow()
    monkeypatch.setattr("farm.services.campaigns.utcnow", lambda: now)
    return now


def submit(client, token, jobs: int = 10, **base) -> str:
    body = {"name": "numbers", "base": {"prompt": "a fox", **SIZE, **base}, "matrix": {"seed": list(range(jobs))}}
    response = client.post("/api/v1/campaigns", json=body, headers=auth(token))
    assert response.status_code in (201, 202), response.get_data(as_text=True)
    return response.get_json()["id"]


def view(client, token, campaign_id: str) -> dict:
    response = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def campaign_jobs(ctx, campaign_id: str) -> list[uuid.UUID]:
    with ctx.db.session() as session:
        return session.execute(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id)).order_by(Job.seed)).scalars().all()


def submitted(env, jobs: int) -> tuple[str, list[uuid.UUID]]:
    """A new campaign of ``jobs`` jobs and its job ids, by seed."""
    ctx, _, client, token = env
    campaign_id = submit(client, token, jobs=jobs)
    return campaign_id, campaign_jobs(ctx, campaign_id)


def set_jobs(ctx, job_ids, **values) -> None:
    """Write the jobs' history directly (times in the past), then rebuild their
    campaigns' tallies from it as a repair would (farm.tallies.recount; the
    tallies kept by the state machine are checked in test_tallies.py)."""
    with ctx.db.transaction() as session:
        session.execute(update(Job).where(Job.id.in_(list(job_ids))).values(**values))
        campaigns = session.execute(select(Job.campaign_id).where(Job.id.in_(list(job_ids))).distinct()).scalars().all()
        tallies.recount(session, [c for c in campaigns if c is not None])


def finish(ctx, job_ids, started: dt.datetime, every_s: float) -> None:
    """The jobs ran one after another, each every_s seconds, from started."""
    for number, job_id in enumerate(job_ids):
        set_jobs(ctx, [job_id], status="succeeded", started_at=started + dt.timedelta(seconds=number * every_s),
                 finished_at=started + dt.timedelta(seconds=(number + 1) * every_s), gpu_seconds=every_s)


def test_the_eta_is_unknown_until_a_job_finished_or_a_worker_gave_one(env):
    ctx, app, client, token = env
    campaign_id, jobs = submitted(env, 4)
    numbers = view(client, token, campaign_id)
    assert numbers["eta_s"] is None and numbers["images_per_minute"] == 0.0
    set_jobs(ctx, jobs[:1], status="running", started_at=utcnow() - dt.timedelta(seconds=5))
    assert view(client, token, campaign_id)["eta_s"] is None  # running, but no worker ETA yet
    # Half its steps done in 5 s, 5 s to go: one job takes 10 s; 3.5 jobs of work remain on one worker.
    set_jobs(ctx, jobs[:1], progress_step=1, progress_total=2, eta_s=5.0)
    assert view(client, token, campaign_id)["eta_s"] == pytest.approx(35.0, rel=0.01)

    # The dashboard says so in words.
    page_client = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page_client.get("/login").get_data(as_text=True)).group(1)
    page_client.post("/login", data={"name": "alice", "password": "alice password 1", "csrf_token": csrf})
    set_jobs(ctx, jobs[:1], status="queued", started_at=None, progress_step=0, progress_total=0, eta_s=None)
    fragment = page_client.get(f"/campaigns/{campaign_id}/progress").get_data(as_text=True)
    assert re.search(r'ETA <span id="campaign-eta">unknown</span>', fragment), fragment


def test_images_per_minute_use_the_campaigns_own_running_time(env):
    ctx, _, client, token = env
    campaign_id, jobs = submitted(env, 10)
    # All ten rendered within 60 s, two hours ago: 10 images per minute, not
    # 0 (nothing in the last five minutes) nor 2 (ten images / five minutes).
    finish(ctx, jobs, utcnow() - dt.timedelta(hours=2), every_s=6.0)
    numbers = view(client, token, campaign_id)
    assert numbers["status"] == "completed" and numbers["eta_s"] == 0.0
    assert numbers["images_per_minute"] == pytest.approx(10.0)


def test_a_young_campaign_is_measured_over_its_age_not_five_minutes(env, frozen_now):
    ctx, _, client, token = env
    campaign_id, jobs = submitted(env, 10)
    now = frozen_now
    # Four jobs in the first 40 s; the fifth started 5 s ago and is half done; five wait.
    finish(ctx, jobs[:4], now - dt.timedelta(seconds=45), every_s=10.0)
    set_jobs(ctx, jobs[4:5], status="running", started_at=now - dt.timedelta(seconds=5), progress_step=1, progress_total=2, eta_s=5.0)
    numbers = view(client, token, campaign_id)
    assert numbers["images_per_minute"] == pytest.approx(4 * 60 / 45, rel=0.05)
    # 4.5 jobs' work in 45 s; 5.5 remain: 55 s (the old formula said 4 images / 5 min -> 412 s).
    assert numbers["eta_s"] == pytest.approx(55.0, rel=0.05)


def test_the_eta_weighs_remaining_jobs_by_their_cost(env, frozen_now):
    ctx, _, client, token = env
    campaign_id, jobs = submitted(env, 4)
    now = frozen_now
    finish(ctx, jobs[:2], now - dt.timedelta(seconds=20), every_s=10.0)
    assert view(client, token, campaign_id)["eta_s"] == pytest.approx(20.0, rel=0.05)
    # The two left cost three times as much each: three times as long.
    with ctx.db.transaction() as session:
        reserved = session.execute(select(Job.reserved_gpu_seconds).where(Job.id == jobs[0])).scalar_one()
    set_jobs(ctx, jobs[2:], reserved_gpu_seconds=3 * reserved)
    assert view(client, token, campaign_id)["eta_s"] == pytest.approx(60.0, rel=0.05)


def test_a_paused_or_stalled_campaign_has_no_eta(env):
    ctx, _, client, token = env
    campaign_id, jobs = submitted(env, 4)
    finish(ctx, jobs[:2], utcnow() - dt.timedelta(hours=3), every_s=10.0)
    # Nothing finished for three hours: the throughput of then says nothing about now.
    assert view(client, token, campaign_id)["eta_s"] is None
    finish(ctx, jobs[2:3], utcnow() - dt.timedelta(seconds=10), every_s=10.0)
    assert view(client, token, campaign_id)["eta_s"] is not None
    with ctx.db.transaction() as session:
        session.get(Campaign, uuid.UUID(campaign_id)).status = "paused"
    assert view(client, token, campaign_id)["eta_s"] is None


def test_gpu_second_estimates_come_from_measured_render_times(env):
    ctx, _, client, token = env
    dry = {"name": "dry", "base": {"prompt": "a fox", **SIZE}, "matrix": {"seed": [1, 2]}, "dry_run": True}
    default = client.post("/api/v1/campaigns", json=dry, headers=auth(token)).get_json()["cost"]["gpu_seconds"]
    assert default == pytest.approx(2 * estimate_render_s("sd", 64, 64, 2))  # nothing measured yet: the documented default
    # The farm measured 18.5 s for one such job (issue 19: the dry run said "about 0").
    make_job(ctx, model="m-sd", status="succeeded", gpu_seconds=18.5, started_at=utcnow(), finished_at=utcnow())
    measured = client.post("/api/v1/campaigns", json=dry, headers=auth(token)).get_json()["cost"]["gpu_seconds"]
    assert measured == pytest.approx(2 * 18.5, rel=0.01)
    # A single job reserves the same estimate.
    response = client.post("/api/v1/jobs", json={"prompt": "a fox", **SIZE}, headers=auth(token))
    with ctx.db.session() as session:
        assert session.get(Job, uuid.UUID(response.get_json()["id"])).reserved_gpu_seconds == pytest.approx(18.5, rel=0.01)

    with ctx.db.session() as session:
        times = RenderTimes.load(session)
    assert times.estimate("m-sd", "sd", 64, 64, 4) == pytest.approx(37.0)  # same size, twice the steps
    assert times.estimate("m-sd", "sd", 512, 512, 2) == pytest.approx(18.5 * 4)  # 64 px is a quarter of the native work floor
    assert times.estimate("m-sd2", "sd", 64, 64, 2) == pytest.approx(18.5)  # another model of the family
    assert times.estimate("m-xl", "sdxl", 1024, 1024, 2) == pytest.approx(estimate_render_s("sdxl", 1024, 1024, 2))
