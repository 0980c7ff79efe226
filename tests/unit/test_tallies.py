"""Campaign tallies (farm.tallies) kept by the state machine: after any
sequence of transitions they equal a recount from the jobs themselves; a
transaction that rolls back changes none; a campaign's progress reads them."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest
from sqlalchemy import select

from farm import states, tallies
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import CampaignTally, CampaignThroughput, Job, JobStatus, utcnow
from farm.services import campaigns as campaign_service
from tests.support.factories import ensure_model

S = JobStatus


@pytest.fixture()
def ctx(sqlite_settings):
    return build_context(sqlite_settings, events=LocalEvents())


def submit(ctx, jobs: int, user: str = "alice") -> uuid.UUID:
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        owner, _ = create_user(session, user, password=f"{user} password 1")
    req = campaign_service.parse_campaign({"name": "t", "base": {"prompt": "a fox", "model": "m-sd", "width": 64, "height": 64,
                                                                 "steps": 2, "num_images": 2},
                                           "matrix": {"seed": list(range(jobs))}})
    return uuid.UUID(campaign_service.submit_campaign(ctx, owner, req)["id"])


def snapshot(session, campaign_id: uuid.UUID) -> tuple[dict, dict]:
    rows = {t.status: (t.jobs, t.images, round(t.work, 6), t.first_at is not None, t.last_at is not None)
            for t in session.execute(select(CampaignTally).where(CampaignTally.campaign_id == campaign_id)).scalars()}
    buckets = {b.bucket: (b.jobs, round(b.work, 6)) for b in session.execute(
        select(CampaignThroughput).where(CampaignThroughput.campaign_id == campaign_id)).scalars()}
    return rows, buckets


def assert_tallies_match_a_recount(ctx, campaign_id: uuid.UUID) -> tuple[dict, dict]:
    """The tallies kept so far agree with a recount from the jobs; returns what was kept."""
    with ctx.db.session() as session:
        kept = snapshot(session, campaign_id)
    with ctx.db.transaction() as session:
        tallies.recount(session, [campaign_id])
    with ctx.db.session() as session:
        recounted = snapshot(session, campaign_id)
    # Jobs, images and work per status agree exactly. Times: the kept first start
    # is the first ever (a requeued job's start is cleared), the kept last finish the latest ever.
    assert {s: row[:3] for s, row in kept[0].items()} == {s: row[:3] for s, row in recounted[0].items()}
    # Buckets: a retried job's first finish stays counted in the kept ones; a recount sees its latest only.
    assert sum(j for j, _ in kept[1].values()) >= sum(j for j, _ in recounted[1].values())
    return kept


def random_step(session, rng: random.Random, job: Job) -> None:
    """One transition the state machine allows from the job's status, as the farm's code paths make it."""
    status = S(job.status)
    if status is S.queued:
        choice = rng.choice(["assign", "cancel", "fail"])
        if choice == "assign":
            states.assign_job(session, job.id, job.attempt, "w1", 30)
        elif choice == "cancel":
            states.cancel_job(session, job.id)
        else:
            states.fail_job(session, job.id, job.attempt, "no worker can run it")
    elif status is S.assigned:
        choice = rng.choice(["start", "start", "requeue", "cancel"])
        if choice == "start":
            states.start_job(session, job.id, job.attempt, "w1", 30, "i1")
        elif choice == "requeue":
            states.requeue_job(session, job.id, job.attempt, "lease expired", max_attempts=3)
        else:
            states.cancel_job(session, job.id)
    elif status is S.running:
        choice = rng.choice(["complete", "complete", "fail", "requeue", "cancel"])
        if choice == "complete":
            states.complete_job(session, job.id, job.attempt, "w1", gpu_seconds=1.5)
        elif choice == "fail":
            states.fail_job(session, job.id, job.attempt, "boom")
        elif choice == "requeue":
            states.requeue_job(session, job.id, job.attempt, "worker lost", max_attempts=3)
        else:
            states.cancel_job(session, job.id)
    elif status is S.failed:
        states.retry_failed_jobs(session, [job.id])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tallies_after_random_transitions_equal_a_recount(ctx, seed):
    rng = random.Random(seed)
    campaign_id = submit(ctx, 12)
    for _ in range(80):
        with ctx.db.transaction() as session:
            jobs = session.execute(select(Job).where(Job.campaign_id == campaign_id)).scalars().all()
            movable = [job for job in jobs if job.status not in (S.succeeded.value, S.canceled.value)]
            if not movable:
                break
            # Several transitions in one transaction, as a scheduler pass or a reaper makes them.
            for job in rng.sample(movable, min(len(movable), rng.randint(1, 3))):
                random_step(session, rng, job)
    with ctx.db.transaction() as session:  # and a campaign cancel over whatever is left
        states.cancel_campaign_jobs(session, campaign_id)
    kept = assert_tallies_match_a_recount(ctx, campaign_id)
    assert sum(row[0] for row in kept[0].values()) == 12  # every job in exactly one status
    finished = sum(j for j, _ in kept[1].values())
    assert finished >= kept[0][S.succeeded.value][0] + kept[0][S.failed.value][0]


def test_a_rolled_back_transition_changes_no_tally(ctx):
    campaign_id = submit(ctx, 3)
    with ctx.db.session() as session:
        before = snapshot(session, campaign_id)
        job = session.execute(select(Job).where(Job.campaign_id == campaign_id)).scalars().first()
    with pytest.raises(RuntimeError):
        with ctx.db.transaction() as session:
            states.cancel_job(session, job.id)
            raise RuntimeError("the caller fails after the transition")
    with ctx.db.session() as session:
        assert snapshot(session, campaign_id) == before
        assert session.get(Job, job.id).status == S.queued.value
    # The next transaction of the same kind commits its own change only.
    with ctx.db.transaction() as session:
        states.cancel_job(session, job.id)
    with ctx.db.session() as session:
        rows, _ = snapshot(session, campaign_id)
    assert rows[S.queued.value][0] == 2 and rows[S.canceled.value][0] == 1
    assert rows[S.canceled.value][1] == 2  # its two images moved with it


def test_submission_tallies_every_status_and_the_queued_work(ctx):
    campaign_id = submit(ctx, 5)
    with ctx.db.session() as session:
        rows, buckets = snapshot(session, campaign_id)
        reserved = sum(session.execute(select(Job.reserved_gpu_seconds).where(Job.campaign_id == campaign_id)).scalars())
    assert set(rows) == {s.value for s in S}
    assert rows[S.queued.value][:2] == (5, 10) and rows[S.queued.value][2] == pytest.approx(round(reserved, 6))
    assert all(rows[s.value][0] == 0 for s in S if s is not S.queued) and buckets == {}


def test_finished_work_lands_in_its_bucket_and_the_janitor_prunes_old_ones(ctx):
    from farm.janitor import Janitor

    campaign_id = submit(ctx, 2)
    with ctx.db.transaction() as session:
        for job in session.execute(select(Job).where(Job.campaign_id == campaign_id)).scalars().all():
            states.assign_job(session, job.id, 1, "w1", 30)
            states.start_job(session, job.id, 1, "w1", 30, "i1")
            states.complete_job(session, job.id, 1, "w1", gpu_seconds=1.0)
    with ctx.db.session() as session:
        rows, buckets = snapshot(session, campaign_id)
    assert rows[S.succeeded.value][0] == 2 and rows[S.succeeded.value][4] and rows[S.running.value][3]
    assert sum(jobs for jobs, _ in buckets.values()) == 2
    assert Janitor(ctx).prune_throughput(now=utcnow()) == 0  # young buckets stay
    assert Janitor(ctx).prune_throughput(now=utcnow() + dt.timedelta(hours=2)) == len(buckets)
