"""Where a preempted job stands, in the API and on the dashboard's job page (issue 23): asked to stop while it
runs, then queued with a checkpoint to continue from."""

from __future__ import annotations

import pytest

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Worker
from tests.support.api import auth
from tests.support.dashboard import sign_in
from tests.support.factories import make_job


@pytest.fixture()
def env(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        _, token = create_user(session, "alice")
        session.add(Worker(id="w1", host="h", queue="q-w1", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
    app = create_app(sqlite_settings, context=ctx)
    yield ctx, app, token
    ctx.db.dispose()


def test_a_job_shows_that_it_is_stopping_then_that_it_resumes_from_its_checkpoint(env):
    ctx, app, token = env
    client, page = app.test_client(), sign_in(app, token=token)
    job_id = make_job(ctx)

    def view():
        return client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).get_json()["preemption"]

    def fragment():
        return page.get(f"/jobs/{job_id}?fragment=1").get_data(as_text=True)

    assert view() == {"count": 0, "stopping": False, "resumes": False}
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, "w1", 60)
        states.start_job(session, job_id, 1, "w1", 60)
        assert states.request_preemption(session, job_id, 1, max_preemptions=2)
    assert view() == {"count": 0, "stopping": True, "resumes": False}
    assert "stops at its next step" in fragment()
    with ctx.db.transaction() as session:
        states.preempt_job(session, job_id, 1, "checkpoints/u1/x/a1.pt", "preempted on w1 after step 1 of 2", 3)
    assert view() == {"count": 1, "stopping": False, "resumes": True}
    html = fragment()
    assert 'id="job-preemption"' in html and "continues from its checkpoint" in html
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 2, "w1", 60)
        states.start_job(session, job_id, 2, "w1", 60)
        states.complete_job(session, job_id, 2, "w1", 1.0)
    assert view() == {"count": 1, "stopping": False, "resumes": False}
    assert 'id="job-preemption"' not in fragment()
