"""Random job histories for the live scheduler's kept queue (farm/scheduler/livequeue.py):
each step changes job rows through farm.states as the API, workers and the scheduler do."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

from farm import states
from farm.models import Campaign, Job, JobStatus, Worker, utcnow
from farm.scheduler.livequeue import LiveQueue, queued_rows_query
from tests.support.factories import ensure_model, ensure_user, make_job

MODELS = ("m-a", "m-b", "m-c")
USERS = ("ana", "bo", "cy")


def seed_rows(ctx) -> Campaign:
    with ctx.db.transaction() as session:
        for model in MODELS:
            ensure_model(session, model)
        owner = ensure_user(session, USERS[0])
        for user in USERS[1:]:
            ensure_user(session, user)
        session.add(Worker(id="w1", host="h", queue="q-w1", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
        campaign = Campaign(user_id=owner.id, name="c", base={"prompt": "p"}, job_count=0, image_count=0)
        session.add(campaign)
        session.flush()
        session.expunge(campaign)
        return campaign


def fresh_read(ctx) -> tuple[list, Counter]:
    """The queue as a full read shows it: ids in queue order, and depth by (model, role)."""
    with ctx.db.session() as session:
        rows = session.execute(queued_rows_query()).all()
    return [row.id for row in rows], Counter((row.model_id, row.role) for row in rows)


def step(ctx, live: LiveQueue, rng: random.Random, campaign: Campaign) -> str:
    """One random change; returns its name."""
    with ctx.db.session() as session:
        by_status: dict[str, list] = {}
        for job_id, status, attempt in session.query(Job.id, Job.status, Job.attempt):
            by_status.setdefault(status, []).append((job_id, attempt))
    queued = by_status.get(JobStatus.queued.value, [])
    placed = by_status.get(JobStatus.assigned.value, [])
    action = rng.choice(["submit", "submit", "submit", "cancel", "assign", "requeue", "pause", "priority"])
    # The scheduler assigns from its kept queue, which leaves a paused campaign's jobs out.
    placeable = [(job.id, job.attempt) for job in live.queue]
    if action == "submit" or (not queued and action != "pause") or (action == "assign" and not placeable):
        # Some commits come late: created up to a second before the previous read.
        created = utcnow() - dt.timedelta(seconds=rng.uniform(0, 1.0))
        make_job(ctx, user=rng.choice(USERS), model=rng.choice(MODELS), priority=rng.choice((0, 0, 1)),
                 created_at=created, updated_at=created,
                 campaign_id=campaign.id if rng.random() < 0.3 else None)
        return "submit"
    with ctx.db.transaction() as session:
        if action == "cancel":
            states.cancel_job(session, rng.choice(queued)[0])
        elif action == "assign":
            # As the scheduler does: commit, then take the job out of its kept queue.
            job_id, attempt = rng.choice(placeable)
            states.assign_job(session, job_id, attempt, "w1", 60.0)
            session.commit()
            live.discard(job_id)
        elif action == "requeue" and placed:
            job_id, attempt = rng.choice(placed)
            states.requeue_job(session, job_id, attempt, "lease expired", max_attempts=100)
        elif action == "pause":
            row = session.get(Campaign, campaign.id)
            row.status = "active" if row.status == "paused" else "paused"
        elif action == "priority":
            # A priority change moves a queued job to another level (an admin's bump).
            job = session.get(Job, rng.choice(queued)[0])
            job.priority += 1
    return action


def check_a_pass_assigns_in_one_update(ctx) -> None:
    """Five free workers, five queued jobs of which one was canceled behind the kept queue's back: the pass
    assigns the four others with one UPDATE of the jobs table, counts them in their campaign's tallies, and
    refuses only the canceled one."""
    from sqlalchemy import event, select

    from farm import tallies
    from farm.models import CampaignTally
    from farm.scheduler.service import Scheduler
    from tests.unit.test_deadlines_service import Dispatcher

    campaign = seed_rows(ctx)
    with ctx.db.transaction() as session:
        for n in range(2, 6):
            session.add(Worker(id=f"w{n}", host="h", queue=f"q-w{n}", device="cpu", device_name="cpu", vram_total_gb=8,
                               vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
    # A model each: the policy would leave jobs of one model for the GPU that loads it first.
    jobs = [make_job(ctx, user=USERS[n % 3], model=f"m-x{n}", campaign_id=campaign.id if n < 3 else None) for n in range(5)]
    with ctx.db.transaction() as session:
        tallies.create_rows(session, campaign.id, [(1, 0.0)] * 3)  # as a campaign's submission does
    dispatcher = Dispatcher()
    scheduler = Scheduler(ctx, dispatcher)
    scheduler.load_snapshot()
    with ctx.db.transaction() as session:
        states.cancel_job(session, jobs[0])
        session.query(Job).update({Job.updated_at: utcnow() - dt.timedelta(seconds=60)})  # the look-back misses it

    def tallied() -> dict:
        with ctx.db.session() as session:
            return {row.status: row.jobs for row in session.execute(
                select(CampaignTally).where(CampaignTally.campaign_id == campaign.id)).scalars()}

    before = tallied()
    updates = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "UPDATE jobs " in statement:  # WITH wanted(...) AS (VALUES ...) UPDATE jobs ... included
            updates.append(statement)

    event.listen(ctx.db.engine, "after_cursor_execute", count)
    try:
        report = scheduler.run_pass()
    finally:
        event.remove(ctx.db.engine, "after_cursor_execute", count)
    assert report.assigned == 4, (report, dispatcher.sent, jobs)
    assert sorted(map(str, dispatcher.sent)) == sorted(map(str, jobs[1:]))
    assert len(updates) == 1, updates
    with ctx.db.session() as session:
        assert len({row.worker_id for row in session.query(Job).filter(Job.id.in_(jobs[1:]))}) == 4
        assert all(row.status == "assigned" and row.lease_expires_at is not None
                   for row in session.query(Job).filter(Job.id.in_(jobs[1:])))
    after = tallied()  # the campaign's two jobs that were assigned moved from queued to assigned
    assert after.get("assigned", 0) - before.get("assigned", 0) == 2, (before, after)
    assert after.get("queued", 0) - before.get("queued", 0) == -2
