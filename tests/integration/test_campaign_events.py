"""A campaign's event stream says promptly what the scheduler and the
campaign's owner did (issue 19): a job placed on a worker (with the worker),
a pause, a resume, a cancel. Served as `farm api` serves it, on Postgres and
Redis; the streams' safety-net database read is set five minutes apart, so
only the wake-ups published by the scheduler and the campaign service can
bring these events within the test's wait."""

from __future__ import annotations

import pytest

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.registry import add_model
from farm.scheduler.service import CeleryDispatcher, Scheduler
from farm.services import campaigns as campaign_service
from farm.services import jobs as job_service
from farm.settings import Settings
from farm.workers.runtime import WorkerRuntime
from tests.support.api import auth, served_streaming, truncate_all
from tests.support.sse import Follower

pytestmark = pytest.mark.integration

# The wait for an event; the streams' own database read comes 300 s apart (sse_poll_s x 10 with Redis).
WAIT_S = 20


@pytest.fixture()
def farm(tmp_path, migrated_postgres_url, redis_url, tiny_models):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, broker_url=redis_url, device="cpu",
                        worker_vram_gb=2, sse_poll_s=30, sse_max_s=120)
    ctx = build_context(settings)
    with ctx.db.transaction() as session:
        add_model(session, "tiny-a", str(tiny_models["tiny-a"]), family="sd", vram_gb=0.01)
        ana, token = create_user(session, "ana-campaign-events")
    WorkerRuntime(ctx, name="w-campaign-events").register()
    with served_streaming(create_app(settings, context=ctx), ctx) as base:
        yield ctx, base, ana, token
    truncate_all(ctx)
    ctx.db.dispose()


def test_campaign_stream_says_assignments_pause_resume_and_cancel_at_once(farm):
    ctx, base, ana, token = farm
    req = campaign_service.parse_campaign({"name": "told", "base": {"prompt": "a fox", "model": "tiny-a", "width": 64,
                                                                    "height": 64, "steps": 2}, "matrix": {"seed": [1, 2]}})
    campaign_id = campaign_service.submit_campaign(ctx, ana, req)["id"]
    job_ids = {str(job.id) for job in job_service.list_jobs(ctx, ana, campaign=campaign_id, limit=10).jobs}
    stream = Follower(f"{base}/api/v1/campaigns/{campaign_id}/events", auth(token))
    job_streams = {job_id: Follower(f"{base}/api/v1/jobs/{job_id}/events", auth(token)) for job_id in job_ids}
    try:
        assert stream.wait_for(lambda e: e["event"] == "progress", WAIT_S), "the stream did not open"
        for job_stream in job_streams.values():
            assert job_stream.wait_for(lambda e: e["event"] == "status", WAIT_S)["data"]["status"] == "queued"
        assert not [e for e in stream.events if e["event"] == "job"]  # nothing placed yet

        report = Scheduler(ctx, CeleryDispatcher(None)).run_pass()  # no worker process consumes: the jobs stay assigned
        assert report.assigned >= 1
        placed = stream.wait_for(lambda e: e["event"] == "job" and e["data"]["status"] == "assigned", WAIT_S)
        assert placed, f"no assignment on the campaign stream: {stream.events}"
        assert placed["data"]["worker"] == "w-campaign-events" and placed["data"]["job"] in job_ids
        assert placed["data"]["attempt"] == 1
        job_stream = job_streams[placed["data"]["job"]]
        told = job_stream.wait_for(lambda e: e["event"] == "status" and e["data"]["status"] == "assigned", WAIT_S)
        assert told and told["data"]["worker"] == "w-campaign-events", job_stream.events
        assert stream.wait_for(lambda e: e["event"] == "progress" and e["data"]["counts"].get("assigned"), WAIT_S)

        campaign_service.set_paused(ctx, ana, campaign_id, True)
        assert stream.wait_for(lambda e: e["event"] == "status" and e["data"]["status"] == "paused", WAIT_S), \
            f"no pause on the stream: {stream.events}"
        seen = len(stream.events)
        campaign_service.set_paused(ctx, ana, campaign_id, False)
        assert stream.wait_for(lambda e: e["event"] == "status" and e["data"]["status"] == "active", WAIT_S, after=seen)
        statuses = [e["data"]["status"] for e in stream.events if e["event"] == "status"]
        assert statuses[-2:] == ["paused", "active"], statuses

        campaign_service.cancel_campaign(ctx, ana, campaign_id)
        end = stream.wait_for(lambda e: e["event"] == "end", WAIT_S)
        assert end and end["data"] == {"reason": "final", "status": "canceled"}, stream.events
        assert [e["data"]["status"] for e in stream.events if e["event"] == "status"][-1] == "canceled"
        # The placed job left its worker canceled; the stream says so by job.
        assert stream.wait_for(lambda e: e["event"] == "job" and e["data"]["job"] == placed["data"]["job"]
                               and e["data"]["status"] == "canceled", 0)
    finally:
        for follower in (stream, *job_streams.values()):
            follower.close()
