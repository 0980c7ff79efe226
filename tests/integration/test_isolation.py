"""Every API endpoint that names a resource, tried with another user's token,
answers 404 (or 403 for admin-only ones) and changes nothing."""

from __future__ import annotations

import uuid

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import ApiToken, Job, Output, Worker
from farm.settings import Settings
from tests.support.factories import ensure_model
from tests.support.api import truncate_all

pytestmark = pytest.mark.integration


@pytest.fixture()
def world(tmp_path, migrated_postgres_url):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        owner, owner_token = create_user(session, "owner", team="owners")
        _, intruder_token = create_user(session, "intruder", team="others")
        session.add(Worker(id="gpu0", host="h", queue="q", device="cpu", device_name="cpu", vram_total_gb=8, vram_free_gb=8,
                           max_pixels=10**7))
    app = create_app(settings, context=ctx)
    client = app.test_client()
    owner_h = {"Authorization": f"Bearer {owner_token}"}
    job_id = client.post("/api/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}, headers=owner_h).get_json()["id"]
    campaign_id = client.post("/api/v1/campaigns", json={"name": "c", "base": {"prompt": "x", "width": 64, "height": 64, "steps": 2}},
                              headers=owner_h).get_json()["id"]
    with ctx.db.transaction() as session:
        states.assign_job(session, uuid.UUID(job_id), 1, "gpu0", 30)
        states.start_job(session, uuid.UUID(job_id), 1, "gpu0", 30)
        states.complete_job(session, uuid.UUID(job_id), 1, "gpu0")
        output = Output(job_id=uuid.UUID(job_id), user_id=owner.id, attempt=1, index=0, object_key=f"outputs/u{owner.id}/{job_id}/0.png",
                        sidecar_key="k.json", content_type="image/png", content_sha256="00", byte_size=1, width=64, height=64,
                        seed=1, lineage={})
        session.add(output)
        session.flush()
        token_id = session.query(ApiToken.id).filter(ApiToken.user_id == owner.id).first()[0]
        ids = {"job_id": job_id, "output_id": str(output.id), "campaign_id": campaign_id, "token_id": str(token_id),
               "user_id": str(owner.id), "team_id": str(owner.team_id), "worker_id": "gpu0", "id": str(token_id)}
    yield ctx, app, client, ids, {"Authorization": f"Bearer {intruder_token}"}
    truncate_all(ctx)
    ctx.db.dispose()


# Endpoints that name something every user shares (the farm's own files, not
# a user's resource): read-only, so there is nothing of another user's to reach.
SHARED_LIBRARY = {"/api/v1/wildcards/<path:name>"}


def test_every_resource_endpoint_refuses_another_users_token(world):
    ctx, app, client, ids, intruder = world
    checked = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or not rule.arguments:
            continue
        if rule.rule in SHARED_LIBRARY:
            assert rule.methods - {"HEAD", "OPTIONS"} == {"GET"}, f"{rule.rule} is shared, so it must stay read-only"
            continue
        unknown = rule.arguments - set(ids)
        assert not unknown, f"{rule.rule}: add an owner's resource for {unknown} to this test"
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", ids[name]).replace(f"<int:{name}>", ids[name])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            body = {"json": {}} if method in ("POST", "PUT") else {}
            response = client.open(path, method=method, headers=intruder, **body)
            assert response.status_code in (403, 404), (method, path, response.status_code, response.get_data(as_text=True)[:200])
            checked.append((method, rule.rule))
    # Nothing the intruder did changed the owner's things.
    with ctx.db.session() as session:
        assert session.get(Job, uuid.UUID(ids["job_id"])).status == "succeeded"
        assert session.get(ApiToken, int(ids["token_id"])).revoked_at is None
        assert session.get(Worker, "gpu0").draining is False
    assert len(checked) >= 15, checked
