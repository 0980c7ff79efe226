"""Quotas against the real Postgres: exact under concurrent clients, ledger
settles and refunds, 429 says which limit, usage, and when it resets."""

from __future__ import annotations

import threading
import uuid

import pytest
import requests
from sqlalchemy import func, select
from waitress.server import create_server

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.localcluster import free_port
from farm.models import Job, UsageEntry
from farm.settings import Settings
from tests.support.factories import ensure_model
from tests.support.api import truncate_all

pytestmark = pytest.mark.integration


@pytest.fixture()
def served(tmp_path, migrated_postgres_url):
    """The API over real HTTP (waitress, 16 threads) on the test database."""
    # The scheduler test's workers heartbeat once: a slow run must not lose them between passes.
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, api_threads=16, heartbeat_timeout_s=3600)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        admin, admin_token = create_user(session, f"admin-{uuid.uuid4().hex[:6]}", admin=True)
        user, token = create_user(session, f"ana-{uuid.uuid4().hex[:6]}", team=f"studio-{uuid.uuid4().hex[:6]}")
    port = free_port()
    server = create_server(create_app(settings, context=ctx), host="127.0.0.1", port=port, threads=16)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield ctx, f"http://127.0.0.1:{port}/api/v1", {"admin": admin_token, "ana": token}, user
    server.close()
    truncate_all(ctx)
    ctx.db.dispose()


def test_fifty_concurrent_clients_never_pass_the_limit(served):
    ctx, base, tokens, user = served
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert requests.put(f"{base}/users/{user.id}/quota", json={"images_per_day": 100}, headers=admin, timeout=10).status_code == 200

    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def client():
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {tokens['ana']}"
        barrier.wait()
        for _ in range(3):
            response = session.post(f"{base}/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}, timeout=60)
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(202) == 100 and statuses.count(429) == 50, sorted(set(statuses))
    with ctx.db.session() as session:
        assert session.execute(select(func.count()).select_from(Job).where(Job.user_id == user.id)).scalar_one() == 100
        reserved = session.execute(select(func.sum(UsageEntry.images)).where(UsageEntry.user_id == user.id)).scalar_one()
    assert reserved == 100


def test_refusal_says_which_limit_usage_and_reset(served):
    ctx, base, tokens, user = served
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    ana = {"Authorization": f"Bearer {tokens['ana']}"}
    requests.put(f"{base}/teams/{user.team_id}/quota", json={"images_per_day": 3, "max_steps": 30}, headers=admin, timeout=10)
    ok = requests.post(f"{base}/jobs", json={"prompt": "x", "num_images": 2, "width": 64, "height": 64, "steps": 2}, headers=ana, timeout=10)
    assert ok.status_code == 202
    refused = requests.post(f"{base}/jobs", json={"prompt": "x", "num_images": 2, "width": 64, "height": 64, "steps": 2}, headers=ana, timeout=10)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["details"]["limit"] == "images_per_day"
    assert error["details"]["owner"] == "team" and error["details"]["used"] == 2 and error["details"]["resets_at"]
    assert "has used 2 of 3 images today" in error["message"]
    too_many_steps = requests.post(f"{base}/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 40}, headers=ana, timeout=10)
    assert too_many_steps.status_code == 429 and too_many_steps.json()["error"]["details"]["limit"] == "max_steps"
    me = requests.get(f"{base}/me", headers=ana, timeout=10).json()
    assert me["quota"]["team"]["images_per_day"] == 3 and me["remaining"]["images_today"] == 1
    assert me["usage"]["images_today"] == 2
    # Nothing half-created: exactly the accepted job exists.
    with ctx.db.session() as session:
        assert session.execute(select(func.count()).select_from(Job).where(Job.user_id == user.id)).scalar_one() == 1
    bad = requests.put(f"{base}/users/{user.id}/quota", json={"images_per_day": -1, "colour": 1}, headers=admin, timeout=10)
    assert bad.status_code == 422 and {d["field"] for d in bad.json()["error"]["details"]} == {"images_per_day", "colour"}
    assert requests.put(f"{base}/users/{user.id}/quota", json={}, headers=ana, timeout=10).status_code == 403


def test_cancel_refunds_and_completion_settles(served):
    ctx, base, tokens, user = served
    ana = {"Authorization": f"Bearer {tokens['ana']}"}
    first = requests.post(f"{base}/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}, headers=ana, timeout=10).json()["id"]
    second = requests.post(f"{base}/jobs", json={"prompt": "y", "width": 64, "height": 64, "steps": 2}, headers=ana, timeout=10).json()["id"]
    requests.post(f"{base}/jobs/{first}/cancel", headers=ana, timeout=10)
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(second), 1, "w", 30)
        states.start_job(session, uuid.UUID(second), 1, "w", 30)
        states.complete_job(session, uuid.UUID(second), 1, "w", gpu_seconds=7.5)
    with ctx.db.session() as session:
        kinds = dict(session.execute(select(UsageEntry.kind, func.sum(UsageEntry.images)).where(UsageEntry.user_id == user.id)
                                     .group_by(UsageEntry.kind)).all())
        gpu = session.execute(select(func.sum(UsageEntry.gpu_seconds)).where(UsageEntry.user_id == user.id)).scalar_one()
    assert kinds == {"reserve": 2, "refund": -1, "settle": 0}
    assert gpu == pytest.approx(7.5)  # estimate reserved, refunded for one, settled to measured for the other


def test_usage_report_per_user_model_and_day(served):
    ctx, base, tokens, user = served
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    ana = {"Authorization": f"Bearer {tokens['ana']}"}
    for _ in range(2):
        requests.post(f"{base}/jobs", json={"prompt": "x", "num_images": 2, "width": 64, "height": 64, "steps": 2}, headers=ana, timeout=10)
    report = requests.get(f"{base}/usage", params={"group_by": "user,model,day"}, headers=admin, timeout=10).json()
    [row] = report["rows"]
    assert row["user"] == user.name and row["model"] == "m-sd" and row["images"] == 4 and row["day"]
    csv_text = requests.get(f"{base}/usage", params={"group_by": "team", "format": "csv"}, headers=admin, timeout=10).text
    from farm.models import Team

    with ctx.db.session() as session:
        team_name = session.get(Team, user.team_id).name
    assert csv_text.splitlines()[0] == "team,images,gpu_seconds" and csv_text.splitlines()[1].startswith(team_name + ",4,")
    assert requests.get(f"{base}/usage", headers=ana, timeout=10).status_code == 403
    assert requests.get(f"{base}/usage", params={"group_by": "planet"}, headers=admin, timeout=10).status_code == 400


def _job(prompt: str = "x") -> dict:
    return {"prompt": prompt, "width": 64, "height": 64, "steps": 2}


def _campaign(jobs: int, dry_run: bool = False) -> dict:
    return {"name": "c", "base": _job(), "matrix": {"seed_count": [jobs]}, "dry_run": dry_run}


def _refusal(response, limit: str, retry_after: int | None = None) -> dict:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["details"]["limit"] == limit, error
    if retry_after is not None:
        assert response.headers["Retry-After"] == str(retry_after)
    return error


def test_max_queued_jobs_at_every_submission_path(served):
    """Queued and assigned jobs count; running and finished ones do not; each
    path that queues jobs is refused with 429 naming the limit."""
    from farm.models import Output
    from farm.services.quotas import NOT_BY_WAITING_RETRY_AFTER_S, QUEUE_RETRY_AFTER_S

    ctx, base, tokens, user = served
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    ana = {"Authorization": f"Bearer {tokens['ana']}"}
    put = requests.put(f"{base}/users/{user.id}/quota", json={"max_queued_jobs": 3}, headers=admin, timeout=10)
    assert put.status_code == 200 and put.json()["max_queued_jobs"] == 3

    campaign = requests.post(f"{base}/campaigns", json=_campaign(2), headers=ana, timeout=10)
    assert campaign.status_code == 201, campaign.text
    campaign_id = campaign.json()["id"]
    first = requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10).json()["id"]
    # Three wait: a job more is refused, and so is a campaign (its dry run too).
    error = _refusal(requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10), "max_queued_jobs", QUEUE_RETRY_AFTER_S)
    assert "max_queued_jobs" in error["message"] and "3 wait now" in error["message"] and "cancel" in error["message"]
    assert error["details"] == {"limit": "max_queued_jobs", "owner": "user", "allowed": 3, "waiting": 3, "requested": 1}
    _refusal(requests.post(f"{base}/campaigns", json=_campaign(1), headers=ana, timeout=10), "max_queued_jobs")
    _refusal(requests.post(f"{base}/campaigns", json=_campaign(1, dry_run=True), headers=ana, timeout=10), "max_queued_jobs")
    # A campaign larger than the limit by itself: waiting cannot help, and the message says what can.
    alone = _refusal(requests.post(f"{base}/campaigns", json=_campaign(4), headers=ana, timeout=10), "max_queued_jobs",
                     NOT_BY_WAITING_RETRY_AFTER_S)
    assert "parts of at most 3 jobs" in alone["message"]

    # Assigned has not started: it still counts.
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(first), 1, "w", 30)
    _refusal(requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10), "max_queued_jobs")
    # Running does not (max_concurrent_jobs is for that): one more fits.
    with ctx.db.transaction() as session:
        states.start_job(session, uuid.UUID(first), 1, "w", 30)
    second = requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10)
    assert second.status_code == 202

    # A rerender is a submission too.
    with ctx.db.transaction() as session:
        states.complete_job(session, uuid.UUID(first), 1, "w", gpu_seconds=1.0)
        output = Output(job_id=uuid.UUID(first), user_id=user.id, attempt=1, index=0, object_key=f"outputs/{first}/0.png",
                        sidecar_key="k.json", content_type="image/png", content_sha256="00", byte_size=1, width=64,
                        height=64, seed=1, lineage={})
        session.add(output)
        session.flush()
        output_id = str(output.id)
    _refusal(requests.post(f"{base}/outputs/{output_id}/rerender", headers=ana, timeout=10), "max_queued_jobs")

    # Retry-failed queues again: a failed campaign job leaves room for one
    # job, which is taken, so the retry is refused until one is canceled.
    with ctx.db.session() as session:
        campaign_jobs = session.execute(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id))).scalars().all()
    with ctx.db.transaction() as session:
        states.fail_job(session, campaign_jobs[0], None, "boom")
    assert requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10).status_code == 202
    _refusal(requests.post(f"{base}/campaigns/{campaign_id}/retry-failed", headers=ana, timeout=10), "max_queued_jobs")
    requests.post(f"{base}/jobs/{second.json()['id']}/cancel", headers=ana, timeout=10)
    retried = requests.post(f"{base}/campaigns/{campaign_id}/retry-failed", headers=ana, timeout=10)
    assert retried.status_code == 200 and retried.json()["retried_jobs"] == 1
    assert requests.post(f"{base}/outputs/{output_id}/rerender", headers=ana, timeout=10).status_code == 429

    me = requests.get(f"{base}/me", headers=ana, timeout=10).json()
    assert me["quota"]["user"]["max_queued_jobs"] == 3
    assert me["usage"]["queued_jobs"] == 3 and me["remaining"]["queued_jobs"] == 0


def test_team_queue_limit_is_exact_under_concurrent_members(served):
    """Two members of a team limited to 12 waiting jobs submit at once: exactly 12 are accepted."""
    ctx, base, tokens, user = served
    with ctx.db.transaction() as session:
        from farm.models import Team

        team_name = session.get(Team, user.team_id).name
        _, bo_token = create_user(session, f"bo-{uuid.uuid4().hex[:6]}", team=team_name)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert requests.put(f"{base}/teams/{user.team_id}/quota", json={"max_queued_jobs": 12}, headers=admin,
                        timeout=10).status_code == 200

    statuses: list[int] = []
    retry_afters: set[str] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def client(token: str):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        barrier.wait()
        for _ in range(2):
            response = session.post(f"{base}/jobs", json=_job(), timeout=60)
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_afters.add(response.headers.get("Retry-After"))

    threads = [threading.Thread(target=client, args=(tokens["ana"] if i % 2 else bo_token,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(202) == 12 and statuses.count(429) == 28, sorted(set(statuses))
    assert retry_afters == {"10"}
    with ctx.db.session() as session:
        from farm.models import User

        members = select(User.id).where(User.team_id == user.team_id)
        assert session.execute(select(func.count()).select_from(Job).where(Job.user_id.in_(members))).scalar_one() == 12


def test_every_quota_refusal_says_when_to_retry(served):
    """Retry-After: until the window resets for the daily and monthly limits,
    a day where waiting cannot help (per-image limits, a request over the limit by itself)."""
    import datetime as dt

    from farm.services.quotas import NOT_BY_WAITING_RETRY_AFTER_S

    ctx, base, tokens, user = served
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    ana = {"Authorization": f"Bearer {tokens['ana']}"}

    def seconds_to(resets_at: str) -> float:
        return (dt.datetime.fromisoformat(resets_at) - dt.datetime.now(dt.timezone.utc)).total_seconds()

    assert requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10).status_code == 202
    with ctx.db.session() as session:
        reserved = session.execute(select(func.sum(UsageEntry.gpu_seconds)).where(UsageEntry.user_id == user.id)).scalar_one()
    requests.put(f"{base}/users/{user.id}/quota", json={"images_per_day": 1, "max_steps": 10}, headers=admin, timeout=10)
    daily = requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10)
    error = _refusal(daily, "images_per_day")
    assert abs(int(daily.headers["Retry-After"]) - seconds_to(error["details"]["resets_at"])) <= 5
    _refusal(requests.post(f"{base}/jobs", json={**_job(), "num_images": 2}, headers=ana, timeout=10), "images_per_day",
             NOT_BY_WAITING_RETRY_AFTER_S)
    _refusal(requests.post(f"{base}/jobs", json={**_job(), "steps": 20}, headers=ana, timeout=10), "max_steps",
             NOT_BY_WAITING_RETRY_AFTER_S)

    requests.put(f"{base}/users/{user.id}/quota", json={"gpu_seconds_per_month": reserved * 1.5}, headers=admin, timeout=10)
    monthly = requests.post(f"{base}/jobs", json=_job(), headers=ana, timeout=10)
    error = _refusal(monthly, "gpu_seconds_per_month")
    assert abs(int(monthly.headers["Retry-After"]) - seconds_to(error["details"]["resets_at"])) <= 5


@pytest.mark.parametrize(("field", "raw"), [
    ("images_per_day", "2147483648"),  # past the integer column
    ("max_queued_jobs", "99999999999999999999"),
    ("max_pixels", "1.5"),
    ("max_steps", "-1"),
    ("max_concurrent_jobs", "true"),
    ("images_per_day", '"5"'),
    ("gpu_seconds_per_month", "NaN"),
    ("gpu_seconds_per_month", "Infinity"),
    ("max_pixels", "-Infinity"),
])
def test_quota_put_refuses_hostile_values_naming_the_field(served, field, raw):
    ctx, base, tokens, user = served
    headers = {"Authorization": f"Bearer {tokens['admin']}", "Content-Type": "application/json"}
    # The JSON reader may refuse NaN and infinities for the whole body before
    # the quota service sees them (tests/unit/test_quota_limits.py covers the service).
    named = {field, "body"} if "N" in raw or "I" in raw else {field}
    for url in (f"{base}/users/{user.id}/quota", f"{base}/teams/{user.team_id}/quota"):
        response = requests.put(url, data=f'{{"{field}": {raw}}}', headers=headers, timeout=10)
        assert response.status_code == 422, (url, response.status_code, response.text)
        assert named & {d["field"] for d in response.json()["error"]["details"]}, response.text
    me = requests.get(f"{base}/me", headers={"Authorization": f"Bearer {tokens['ana']}"}, timeout=10)
    assert me.status_code == 200 and me.json()["quota"] == {"user": None, "team": None}


def test_the_scheduler_holds_a_team_to_its_concurrency_limit(served):
    """Two members of a team limited to one running job, free workers holding the model for all: one job is assigned."""
    from farm.models import Team, Worker, utcnow
    from farm.scheduler.service import CeleryDispatcher, Scheduler

    class Dispatcher(CeleryDispatcher):
        def send(self, *args, **kwargs):
            pass

    ctx, base, tokens, user = served
    with ctx.db.transaction() as session:
        team_name = session.get(Team, user.team_id).name
        _, bo_token = create_user(session, f"bo-{uuid.uuid4().hex[:6]}", team=team_name)
        for i in range(4):
            session.add(Worker(id=f"w{i}", host="h", queue=f"q{i}", device="cpu", device_name="cpu", vram_total_gb=8,
                               vram_free_gb=6, families=["sd"], max_pixels=10**7, last_heartbeat_at=utcnow(),
                               loaded_models=[{"id": "m-sd", "vram_gb": 2.0}]))
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    requests.put(f"{base}/teams/{user.team_id}/quota", json={"max_concurrent_jobs": 1}, headers=admin, timeout=10)
    for token in (tokens["ana"], bo_token, tokens["ana"], bo_token):
        assert requests.post(f"{base}/jobs", json=_job(), headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 202
    scheduler = Scheduler(ctx, Dispatcher(None))
    assert scheduler.run_pass().assigned == 1
    assert scheduler.run_pass().assigned == 0  # the assigned job counts for the team
    requests.put(f"{base}/teams/{user.team_id}/quota", json={"max_concurrent_jobs": 3}, headers=admin, timeout=10)
    scheduler._shares_cache = None  # limits are cached for SHARES_TTL_S
    assert scheduler.run_pass().assigned == 2
