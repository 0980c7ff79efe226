"""The scheduler back from a database outage does not count the outage
against workers: their heartbeats and lease renewals failed too."""

from __future__ import annotations

import datetime as dt
import time

from farm import states
from farm.context import build_context
from farm.localcluster import free_port
from farm.models import Job, Worker, utcnow
from farm.scheduler.service import CeleryDispatcher, Leadership, PassReport, Scheduler
from farm.settings import Settings
from tests.support.factories import make_job


def test_reaping_waits_a_heartbeat_timeout_after_the_database_is_back(sqlite_settings):
    ctx = build_context(sqlite_settings.model_copy(update={"heartbeat_timeout_s": 0.5}))
    job_id = make_job(ctx)
    long_ago = utcnow() - dt.timedelta(seconds=60)
    with ctx.db.transaction() as session:
        session.add(Worker(id="w1", host="h", queue="q", device="cpu", device_name="cpu", vram_total_gb=4, vram_free_gb=4,
                           max_pixels=1 << 22, last_heartbeat_at=long_ago))
        states.assign_job(session, job_id, 1, "w1", 30)
        states.start_job(session, job_id, 1, "w1", 30, instance_id="i")
        session.get(Job, job_id).lease_expires_at = long_ago
    scheduler = Scheduler(ctx, CeleryDispatcher(None))
    scheduler._note_database(False)
    scheduler._note_database(True)  # the database is back this instant
    report = PassReport()
    scheduler.reap(report)
    assert report.requeued == 0 and report.lost_workers == []
    with ctx.db.session() as session:
        assert session.get(Job, job_id).status == "running"

    time.sleep(0.6)  # the workers had a heartbeat timeout to report; this one did not
    scheduler.reap(report)
    assert report.lost_workers == ["w1"] and report.requeued == 1


def test_leadership_notices_a_database_it_cannot_reach(tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/farm")
    leadership = Leadership(build_context(settings))
    assert leadership.acquire() is False
    assert leadership.reached_database is False
