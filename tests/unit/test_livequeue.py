"""The live scheduler keeps its queue across passes and reads only the rows that changed
(farm/scheduler/livequeue.py, issue 23), on the embedded database."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest

from farm import states
from farm.context import build_context
from farm.events import LocalEvents
from farm.metrics import QUEUED_JOBS
from farm.models import Job, utcnow
from farm.scheduler.livequeue import SAFETY_NET_SLICES, LiveQueue, id_slice
from farm.scheduler.service import Scheduler
from tests.support.factories import ensure_user, insert_jobs, make_job
from tests.support.livequeue import check_a_pass_assigns_in_one_update, fresh_read, seed_rows, step
from tests.unit.test_deadlines_service import Dispatcher


@pytest.fixture()
def ctx(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    yield ctx
    ctx.db.dispose()


def sync(ctx, live: LiveQueue):
    with ctx.db.session() as session:
        return live.sync(session, utcnow())


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_queue_equals_a_fresh_read_after_any_history(ctx, seed):
    campaign = seed_rows(ctx)
    rng = random.Random(seed)
    live = LiveQueue()
    assert sync(ctx, live).full
    fulls = 0
    for number in range(60):
        action = step(ctx, live, rng, campaign)
        if number % 7 == 6:
            live._resync_due = float("-inf")  # the safety net too, now and then
        report = sync(ctx, live)
        fulls += report.full
        assert report.full == (action == "pause"), action  # only a pause or resume reads everything
        ids, depth = fresh_read(ctx)
        assert [job.id for job in live.queue] == ids, action
        assert live.depth == depth
        assert sum(lane.count for lane in live.queue.models.values()) == len(ids)
    assert fulls < 30


def test_a_pass_reads_only_the_rows_that_changed(ctx):
    seed_rows(ctx)
    for _ in range(30):
        make_job(ctx, user="ana", model="m-a")
    with ctx.db.transaction() as session:  # changed just now, however long the inserts took
        session.query(Job).update({Job.updated_at: utcnow()})
    live = LiveQueue()
    assert sync(ctx, live).full
    live._resync_due = float("inf")  # no safety-net slice in the next read, however slow the run
    assert sync(ctx, live).rows == 30  # the second read: within LOOKBACK_S
    # Past the look-back, an idle pass reads nothing and a new job is one row.
    with ctx.db.transaction() as session:
        session.query(Job).update({Job.updated_at: utcnow() - dt.timedelta(seconds=10)})
    live.invalidate()
    sync(ctx, live)
    live._since = utcnow()  # the previous read began now, long after those rows changed
    assert sync(ctx, live).rows == 0
    make_job(ctx, user="bo", model="m-b")
    report = sync(ctx, live)
    assert (report.full, report.rows, len(live.queue)) == (False, 1, 31)


def test_a_late_row_outside_the_look_back_waits_for_the_safety_net(ctx):
    seed_rows(ctx)
    live = LiveQueue()
    sync(ctx, live)
    gone = make_job(ctx)
    sync(ctx, live)
    assert gone in live.queue
    long_ago = utcnow() - dt.timedelta(seconds=60)
    late = make_job(ctx, created_at=long_ago, updated_at=long_ago)
    with ctx.db.transaction() as session:  # canceled, its change stamped long ago
        states.cancel_job(session, gone)
        session.query(Job).filter(Job.id == gone).update({Job.updated_at: long_ago})
    assert sync(ctx, live).rows == 0 and len(live.queue) == 1  # neither change seen
    # The safety net checks one slice of the id space each time it is due: each change is found when the
    # slice that holds its job comes round (the late row is one row read), and after one round both are.
    slice_of = {job_id: next(k for k in range(SAFETY_NET_SLICES) if _in(job_id, *id_slice(k, SAFETY_NET_SLICES)))
                for job_id in (gone, late)}
    for k in range(SAFETY_NET_SLICES):
        live._resync_due = float("-inf")
        report = sync(ctx, live)
        assert (report.full, report.verified, report.rows) == (False, True, int(k == slice_of[late]))
        assert (gone in live.queue) == (k < slice_of[gone])
        assert (late in live.queue) == (k >= slice_of[late])
    assert [job.id for job in live.queue] == [late]


def _in(job_id, low, high) -> bool:
    return low <= job_id and (high is None or job_id < high)


def test_the_safety_net_slices_tile_the_id_space():
    slices = [id_slice(k, SAFETY_NET_SLICES) for k in range(SAFETY_NET_SLICES)]
    assert slices[0][0].int == 0 and slices[-1][1] is None
    assert all(high == following[0] for (_, high), following in zip(slices, slices[1:]))
    ids = [uuid.uuid4() for _ in range(2_000)]
    assert sorted(sum(_in(i, *s) for s in slices) for i in ids) == [1] * len(ids)  # each id in exactly one
    assert min(sum(_in(i, *s) for i in ids) for s in slices) > 0


def test_the_scheduler_places_from_the_kept_queue_and_never_a_canceled_job(ctx):
    seed_rows(ctx)
    ids = [make_job(ctx, user="ana", model="m-a") for _ in range(3)]
    dispatcher = Dispatcher()
    scheduler = Scheduler(ctx, dispatcher)
    scheduler.run_pass()  # one worker with one slot: the oldest
    assert dispatcher.sent == ids[:1] and scheduler.last_sync.full
    assert ids[0] not in scheduler.live.queue
    with ctx.db.transaction() as session:
        states.cancel_job(session, ids[1])
        states.start_job(session, ids[0], 1, "w1", 60.0)
        states.complete_job(session, ids[0], 1, "w1")
    scheduler.run_pass()
    assert not scheduler.last_sync.full
    assert dispatcher.sent == [ids[0], ids[2]]  # the canceled job is never sent
    assert not scheduler.live.queue


def test_the_queue_gauge_counts_every_queued_job(ctx):
    """farm_queued_jobs shows the true depth, not the 5,000 jobs a pass used to read."""
    seed_rows(ctx)
    with ctx.db.transaction() as session:
        ana = ensure_user(session, "ana")
        insert_jobs(session, user_id=ana.id, model_id="m-a", prompts=["p"] * 6_000)
        insert_jobs(session, user_id=ana.id, model_id="m-b", prompts=["p"] * 7)
    scheduler = Scheduler(ctx, Dispatcher())
    scheduler.load_snapshot()
    assert QUEUED_JOBS.labels("m-a", "member")._value.get() == 6_000
    assert QUEUED_JOBS.labels("m-b", "member")._value.get() == 7
    assert len(scheduler.load_snapshot()[0].jobs) == 6_007  # the policy is shown the whole queue


def test_a_job_the_kept_queue_still_shows_but_that_left_is_refused_and_dropped(ctx):
    seed_rows(ctx)
    job_id = make_job(ctx, user="ana", model="m-a")
    dispatcher = Dispatcher()
    scheduler = Scheduler(ctx, dispatcher)
    scheduler.load_snapshot()
    # Canceled behind the kept queue's back (a change the look-back missed).
    with ctx.db.transaction() as session:
        states.cancel_job(session, job_id)
        session.query(Job).update({Job.updated_at: utcnow() - dt.timedelta(seconds=60)})
    scheduler.run_pass()
    assert dispatcher.sent == []  # states.assign_job's conditional UPDATE refused it
    assert job_id not in scheduler.live.queue


def test_gaining_leadership_again_reads_the_whole_queue(ctx):
    seed_rows(ctx)
    make_job(ctx, user="ana", model="m-a")
    scheduler = Scheduler(ctx, Dispatcher())
    scheduler.load_snapshot()
    scheduler.live.invalidate()  # what run() does when the leadership term changes
    scheduler.load_snapshot()
    assert scheduler.last_sync.full


def test_the_forecast_plays_only_the_head_of_the_whole_queue(ctx, monkeypatch):
    from farm.models import QueueForecast
    from farm.scheduler import service

    seed_rows(ctx)
    ids = [make_job(ctx, user="ana", model="m-a") for _ in range(5)]
    monkeypatch.setattr(service, "FORECAST_MAX_JOBS", 2)
    scheduler = Scheduler(ctx, Dispatcher())
    scheduler.run_pass()
    with ctx.db.session() as session:
        forecasts = session.query(QueueForecast).all()
    assert [job_id for row in forecasts for job_id in row.job_ids] == [str(i) for i in ids[1:3]]
    assert len(scheduler.live.queue) == 4  # the policy still saw every job


def test_a_pass_assigns_in_one_update_and_refuses_only_the_job_that_left(ctx):
    check_a_pass_assigns_in_one_update(ctx)


def test_assign_jobs_goes_in_batches_and_says_why_it_refused_one(ctx, monkeypatch):
    seed_rows(ctx)
    ids = [make_job(ctx, user="ana", model="m-a") for _ in range(5)]
    monkeypatch.setattr(states, "ASSIGN_BATCH", 2)
    with ctx.db.transaction() as session:
        states.cancel_job(session, ids[3])
        assigned, refused = states.assign_jobs(
            session, [(ids[0], 1, "w1"), (ids[1], 1, "w1"), (ids[2], 2, "w1"), (ids[3], 1, "w1"), (ids[4], 1, "w1")], 60.0)
    assert set(assigned) == {ids[0], ids[1], ids[4]}
    assert "attempt 2 is stale" in str(refused[ids[2]]) and "is canceled" in str(refused[ids[3]]) and len(refused) == 2
    assert isinstance(refused[ids[2]], states.StaleAttemptError) and isinstance(refused[ids[3]], states.InvalidTransitionError)
    with ctx.db.session() as session:
        rows = {row.id: row for row in session.query(Job).filter(Job.id.in_(ids))}
    assert [rows[i].status for i in ids] == ["assigned", "assigned", "queued", "canceled", "assigned"]
    assert rows[ids[4]].worker_id == "w1" and rows[ids[4]].lease_expires_at > rows[ids[4]].assigned_at
