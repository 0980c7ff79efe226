"""The janitor deletes objects of attempts that did not complete, and nothing else."""

from __future__ import annotations

import datetime as dt

import pytest

from farm import states
from farm.context import build_context
from farm.janitor import Janitor
from farm.models import Job, Output, utcnow
from farm.storage import output_key, sidecar_key
from tests.support.factories import make_job


@pytest.fixture()
def ctx(sqlite_settings):
    return build_context(sqlite_settings.model_copy(update={"orphan_grace_s": 60.0}))


def put_attempt(ctx, job_id, attempt) -> list[str]:
    with ctx.db.session() as session:
        user_id = session.get(Job, job_id).user_id
    image = output_key(user_id, job_id, attempt, 0, "png")
    for key in (image, sidecar_key(image)):
        ctx.storage.put(key, b"x", "application/octet-stream")
    return [image, sidecar_key(image)]


def run_attempt(ctx, job_id, attempt, worker="w1"):
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, attempt, worker, 30)
        states.start_job(session, job_id, attempt, worker, 30, instance_id="i")


def keys(ctx) -> set[str]:
    return {o.key for o in ctx.storage.list("outputs/")}


def test_sweep_deletes_only_unreferenced_objects_of_ended_or_superseded_attempts(ctx):
    # Succeeded on attempt 2; attempt 1 was cut off mid-upload.
    done = make_job(ctx)
    run_attempt(ctx, done, 1)
    superseded = put_attempt(ctx, done, 1)
    with ctx.db.transaction() as session:
        states.requeue_job(session, done, 1, "worker lost", 3)
    run_attempt(ctx, done, 2)
    kept = put_attempt(ctx, done, 2)
    with ctx.db.transaction() as session:
        states.complete_job(session, done, 2, "w1")
        session.add(Output(job_id=done, user_id=session.get(Job, done).user_id, attempt=2, index=0, object_key=kept[0],
                           sidecar_key=kept[1], content_type="image/png", content_sha256="0" * 64, byte_size=1, width=1,
                           height=1, seed=1, lineage={}))
    # Running attempt 3 right now, after two attempts that left objects.
    live = make_job(ctx)
    run_attempt(ctx, live, 1)
    left_by_first = put_attempt(ctx, live, 1)
    with ctx.db.transaction() as session:
        states.requeue_job(session, live, 1, "lease expired", 5)
    run_attempt(ctx, live, 2)
    in_flight = put_attempt(ctx, live, 2)
    # Failed on its only attempt, with a half upload.
    failed = make_job(ctx)
    run_attempt(ctx, failed, 1)
    half = put_attempt(ctx, failed, 1)[:1]
    ctx.storage.delete(sidecar_key(half[0]))
    with ctx.db.transaction() as session:
        states.fail_job(session, failed, 1, "boom")
    # A job that succeeded on its first attempt is not even looked at.
    plain = make_job(ctx)
    run_attempt(ctx, plain, 1)
    untouched = put_attempt(ctx, plain, 1)
    everything = keys(ctx)

    janitor = Janitor(ctx)
    # Within the grace nothing goes.
    young = janitor.sweep()
    assert young.deleted == [] and keys(ctx) == everything and young.kept_young == 5

    later = janitor.sweep(now=utcnow() + dt.timedelta(seconds=120))
    assert sorted(later.deleted) == sorted(superseded + left_by_first + half)
    assert keys(ctx) == set(kept + in_flight + untouched)
    assert later.jobs == 3


def test_sweep_skips_jobs_found_clean_until_they_change(ctx):
    job_id = make_job(ctx)
    run_attempt(ctx, job_id, 1)
    with ctx.db.transaction() as session:
        states.fail_job(session, job_id, 1, "boom")
    janitor = Janitor(ctx)
    assert janitor.sweep().jobs == 1
    assert janitor.sweep().jobs == 0
    with ctx.db.transaction() as session:
        states.retry_failed_jobs(session, [job_id])
    assert janitor.sweep().jobs == 1


def test_keys_of_other_shapes_are_never_swept(ctx):
    job_id = make_job(ctx)
    with ctx.db.session() as session:
        user_id = session.get(Job, job_id).user_id
    legacy = f"outputs/u{user_id}/{job_id}/0.png"
    ctx.storage.put(legacy, b"x", "image/png")
    run_attempt(ctx, job_id, 1)
    half_upload = put_attempt(ctx, job_id, 1)
    with ctx.db.transaction() as session:
        states.fail_job(session, job_id, 1, "boom")
    # Past the orphan grace, well within the look-back: the sweep visits the job and
    # deletes its attempt's keys, so the legacy key was looked at and left.
    report = Janitor(ctx).sweep(now=utcnow() + dt.timedelta(seconds=ctx.settings.orphan_grace_s + 600))
    assert sorted(report.deleted) == sorted(half_upload)
    assert ctx.storage.exists(legacy)


def test_a_window_with_more_candidates_than_a_sweep_takes_is_covered_in_turns(ctx, monkeypatch):
    import farm.janitor as janitor_module

    monkeypatch.setattr(janitor_module, "MAX_JOBS_PER_SWEEP", 2)
    left = []
    for _ in range(5):  # five canceled jobs, each with a half upload
        job_id = make_job(ctx)
        run_attempt(ctx, job_id, 1)
        left += put_attempt(ctx, job_id, 1)
        with ctx.db.transaction() as session:
            states.cancel_job(session, job_id)
    janitor = Janitor(ctx)
    later = utcnow() + dt.timedelta(seconds=120)
    deleted = []
    for _ in range(3):
        deleted += janitor.sweep(now=later).deleted
    assert sorted(deleted) == sorted(left) and keys(ctx) == set()
    # The next pass starts over and skips the jobs found clean; memory holds only the window's jobs.
    assert janitor.sweep(now=later).jobs == 0
    assert len(janitor._clean) == 5
