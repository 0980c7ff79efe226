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
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, api_threads=16)
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
