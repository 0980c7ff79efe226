"""The live scheduler's kept queue on Postgres (farm/scheduler/livequeue.py, issue 23): it equals a fresh
read after random histories, a pass reads only the job rows that changed, and a scheduler that takes the
lead again reads the whole queue."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid

import pytest
from sqlalchemy import event, insert, text

from farm.context import build_context
from farm.models import Job, utcnow
from farm.scheduler.livequeue import LOOKBACK_S, LiveQueue
from farm.scheduler.service import Scheduler
from farm.settings import Settings
from tests.support.api import truncate_all
from tests.support.factories import ensure_user, insert_jobs, make_job
from tests.support.livequeue import check_a_pass_assigns_in_one_update, fresh_read, seed_rows, step
from tests.unit.test_deadlines_service import Dispatcher

pytestmark = pytest.mark.integration


@pytest.fixture()
def ctx(tmp_path, migrated_postgres_url, redis_url):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, broker_url=redis_url,
                        heartbeat_timeout_s=3600)  # a slow run never loses the worker
    ctx = build_context(settings)
    truncate_all(ctx)
    yield ctx
    truncate_all(ctx)
    ctx.db.dispose()


class JobRowsRead:
    """Counts the rows the jobs table's SELECTs returned."""

    def __init__(self, engine) -> None:
        self.rows = 0
        event.listen(engine, "after_cursor_execute", self._count)

    def _count(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement and cursor.rowcount > 0:
            self.rows += cursor.rowcount


def test_the_kept_queue_equals_a_fresh_read_on_postgres(ctx):
    campaign = seed_rows(ctx)
    rng = random.Random(7)
    live = LiveQueue()
    for _ in range(40):
        action = step(ctx, live, rng, campaign)
        with ctx.db.session() as session:
            live.sync(session, utcnow())
        ids, depth = fresh_read(ctx)
        assert [job.id for job in live.queue] == ids, action
        assert live.depth == depth


def test_a_pass_reads_the_changed_job_rows_only(ctx):
    seed_rows(ctx)
    earlier = utcnow() - dt.timedelta(minutes=5)
    with ctx.db.transaction() as session:
        ana = ensure_user(session, "ana")
        insert_jobs(session, user_id=ana.id, model_id="m-a", prompts=["p"] * 2_000, created_at=earlier,
                    updated_at=earlier)
    scheduler = Scheduler(ctx, Dispatcher())
    counter = JobRowsRead(ctx.db.engine)
    scheduler.run_pass()
    assert scheduler.last_sync.full and counter.rows >= 2_000
    scheduler.live._resync_due = float("inf")  # no safety-net slice in the next pass, however slow the run
    counter.rows = 0
    new = make_job(ctx, user="bo", model="m-b")
    scheduler.run_pass()
    # The job assigned by the first pass (it left the queue) and the new one; the other 1,999 are kept.
    assert (scheduler.last_sync.full, scheduler.last_sync.rows) == (False, 2)
    assert counter.rows < 20  # with the placed jobs and the shares' reads
    assert len(scheduler.live.queue) + len(scheduler.dispatcher.sent) == 2_001


def test_a_scheduler_that_leads_again_reads_the_whole_queue(ctx):
    seed_rows(ctx)
    first, second = Scheduler(ctx, Dispatcher()), Scheduler(ctx, Dispatcher())
    for _ in range(3):
        make_job(ctx, user="ana", model="m-a")
    try:
        assert first.leadership.acquire()
        first.run_pass()
        assert first.last_sync.full and len(first.dispatcher.sent) == 1
        first.run_pass()
        assert not first.last_sync.full
        first.leadership.release()  # the leader dies; the standby takes over and places work
        assert second.leadership.acquire()
        second.run_pass()
        assert second.last_sync.full
        make_job(ctx, user="bo", model="m-b")
        second.leadership.release()
        assert first.leadership.acquire()
        first.run_pass()
        assert first.last_sync.full  # a new term: the whole queue, not what changed since its last read
        ids, _ = fresh_read(ctx)
        assert [job.id for job in first.live.queue] == ids
        assert not set(first.dispatcher.sent) & set(second.dispatcher.sent)  # no job placed twice
    finally:
        first.leadership.release()
        second.leadership.release()


def test_a_long_transaction_s_jobs_are_read_when_it_commits(ctx):
    """Rows written early in a transaction that commits later than the look-back (a big campaign's insert)."""
    seed_rows(ctx)
    live = LiveQueue()
    with ctx.db.session() as session:
        live.sync(session, utcnow())
    with ctx.db.engine.connect() as writer:
        with ctx.db.session() as session:
            ana = ensure_user(session, "ana")
            user_id = ana.id
        started = writer.execute(text("SELECT now()")).scalar()  # the transaction begins
        job_ids = [uuid.uuid4()]
        writer.execute(insert(Job), [dict(id=job_ids[0], user_id=user_id, model_id="m-a", request={"prompt": "p"},
                                          params={"prompt": "p"}, width=64, height=64, steps=2, seed=1,
                                          created_at=started, updated_at=started)])
        for _ in range(2):  # passes while it is open, the second one past the look-back
            with ctx.db.session() as session:
                assert live.sync(session, utcnow()).rows == 0
            time.sleep(LOOKBACK_S + 0.5)
        writer.commit()
    with ctx.db.session() as session:
        live.sync(session, utcnow())
    assert [job.id for job in live.queue] == job_ids


def test_a_pass_assigns_in_one_update_on_postgres(ctx):
    check_a_pass_assigns_in_one_update(ctx)
