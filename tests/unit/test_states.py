"""The job state machine and fencing, on the embedded SQLite database."""

from __future__ import annotations

import pytest

from farm import states
from farm.context import build_context
from farm.models import Job, JobStatus
from tests.support.factories import make_job


@pytest.fixture()
def ctx(sqlite_settings):
    return build_context(sqlite_settings)


def status_of(ctx, job_id):
    with ctx.db.session() as session:
        return session.get(Job, job_id)


def test_transition_table_is_the_documented_one():
    assert states.can_transition("queued", "assigned")
    assert states.can_transition("assigned", "running")
    assert states.can_transition("running", "succeeded")
    assert states.can_transition("running", "queued")
    assert not states.can_transition("queued", "running")
    assert not states.can_transition("queued", "succeeded")
    for final in ("succeeded", "canceled"):
        assert not any(states.can_transition(final, target) for target in JobStatus)
    # A failed job may only be queued again (a user's explicit retry).
    assert [t for t in JobStatus if states.can_transition("failed", t)] == [JobStatus.queued]


def test_happy_path(ctx):
    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", lease_s=30)
    with ctx.db.transaction() as s:
        states.start_job(s, job_id, 1, "w1", lease_s=30)
        assert states.record_progress(s, job_id, 1, 3, 10, 1.5)
    with ctx.db.transaction() as s:
        states.complete_job(s, job_id, 1, "w1")
    job = status_of(ctx, job_id)
    assert (job.status, job.attempt, job.progress_step, job.worker_id) == ("succeeded", 1, 3, "w1")
    assert job.assigned_at and job.started_at and job.finished_at and job.lease_expires_at is None


def test_cannot_skip_states(ctx):
    job_id = make_job(ctx)
    with pytest.raises(states.InvalidTransitionError, match="is queued"):
        with ctx.db.transaction() as s:
            states.complete_job(s, job_id, 1, "w1")
    with pytest.raises(states.InvalidTransitionError):
        with ctx.db.transaction() as s:
            states.start_job(s, job_id, 1, "w1", lease_s=30)  # never assigned
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", lease_s=30)
    with pytest.raises(states.StaleAttemptError, match="no longer holds"):
        with ctx.db.transaction() as s:
            states.start_job(s, job_id, 1, "w2", lease_s=30)  # assigned to w1, not w2


def test_stale_attempt_is_refused_after_requeue(ctx):
    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", 30)
        states.start_job(s, job_id, 1, "w1", 30)
    with ctx.db.transaction() as s:
        assert states.requeue_job(s, job_id, 1, "lease expired", max_attempts=3) == JobStatus.queued
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 2, "w2", 30)
        states.start_job(s, job_id, 2, "w2", 30)
    # The old attempt wakes up late: every write it makes is refused.
    with ctx.db.transaction() as s:
        assert states.record_progress(s, job_id, 1, 5, 10, None) is False
    with pytest.raises(states.StaleAttemptError, match="attempt 1 is stale"):
        with ctx.db.transaction() as s:
            states.complete_job(s, job_id, 1, "w1")
    with pytest.raises(states.StaleAttemptError):
        with ctx.db.transaction() as s:
            states.fail_job(s, job_id, 1, "boom")
    with ctx.db.transaction() as s:
        states.complete_job(s, job_id, 2, "w2")
    job = status_of(ctx, job_id)
    assert (job.status, job.attempt, job.worker_id) == ("succeeded", 2, "w2")


def test_requeue_gives_up_after_max_attempts(ctx):
    job_id = make_job(ctx)
    for attempt in (1, 2):
        with ctx.db.transaction() as s:
            states.assign_job(s, job_id, attempt, "w1", 30)
            assert states.requeue_job(s, job_id, attempt, "worker lost", max_attempts=2) == (
                JobStatus.queued if attempt == 1 else JobStatus.failed)
    job = status_of(ctx, job_id)
    assert job.status == "failed"
    assert "gave up after 2 failed attempts: worker lost" in job.error


def test_requeue_excludes_worker_on_out_of_memory(ctx):
    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "small", 30)
        states.requeue_job(s, job_id, 1, "out of memory", 3, exclude_worker="small")
    assert status_of(ctx, job_id).excluded_workers == ["small"]


def test_cancel_running_job_stops_progress_and_completion(ctx):
    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", 30)
        states.start_job(s, job_id, 1, "w1", 30)
    with ctx.db.transaction() as s:
        states.cancel_job(s, job_id)
    with ctx.db.transaction() as s:
        assert states.record_progress(s, job_id, 1, 2, 10, None) is False
    with pytest.raises(states.InvalidTransitionError, match="is canceled"):
        with ctx.db.transaction() as s:
            states.complete_job(s, job_id, 1, "w1")
    with pytest.raises(states.InvalidTransitionError):
        with ctx.db.transaction() as s:
            states.cancel_job(s, job_id)


def test_only_one_of_two_assignments_wins(ctx):
    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", 30)
    with pytest.raises(states.InvalidTransitionError):
        with ctx.db.transaction() as s:
            states.assign_job(s, job_id, 1, "w2", 30)
    assert status_of(ctx, job_id).worker_id == "w1"


def test_a_heartbeat_renews_only_the_attempt_its_process_runs(ctx):
    mine, other_process, assigned = make_job(ctx), make_job(ctx), make_job(ctx)
    with ctx.db.transaction() as s:
        for job_id in (mine, other_process, assigned):
            states.assign_job(s, job_id, 1, "w1", 1)
        states.start_job(s, mine, 1, "w1", 1, instance_id="now")
        # A job an earlier process of the same name started and never finished.
        states.start_job(s, other_process, 1, "w1", 1, instance_id="before")
    before = {j: status_of(ctx, j).lease_expires_at for j in (mine, other_process, assigned)}
    with ctx.db.transaction() as s:
        assert states.renew_lease(s, mine, 1, "now", 60)
        assert not states.renew_lease(s, other_process, 1, "now", 60)
        assert not states.renew_lease(s, mine, 2, "now", 60)  # a stale attempt renews nothing
        assert not states.renew_lease(s, assigned, 1, "now", 60)
    assert status_of(ctx, mine).lease_expires_at > before[mine]
    assert status_of(ctx, other_process).lease_expires_at == before[other_process]
    assert status_of(ctx, assigned).lease_expires_at == before[assigned]


def test_a_restarted_worker_hands_back_its_predecessors_jobs(ctx):
    old, current, elsewhere = make_job(ctx), make_job(ctx), make_job(ctx)
    with ctx.db.transaction() as s:
        for job_id, worker in ((old, "w1"), (current, "w1"), (elsewhere, "w2")):
            states.assign_job(s, job_id, 1, worker, 30)
        states.start_job(s, old, 1, "w1", 30, instance_id="before")
        states.start_job(s, current, 1, "w1", 30, instance_id="now")
        states.start_job(s, elsewhere, 1, "w2", 30, instance_id="before")
    with ctx.db.transaction() as s:
        assert states.requeue_predecessor_jobs(s, "w1", "now", max_attempts=3) == 1
    assert (status_of(ctx, old).status, status_of(ctx, old).attempt, status_of(ctx, old).failures) == ("queued", 2, 1)
    assert status_of(ctx, current).status == "running"
    assert status_of(ctx, elsewhere).status == "running"


def test_a_hand_back_starts_a_new_attempt_without_using_one_up(ctx):
    job_id = make_job(ctx)
    for attempt in (1, 2, 3):
        with ctx.db.transaction() as s:
            states.assign_job(s, job_id, attempt, "w1", 30)
            assert states.requeue_job(s, job_id, attempt, "worker stopping", max_attempts=2, charge=False) == JobStatus.queued
    job = status_of(ctx, job_id)
    assert (job.status, job.attempt, job.failures) == ("queued", 4, 0)
    # Failures count, hand-backs do not: two failures with max_attempts=2 fail the job.
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 4, "w1", 30)
        assert states.requeue_job(s, job_id, 4, "lost", max_attempts=2) == JobStatus.queued
        states.assign_job(s, job_id, 5, "w1", 30)
        assert states.requeue_job(s, job_id, 5, "lost", max_attempts=2) == JobStatus.failed


def test_unknown_job(ctx):
    import uuid

    with pytest.raises(states.JobNotFoundError):
        with ctx.db.transaction() as s:
            states.cancel_job(s, uuid.uuid4())


def test_a_progress_write_leaves_updated_at_which_marks_state_changes(ctx):
    """The kept queue and the janitor read updated_at for state changes; progress (four writes a second per
    render) leaves it, so that Postgres can update the row in place (bench/progress_writes.py)."""
    from farm.models import Job

    job_id = make_job(ctx)
    with ctx.db.transaction() as s:
        states.assign_job(s, job_id, 1, "w1", lease_s=30)
        states.start_job(s, job_id, 1, "w1", lease_s=30)
    with ctx.db.session() as s:
        started = s.get(Job, job_id).updated_at
    with ctx.db.transaction() as s:
        assert states.record_progress(s, job_id, 1, 3, 10, 1.5)
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert (job.progress_step, job.eta_s, job.updated_at) == (3, 1.5, started)
    with ctx.db.transaction() as s:
        states.complete_job(s, job_id, 1, "w1")
    with ctx.db.session() as s:
        assert s.get(Job, job_id).updated_at > started
