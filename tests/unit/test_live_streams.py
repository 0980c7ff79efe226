"""The dashboard's event streams under the session and the embedded farm's
live files (issue 19), through Flask's test client (the polling stream any
WSGI server gets)."""

from __future__ import annotations

import pytest

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.services import jobs as job_service
from tests.support.factories import ensure_model
from tests.support.sse import parse
from tests.unit.test_dashboard_pages import signed_in


@pytest.fixture()
def farm(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"sse_max_s": 0.6, "sse_poll_s": 0.1})
    ctx = build_context(settings, events=LocalEvents(live_dir=settings.home / "live"))
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        ana, _ = create_user(session, "ana", password="ana password 1")
        create_user(session, "bo", password="bo password 12")
    job = job_service.submit_job(ctx, ana, {"prompt": "a fox", "model": "m-sd", "width": 64, "height": 64, "steps": 4})
    return ctx, create_app(settings, context=ctx), job


def events_of(response) -> list[dict]:
    return parse(response.get_data(as_text=True).split("\n"))


def test_dashboard_job_stream_needs_the_session_and_hides_others_jobs(farm):
    ctx, app, job = farm
    assert app.test_client().get(f"/jobs/{job.id}/events").status_code == 302  # to the sign-in page
    assert signed_in(app, "bo").get(f"/jobs/{job.id}/events").status_code == 404
    assert signed_in(app, "ana").get("/jobs/not-a-job/events").status_code in (400, 404)


def test_a_preview_from_the_worker_child_reaches_the_dashboard_stream(farm):
    ctx, app, job = farm
    # What the worker process of `farm up` writes (its own LocalEvents on the same FARM_HOME).
    LocalEvents(live_dir=ctx.settings.home / "live").publish_live(
        job.id, None, {"type": "preview", "step": 2, "total": 4, "eta_s": 1.5, "jpeg": "AAAA", "job": str(job.id)})
    response = signed_in(app, "ana").get(f"/jobs/{job.id}/events")
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = events_of(response)
    assert [e["event"] for e in events] == ["status", "progress", "preview", "end"]
    assert events[2]["data"] == {"step": 2, "total": 4, "eta_s": 1.5, "mime": "image/jpeg", "data": "AAAA"}
    assert events[-1]["data"] == {"reason": "timeout"} and events[-1]["id"] == "0"


def test_last_event_id_must_be_a_whole_number(farm):
    ctx, app, job = farm
    response = signed_in(app, "ana").get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400 and "Last-Event-ID" in response.get_data(as_text=True)


def test_the_embedded_live_files_of_quiet_jobs_are_pruned(tmp_path):
    import os
    import time

    events = LocalEvents(live_dir=tmp_path)
    events.publish_live("old", None, {"type": "progress", "step": 1})
    stale = time.time() - 3600
    os.utime(tmp_path / "job-old.json", (stale, stale))
    events.publish_live("new", "c1", {"type": "changed"})
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["campaign-c1.json", "job-new.json"]
    assert events.latest_live("job", "new") == {"type": "changed"} and events.latest_live("job", "old") is None


def test_an_embedded_campaign_change_is_a_fresh_message_each_time(tmp_path):
    """Under `farm up` the api's watcher passes a campaign's streams a message only when its live file
    changed, so each pause, cancel or assignment must write one unlike the last; no job file is written."""
    events = LocalEvents(live_dir=tmp_path)
    events.campaign_changed("c1")
    first = events.latest_live("campaign", "c1")
    events.campaign_changed("c1")
    second = events.latest_live("campaign", "c1")
    assert first["type"] == second["type"] == "changed" and first != second
    assert [p.name for p in tmp_path.glob("*.json")] == ["campaign-c1.json"]
