"""The REST API on the embedded database: auth, validation, isolation, errors."""

from __future__ import annotations

import json
import uuid

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Output
from tests.support.api import assert_error, auth
from tests.support.factories import ensure_model


@pytest.fixture()
def env(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, alice = create_user(session, "alice")
        _, bob = create_user(session, "bob")
        _, root = create_user(session, "root", admin=True)
    app = create_app(sqlite_settings, context=ctx)
    return ctx, app.test_client(), {"alice": alice, "bob": bob, "root": root}


def submit(client, token, **body):
    return client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, **body}, headers=auth(token))


def test_submit_and_read_back(env):
    ctx, client, tokens = env
    response = submit(client, tokens["alice"], seed=5)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and body["polling_url"] == f"/api/v1/jobs/{body['id']}"
    job = client.get(body["polling_url"], headers=auth(tokens["alice"])).get_json()
    assert job["params"]["seed"] == 5 and job["progress"] == {"step": 0, "total": 2, "percent": 0.0, "eta_s": None}
    for key in ("id", "status", "polling_url", "progress", "outputs", "error", "campaign", "created_at", "started_at",
                "finished_at", "worker", "attempt"):
        assert key in job


def test_authentication(env):
    _, client, _ = env
    assert_error(client.get("/api/v1/jobs"), 401, "missing API token")
    assert_error(client.get("/api/v1/jobs", headers=auth("farm_nope")), 401, "invalid")
    assert_error(client.get("/api/v1/jobs", headers={"Authorization": "Basic abc"}), 401, "Bearer")


@pytest.mark.parametrize("body,status,text", [
    ({"width": 64, "height": 64}, 422, "prompt: this field is required"),
    ({"prompt": "x", "model": "nope"}, 422, "unknown model 'nope'"),
    ({"prompt": "x", "width": 100, "height": 64}, 422, "not a multiple of 8"),
    ({"prompt": "x", "width": 8192, "height": 8192}, 422, "outside"),
    ({"prompt": "x", "bogus": 1}, 422, "unknown field"),
])
def test_bad_requests(env, body, status, text):
    _, client, tokens = env
    error = assert_error(client.post("/api/v1/jobs", json=body, headers=auth(tokens["alice"])), status, text)
    assert error["details"]


def test_malformed_json_and_wrong_content_type(env):
    _, client, tokens = env
    headers = {**auth(tokens["alice"]), "Content-Type": "application/json"}
    assert_error(client.post("/api/v1/jobs", data="{not json", headers=headers), 400, "not valid JSON")
    assert_error(client.post("/api/v1/jobs", data="prompt=x", headers=auth(tokens["alice"])), 415, "JSON body")


def test_ten_megabyte_prompt_is_refused_without_a_500(env):
    _, client, tokens = env
    body = json.dumps({"prompt": "x" * 10_000_000})
    response = client.post("/api/v1/jobs", data=body, headers={**auth(tokens["alice"]), "Content-Type": "application/json"})
    assert_error(response, 413, "too large")


def test_users_see_and_cancel_only_their_own_jobs(env):
    _, client, tokens = env
    job_id = submit(client, tokens["alice"]).get_json()["id"]
    assert_error(client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["bob"])), 404, "no job")
    assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(tokens["bob"])), 404, "no job")
    assert client.get("/api/v1/jobs", headers=auth(tokens["bob"])).get_json()["jobs"] == []
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["root"])).status_code == 200
    assert len(client.get("/api/v1/jobs", headers=auth(tokens["root"])).get_json()["jobs"]) == 1
    canceled = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(tokens["alice"])).get_json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(tokens["alice"])), 409, "already canceled")
    assert_error(client.get("/api/v1/jobs/not-a-uuid", headers=auth(tokens["alice"])), 400, "job_id: must be an id")


def test_listing_is_cursor_paginated_and_filtered(env):
    _, client, tokens = env
    ids = [submit(client, tokens["alice"]).get_json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/jobs", query_string=params, headers=auth(tokens["alice"])).get_json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    client.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=auth(tokens["alice"]))
    canceled = client.get("/api/v1/jobs?status=canceled", headers=auth(tokens["alice"])).get_json()["jobs"]
    assert [j["id"] for j in canceled] == [ids[0]]
    assert_error(client.get("/api/v1/jobs?status=lost", headers=auth(tokens["alice"])), 400, "unknown status")
    assert_error(client.get("/api/v1/jobs?cursor=zzz", headers=auth(tokens["alice"])), 400, "cursor")
    assert_error(client.get("/api/v1/jobs?limit=1000", headers=auth(tokens["alice"])), 400, "limit: Input should be less than or equal to 200")


def test_outputs_are_private_and_served_from_the_local_store(env):
    ctx, client, tokens = env
    job_id = uuid.UUID(submit(client, tokens["alice"]).get_json()["id"])
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, "w1", 30)
        states.start_job(session, job_id, 1, "w1", 30)
        states.complete_job(session, job_id, 1, "w1")
        output = Output(job_id=job_id, user_id=1, attempt=1, index=0, object_key=f"outputs/u1/{job_id}/0.png",
                        sidecar_key=f"outputs/u1/{job_id}/0.json", content_type="image/png", content_sha256="ab",
                        byte_size=3, width=64, height=64, seed=1, lineage={"job_id": str(job_id), "seed": 1})
        session.add(output)
    ctx.storage.put(output.object_key, b"png", "image/png")
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["alice"])).get_json()
    assert job["progress"]["percent"] == 100.0
    link = job["outputs"][0]
    lineage = client.get(link["lineage_url"], headers=auth(tokens["alice"])).get_json()
    assert lineage["seed"] == 1 and lineage["id"] == str(output.id)
    image = client.get(link["url"], headers=auth(tokens["alice"]))
    assert image.status_code == 200 and image.data == b"png" and image.mimetype == "image/png"
    assert_error(client.get(link["url"], headers=auth(tokens["bob"])), 404, "no output")


def test_admin_only_user_creation(env):
    _, client, tokens = env
    assert_error(client.post("/api/v1/users", json={"name": "eve"}, headers=auth(tokens["alice"])), 403, "only admins")
    created = client.post("/api/v1/users", json={"name": "carol", "team": "studio"}, headers=auth(tokens["root"]))
    assert created.status_code == 201 and created.get_json()["token"].startswith("farm_")
    me = client.get("/api/v1/me", headers=auth(created.get_json()["token"])).get_json()
    assert me["user"] == {"id": created.get_json()["id"], "name": "carol", "role": "member", "team": "studio"}
    assert_error(client.post("/api/v1/users", json={"name": "carol"}, headers=auth(tokens["root"])), 409, "already exists")


def test_service_endpoints(env):
    _, client, tokens = env
    assert client.get("/healthz").get_json()["status"] == "ok"
    assert 'component="api"' in client.get("/metrics").get_data(as_text=True)
    document = client.get("/api/v1/openapi.json").get_json()
    assert "/api/v1/jobs" in document["paths"] and "prompt" in document["components"]["schemas"]["GenerationRequest"]["properties"]
    assert_error(client.get("/api/v1/nowhere", headers=auth(tokens["alice"])), 404, "no such endpoint")
    models = client.get("/api/v1/models", headers=auth(tokens["alice"])).get_json()["models"]
    assert [m["id"] for m in models] == ["m-sd"]
    # The dashboard uses sessions, not bearer tokens: it asks to sign in.
    assert "/login" in client.get("/", headers=auth(tokens["alice"])).headers["Location"]


def test_admins_drain_and_resume_workers(env):
    from farm.models import Worker

    ctx, client, tokens = env
    with ctx.db.transaction() as session:
        session.add(Worker(id="gpu0", host="h", queue="q", device="cuda", device_name="H100", vram_total_gb=80,
                           vram_free_gb=80, max_pixels=10**7))
    assert_error(client.post("/api/v1/workers/gpu0/drain", headers=auth(tokens["alice"])), 403, "only admins")
    assert client.post("/api/v1/workers/gpu0/drain", headers=auth(tokens["root"])).get_json() == {"id": "gpu0", "state": "draining"}
    listed = client.get("/api/v1/workers", headers=auth(tokens["alice"])).get_json()["workers"]
    assert [(w["id"], w["state"]) for w in listed] == [("gpu0", "draining")]
    assert client.post("/api/v1/workers/gpu0/resume", headers=auth(tokens["root"])).get_json()["state"] == "online"
    assert_error(client.post("/api/v1/workers/nope/drain", headers=auth(tokens["root"])), 404, "no worker")


def test_styles_and_presets_are_listed_and_used(env):
    ctx, client, tokens = env
    styles = client.get("/api/v1/styles", headers=auth(tokens["alice"])).get_json()
    assert len(styles["styles"]) >= 100 and styles["categories"]
    presets = client.get("/api/v1/presets", headers=auth(tokens["alice"])).get_json()["presets"]
    assert {"realistic", "anime", "illustration", "fast-draft"} <= {p["name"] for p in presets}
    name = styles["styles"][0]["name"]
    job_id = submit(client, tokens["alice"], styles=[name], prompt_expansion=True, seed=3).get_json()["id"]
    params = client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["alice"])).get_json()["params"]
    assert params["styles"] == [name] and params["prompt_expansion"] is True
    assert params["final_prompt"] != "a lighthouse" and "lighthouse" in params["final_prompt"]
    assert_error(submit(client, tokens["alice"], styles=["no-such-style"]), 422, "no-such-style")
