"""Campaigns on the real Postgres: expansion, dry run, a 10,000-row CSV,
pause/resume/cancel/retry-failed, manifests, ZIP export, isolation."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile

import pytest
from sqlalchemy import func, select

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, Output, UsageEntry
from farm.scheduler.service import CeleryDispatcher, Scheduler
from farm.settings import Settings
from tests.support.factories import ensure_model
from tests.support.api import truncate_all

pytestmark = pytest.mark.integration


@pytest.fixture()
def api(tmp_path, migrated_postgres_url):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, max_request_bytes=50_000_000)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        ensure_model(session, "m-xl", family="sdxl", vram_gb=7.0)
        _, ana = create_user(session, "ana", team="studio")
        _, ben = create_user(session, "ben", team="studio")
        _, eve = create_user(session, "eve", team="other")
    client = create_app(settings, context=ctx).test_client()
    headers = {name: {"Authorization": f"Bearer {token}"} for name, token in (("ana", ana), ("ben", ben), ("eve", eve))}
    yield ctx, client, headers
    truncate_all(ctx)
    ctx.db.dispose()


BASE = {"prompt": "a bottle on a table", "width": 64, "height": 64, "steps": 2}


def count_jobs(ctx, campaign_id=None) -> int:
    with ctx.db.session() as session:
        query = select(func.count()).select_from(Job)
        if campaign_id:
            query = query.where(Job.campaign_id == uuid.UUID(campaign_id))
        return session.execute(query).scalar_one()


def test_matrix_expands_to_the_cross_product_and_dry_run_creates_nothing(api):
    ctx, client, h = api
    body = {"name": "bottles", "base": BASE, "matrix": {"prompt": ["red bottle", "blue bottle", "green bottle"],
                                                         "model": ["m-sd", "m-xl"], "seed_count": [4]}}
    dry = client.post("/api/v1/campaigns", json={**body, "dry_run": True}, headers=h["ana"])
    assert dry.status_code == 200 and dry.get_json()["jobs"] == 24 and "id" not in dry.get_json()
    assert dry.get_json()["cost"]["images"] == 24 and dry.get_json()["cost"]["gpu_seconds"] > 0
    assert count_jobs(ctx) == 0
    created = client.post("/api/v1/campaigns", json=body, headers=h["ana"])
    assert created.status_code == 201
    campaign_id = created.get_json()["id"]
    with ctx.db.session() as session:
        jobs = session.execute(select(Job).where(Job.campaign_id == uuid.UUID(campaign_id))).scalars().all()
    assert len(jobs) == 24
    assert {(j.params["final_prompt"], j.model_id) for j in jobs} == {(p, m) for p in ("red bottle", "blue bottle", "green bottle")
                                                                       for m in ("m-sd", "m-xl")}
    assert len({j.seed for j in jobs}) == 4  # the same four seeds for every prompt x model
    view = client.get(f"/api/v1/campaigns/{campaign_id}", headers=h["ana"]).get_json()
    assert view["counts"]["queued"] == 24 and view["percent"] == 0.0 and view["status"] == "active"


def test_rows_from_a_ten_thousand_row_csv(api):
    ctx, client, h = api
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["prompt", "seed", "styles"])
    for i in range(10_000):
        writer.writerow([f"product {i}", i, ""])
    data = {"request": json.dumps({"name": "catalogue", "base": BASE}),
            "rows": (io.BytesIO(buffer.getvalue().encode()), "catalogue.csv")}
    response = client.post("/api/v1/campaigns", data=data, headers=h["ana"], content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)[:500]
    campaign_id = response.get_json()["id"]
    assert response.get_json()["jobs"] == 10_000 and count_jobs(ctx, campaign_id) == 10_000
    with ctx.db.session() as session:
        seeds = sorted(session.execute(select(Job.seed).where(Job.campaign_id == uuid.UUID(campaign_id))).scalars())
        reserved = session.execute(select(func.sum(UsageEntry.images)).where(UsageEntry.campaign_id == uuid.UUID(campaign_id))).scalar_one()
    assert seeds == list(range(10_000)) and reserved == 10_000


def test_jsonl_rows_and_bad_rows_say_where(api):
    ctx, client, h = api
    lines = "\n".join(json.dumps({"prompt": f"p{i}", "seed": i}) for i in range(3))
    data = {"request": json.dumps({"name": "jl", "base": BASE}), "rows": (io.BytesIO(lines.encode()), "rows.jsonl")}
    assert client.post("/api/v1/campaigns", data=data, headers=h["ana"], content_type="multipart/form-data").get_json()["jobs"] == 3
    bad = client.post("/api/v1/campaigns", json={"name": "bad", "base": BASE, "rows": [{"prompt": "ok"}, {"prompt": "x", "width": 100}]},
                      headers=h["ana"])
    assert bad.status_code == 422 and "job 2 of 2: width" in bad.get_json()["error"]["message"]
    unknown = client.post("/api/v1/campaigns", json={"name": "u", "base": BASE, "matrix": {"colour": ["red"]}}, headers=h["ana"])
    assert unknown.status_code == 422 and "matrix.colour" in unknown.get_json()["error"]["message"]
    over = client.post("/api/v1/campaigns", json={"name": "o", "base": BASE, "matrix": {"seed_count": [10]}, "budget_images": 5},
                       headers=h["ana"])
    assert over.status_code == 422 and "budget is 5" in over.get_json()["error"]["message"]
    assert count_jobs(ctx) == 3  # nothing half-created


def test_pause_resume_cancel_and_retry_failed(api):
    ctx, client, h = api
    campaign_id = client.post("/api/v1/campaigns", json={"name": "c", "base": BASE, "matrix": {"seed_count": [6]}},
                              headers=h["ana"]).get_json()["id"]
    scheduler = Scheduler(ctx, CeleryDispatcher(None))
    assert len(scheduler.load_snapshot()[0].jobs) == 6
    before = scheduler.load_snapshot()[0].jobs[0]  # a pass reads the queue ...
    assert client.post(f"/api/v1/campaigns/{campaign_id}/pause", headers=h["ana"]).get_json()["status"] == "paused"
    assert scheduler.load_snapshot()[0].jobs == []  # paused: nothing is placed
    with ctx.db.transaction() as session:  # ... and commits its placement after the pause: refused
        assigned, refused = states.assign_jobs(session, [(before.id, before.attempt, "w")], 30)
    assert assigned == {} and "its campaign is paused" in str(refused[before.id])
    assert client.post(f"/api/v1/campaigns/{campaign_id}/pause", headers=h["ana"]).status_code == 409
    assert client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=h["ana"]).get_json()["status"] == "active"
    assert len(scheduler.load_snapshot()[0].jobs) == 6

    with ctx.db.session() as session:
        ids = session.execute(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id)).order_by(Job.seed)).scalars().all()
    with ctx.db.transaction() as session:  # one succeeds, one fails, one is running
        for job_id in ids[:3]:
            states.assign_job(session, job_id, 1, "w", 30)
            states.start_job(session, job_id, 1, "w", 30)
        states.complete_job(session, ids[0], 1, "w", gpu_seconds=1.0)
        states.fail_job(session, ids[1], 1, "boom")
    retried = client.post(f"/api/v1/campaigns/{campaign_id}/retry-failed", headers=h["ana"]).get_json()
    assert retried["retried_jobs"] == 1 and retried["counts"]["queued"] == 4
    canceled = client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=h["ana"]).get_json()
    assert canceled["canceled_jobs"] == 5 and canceled["status"] == "canceled"
    assert canceled["counts"] == {"queued": 0, "assigned": 0, "running": 0, "succeeded": 1, "failed": 0, "canceled": 5}
    with ctx.db.session() as session:
        images = session.execute(select(func.sum(UsageEntry.images)).where(UsageEntry.campaign_id == uuid.UUID(campaign_id))).scalar_one()
    assert images == 1  # 6 reserved + 1 for the retry, 6 refunded (1 failure, 5 canceled)
    assert client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=h["ana"]).status_code == 409


def test_manifest_and_zip_export(api):
    ctx, client, h = api
    campaign_id = client.post("/api/v1/campaigns", json={"name": "m", "base": BASE, "matrix": {"seed": [1, 2]}},
                              headers=h["ana"]).get_json()["id"]
    with ctx.db.session() as session:
        jobs = session.execute(select(Job).where(Job.campaign_id == uuid.UUID(campaign_id)).order_by(Job.seed)).scalars().all()
    done = jobs[0]
    with ctx.db.transaction() as session:
        states.assign_job(session, done.id, 1, "w", 30)
        states.start_job(session, done.id, 1, "w", 30)
        states.complete_job(session, done.id, 1, "w", gpu_seconds=1.0)
        key = f"outputs/u{done.user_id}/{done.id}/0.png"
        session.add(Output(job_id=done.id, user_id=done.user_id, attempt=1, index=0, object_key=key, sidecar_key=key[:-3] + "json",
                           content_type="image/png", content_sha256="ab" * 32, byte_size=8, width=64, height=64, seed=1,
                           lineage={"job_id": str(done.id), "seed": 1}))
    ctx.storage.put(key, b"\x89PNGdata", "image/png")

    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/campaigns/{campaign_id}/manifest?format=csv", headers=h["ana"]).get_data(as_text=True))))
    rows.sort(key=lambda r: r["seed"])
    assert [(r["job_id"], r["status"], r["seed"]) for r in rows] == [(str(done.id), "succeeded", "1"), (str(jobs[1].id), "queued", "2")]
    assert rows[0]["url"].endswith("/image") and rows[0]["content_sha256"] == "ab" * 32 and rows[1]["url"] == ""
    lines = client.get(f"/api/v1/campaigns/{campaign_id}/manifest", headers=h["ana"]).get_data(as_text=True).splitlines()
    by_job = {json.loads(line)["job_id"]: json.loads(line) for line in lines}
    assert by_job[str(done.id)]["lineage"] == {"job_id": str(done.id), "seed": 1} and by_job[str(jobs[1].id)]["lineage"] is None

    response = client.get(f"/api/v1/campaigns/{campaign_id}/export.zip", headers=h["ana"])
    assert response.status_code == 200 and response.is_streamed
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.read(f"images/{done.id}-0.png") == b"\x89PNGdata"
    assert sorted(archive.namelist()) == sorted([f"images/{done.id}-0.png", "manifest.jsonl", "manifest.csv"])


def test_team_members_see_team_campaigns_others_get_404(api):
    ctx, client, h = api
    campaign_id = client.post("/api/v1/campaigns", json={"name": "t", "base": BASE}, headers=h["ana"]).get_json()["id"]
    assert client.get(f"/api/v1/campaigns/{campaign_id}", headers=h["ben"]).status_code == 200
    assert len(client.get(f"/api/v1/campaigns/{campaign_id}/jobs", headers=h["ben"]).get_json()["jobs"]) == 1
    for method, path in (("get", ""), ("get", "/jobs"), ("post", "/pause"), ("post", "/resume"), ("post", "/cancel"),
                         ("post", "/retry-failed"), ("get", "/manifest"), ("get", "/export.zip")):
        response = getattr(client, method)(f"/api/v1/campaigns/{campaign_id}{path}", headers=h["eve"])
        assert response.status_code == 404, (method, path, response.status_code)
    assert client.get(f"/api/v1/campaigns/{uuid.uuid4()}", headers=h["ana"]).status_code == 404


def test_team_members_see_each_others_jobs_and_outputs(api):
    ctx, client, h = api
    job_id = client.post("/api/v1/jobs", json=BASE, headers=h["ana"]).get_json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=h["ben"]).status_code == 200  # same team
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=h["ben"]).get_json()["jobs"]] == [job_id]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=h["eve"]).status_code == 404  # another team
    assert client.get("/api/v1/jobs", headers=h["eve"]).get_json()["jobs"] == []


def test_usage_per_model_adds_up_for_campaigns(api):
    ctx, client, h = api
    campaign_id = client.post("/api/v1/campaigns", json={"name": "two models", "base": BASE,
                                                         "matrix": {"model": ["m-sd", "m-xl"], "seed": [1, 2, 3]}},
                              headers=h["ana"]).get_json()["id"]
    client.post(f"/api/v1/campaigns/{campaign_id}/cancel", headers=h["ana"])
    with ctx.db.session() as session:
        rows = session.execute(select(UsageEntry.kind, UsageEntry.model_id, func.sum(UsageEntry.images))
                               .where(UsageEntry.campaign_id == uuid.UUID(campaign_id))
                               .group_by(UsageEntry.kind, UsageEntry.model_id)).all()
    assert sorted(rows) == [("refund", "m-sd", -3), ("refund", "m-xl", -3), ("reserve", "m-sd", 3), ("reserve", "m-xl", 3)]


@pytest.mark.parametrize("budget", ["1e30", "2147483648", "1e15", "99999999999999999999"])
def test_a_budget_past_what_the_column_holds_is_refused_naming_it(api, budget):
    """budget_images is an integer column: a larger budget is a 422, not a database error."""
    ctx, client, h = api
    for dry_run in ("false", "true"):
        body = f'{{"name": "b", "base": {json.dumps(BASE)}, "budget_images": {budget}, "dry_run": {dry_run}}}'
        response = client.post("/api/v1/campaigns", data=body, headers=h["ana"], content_type="application/json")
        assert response.status_code == 422, response.get_data(as_text=True)
        assert "budget_images" in {d["field"] for d in response.get_json()["error"]["details"]}
    assert count_jobs(ctx) == 0
    ok = client.post("/api/v1/campaigns", json={"name": "b", "base": BASE, "budget_images": 2**31 - 1}, headers=h["ana"])
    assert ok.status_code == 201
