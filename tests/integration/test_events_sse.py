"""Server-Sent Events of jobs and campaigns (issue 19) on Postgres and Redis,
served as `farm api` serves them, while a worker renders a tiny model."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.registry import add_model
from farm.services import campaigns as campaign_service
from farm.services import jobs as job_service
from farm.settings import Settings
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from tests.support.api import auth, served_streaming, truncate_all
from tests.support.sse import collect

pytestmark = pytest.mark.integration


@pytest.fixture()
def farm(tmp_path, migrated_postgres_url, redis_url, tiny_models):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, broker_url=redis_url, device="cpu",
                        worker_vram_gb=2, preview_every_steps=2, progress_interval_s=0, sse_poll_s=0.5, sse_max_s=60)
    ctx = build_context(settings)
    with ctx.db.transaction() as session:
        add_model(session, "tiny-a", str(tiny_models["tiny-a"]), family="sd", vram_gb=0.01)
        ana, ana_token = create_user(session, "ana-sse")
        eve, eve_token = create_user(session, "eve-sse")
    runtime = WorkerRuntime(ctx, name="w-sse")
    runtime.register()
    with served_streaming(create_app(settings, context=ctx), ctx) as base:
        yield ctx, runtime, base, (ana, ana_token), (eve, eve_token)
    truncate_all(ctx)
    ctx.db.dispose()


def _render(ctx, runtime, job_id) -> str:
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, runtime.name, 30)
    return render_module.execute_job(runtime, job_id, 1)


def test_job_events_carry_progress_previews_and_outputs_in_order_and_end(farm):
    ctx, runtime, base, (ana, token), (_, eve_token) = farm
    job = job_service.submit_job(ctx, ana, {"prompt": "a fox", "model": "tiny-a", "width": 64, "height": 64, "steps": 6})
    url = f"{base}/api/v1/jobs/{job.id}/events"
    assert httpx.get(url, headers=auth(eve_token)).status_code == 404  # someone else's job
    assert httpx.get(url).status_code == 401
    thread, stream = collect(url, auth(token))
    assert stream["opened"].wait(10) and stream["status"] == 200
    assert stream["content_type"].startswith("text/event-stream")
    assert _render(ctx, runtime, job.id) == "succeeded"
    thread.join(timeout=30)
    assert not thread.is_alive(), "the stream did not end when the job succeeded"

    events = stream["events"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and events[0]["data"]["status"] == "queued"
    assert kinds[-1] == "end" and events[-1]["data"] == {"reason": "final", "status": "succeeded"}
    previews = [e for e in events if e["event"] == "preview"]
    assert [p["data"]["step"] for p in previews] == [2, 4, 6]
    image = Image.open(io.BytesIO(base64.b64decode(previews[0]["data"]["data"])))
    assert image.format == "JPEG" and max(image.size) == 128
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    first_preview, output = kinds.index("preview"), kinds.index("output")
    assert kinds.index("progress") < first_preview < output < len(kinds) - 1
    assert events[output]["data"]["url"] == f"/api/v1/outputs/{events[output]['data']['id']}/image"
    assert events[output]["id"] == "1"  # the outputs sent so far: what Last-Event-ID resumes from

    # Reconnecting after the output: the final state again, without the output.
    again = httpx.get(url, headers={**auth(token), "Last-Event-ID": "1"}, timeout=10)
    assert "event: output" not in again.text and "event: end" in again.text
    bad = httpx.get(url, headers={**auth(token), "Last-Event-ID": "x"}, timeout=10)
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"] + str(bad.json()["error"]["details"])


def test_campaign_events_show_progress_and_outputs_and_end_when_done(farm):
    ctx, runtime, base, (ana, token), (_, eve_token) = farm
    req = campaign_service.parse_campaign({"name": "sse", "base": {"prompt": "a fox", "model": "tiny-a", "width": 64,
                                                                   "height": 64, "steps": 2}, "matrix": {"seed": [1, 2]}})
    campaign = campaign_service.submit_campaign(ctx, ana, req)
    url = f"{base}/api/v1/campaigns/{campaign['id']}/events"
    assert httpx.get(url, headers=auth(eve_token)).status_code == 404
    thread, stream = collect(url, auth(token))
    assert stream["opened"].wait(10)
    job_ids = [job.id for job in job_service.list_jobs(ctx, ana, campaign=campaign["id"], limit=10).jobs]
    for job_id in job_ids:
        assert _render(ctx, runtime, job_id) == "succeeded"
    thread.join(timeout=30)
    assert not thread.is_alive()
    events = stream["events"]
    assert [e["data"]["id"] for e in events if e["event"] == "output"] and \
        len([e for e in events if e["event"] == "output"]) == 2
    progress = [e["data"] for e in events if e["event"] == "progress" and "counts" in e["data"]]
    assert progress[0]["counts"]["queued"] == 2 and progress[-1]["counts"]["succeeded"] == 2
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    assert "preview" not in [e["event"] for e in events]  # campaign streams carry numbers, not every job's previews
