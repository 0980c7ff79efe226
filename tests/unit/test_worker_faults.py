"""A worker through faults, in-process on the embedded database and store:
leases only for work in hand, database and store outages, fenced objects,
permanent store errors, hand-backs when stopping."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from farm import logs, states
from farm.models import Job, Output, Worker
from farm.scheduler.service import CeleryDispatcher, Scheduler
from farm.storage import StoragePermanentError, StorageUnavailableError, job_prefix
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from tests.unit.test_worker_render import farm_ctx, new_job  # noqa: F401  (fixture)


def job_row(ctx, job_id) -> Job:
    with ctx.db.session() as session:
        return session.get(Job, job_id)


def outputs_of(ctx, job_id) -> list[Output]:
    with ctx.db.session() as session:
        return session.execute(select(Output).where(Output.job_id == job_id).order_by(Output.index)).scalars().all()


def stored_keys(ctx, job_id) -> set[str]:
    job = job_row(ctx, job_id)
    return {o.key for o in ctx.storage.list(job_prefix(job.user_id, job.id))}


def referenced_keys(ctx, job_id) -> set[str]:
    return {key for o in outputs_of(ctx, job_id) for key in (o.object_key, o.sidecar_key)}


def db_down() -> OperationalError:
    return OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection unexpectedly"))


def test_a_heartbeat_renews_only_the_job_in_hand(farm_ctx):
    """A job whose task ended without a final state is not kept alive by the
    worker's heartbeat: its lease runs out and the scheduler re-queues it."""
    runtime = WorkerRuntime(farm_ctx, name="w1")
    runtime.register()
    job_id = new_job(farm_ctx, "w1")
    with farm_ctx.db.transaction() as session:
        states.start_job(session, job_id, 1, "w1", 0.5, instance_id=runtime.instance_id)
    lease = job_row(farm_ctx, job_id).lease_expires_at
    runtime.heartbeat()
    assert job_row(farm_ctx, job_id).lease_expires_at == lease
    runtime.take(job_id, 1)
    runtime.heartbeat()
    assert job_row(farm_ctx, job_id).lease_expires_at > lease
    runtime.release(job_id)

    with farm_ctx.db.transaction() as session:
        session.get(Job, job_id).lease_expires_at = lease - dt.timedelta(seconds=5)  # expired
    runtime.heartbeat()
    scheduler = Scheduler(farm_ctx, CeleryDispatcher(None))
    from farm.scheduler.service import PassReport

    report = PassReport()
    scheduler.reap(report)
    assert report.requeued == 1
    assert (job_row(farm_ctx, job_id).status, job_row(farm_ctx, job_id).attempt) == ("queued", 2)


def test_a_lease_the_heartbeat_cannot_renew_is_logged_with_the_job_fields(farm_ctx, caplog):
    """The heartbeat thread has no job bound; its line about a job it lost (here
    the job ended between the thread's look at the jobs in hand and the renewal)
    carries the job's fields, as every worker line about a job does."""
    runtime = WorkerRuntime(farm_ctx, name="w1")
    runtime.register()
    job_id = new_job(farm_ctx, "w1")
    with farm_ctx.db.transaction() as session:
        states.start_job(session, job_id, 1, "w1", 0.5, instance_id=runtime.instance_id)
    runtime.take(job_id, 1)
    with farm_ctx.db.transaction() as session:
        session.get(Job, job_id).status = "succeeded"
    caplog.handler.addFilter(logs.ContextFieldsFilter())
    with caplog.at_level("INFO", logger="farm.workers.runtime"):
        runtime.heartbeat()
    [line] = [r for r in caplog.records if "no longer this worker's" in r.getMessage()]
    assert (line.job_id, line.attempt, line.worker) == (str(job_id), 1, "w1")
    assert logs.bound_fields() == {}  # nothing stays bound on the heartbeat thread
    runtime.release(job_id)


def test_a_restart_under_the_same_name_adopts_nothing(farm_ctx):
    before = WorkerRuntime(farm_ctx, name="w1")
    before.register()
    job_id = new_job(farm_ctx, "w1")
    with farm_ctx.db.transaction() as session:
        states.start_job(session, job_id, 1, "w1", 30, instance_id=before.instance_id)
    after = WorkerRuntime(farm_ctx, name="w1")
    after.register()
    job = job_row(farm_ctx, job_id)
    assert (job.status, job.attempt, job.worker_id) == ("queued", 2, None)
    assert "restarted" in job.error
    with farm_ctx.db.session() as session:
        assert session.get(Worker, "w1").instance_id == after.instance_id


def test_a_database_outage_during_progress_and_completion_loses_nothing(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    refusals = {"complete": 3}
    real_complete = states.complete_job

    def progress_down(*args, **kwargs):
        raise db_down()

    def complete_after_outage(*args, **kwargs):
        if refusals["complete"]:
            refusals["complete"] -= 1
            raise db_down()
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(states, "record_progress", progress_down)
    monkeypatch.setattr(states, "complete_job", complete_after_outage)
    assert render_module.execute_job(runtime, job_id, 1) == "succeeded"
    assert refusals["complete"] == 0
    job = job_row(farm_ctx, job_id)
    assert (job.status, job.attempt) == ("succeeded", 1)
    assert len(outputs_of(farm_ctx, job_id)) == 1
    assert stored_keys(farm_ctx, job_id) == referenced_keys(farm_ctx, job_id)


def test_a_dropped_commit_that_landed_is_recorded_once(farm_ctx, monkeypatch):
    """The connection dies after the server committed the completion: the
    retry finds the job completed by this attempt and keeps its objects."""
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    real_complete, real_transaction = states.complete_job, farm_ctx.db.transaction
    completing = {"now": False, "dropped": 0}

    def complete(*args, **kwargs):
        completing["now"] = True
        return real_complete(*args, **kwargs)

    @contextlib.contextmanager
    def transaction():
        with real_transaction() as session:
            yield session
        if completing["now"] and not completing["dropped"]:
            completing["dropped"] += 1
            raise db_down()

    monkeypatch.setattr(states, "complete_job", complete)
    monkeypatch.setattr(farm_ctx.db, "transaction", transaction)
    assert render_module.execute_job(runtime, job_id, 1) == "succeeded"
    assert completing["dropped"] == 1
    assert len(outputs_of(farm_ctx, job_id)) == 1
    assert stored_keys(farm_ctx, job_id) == referenced_keys(farm_ctx, job_id) != set()


def test_a_store_outage_costs_the_attempt_not_the_job(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    store = farm_ctx.storage
    real_put = store.put

    def sidecars_fail(key, data, content_type):
        if key.endswith(".json"):
            raise StorageUnavailableError("object store", f"put {key}", "object store unavailable: connection refused")
        return real_put(key, data, content_type)

    monkeypatch.setattr(store, "put", sidecars_fail)
    assert render_module.execute_job(runtime, job_id, 1) == "requeued"
    job = job_row(farm_ctx, job_id)
    assert (job.status, job.attempt, job.failures) == ("queued", 2, 1)
    assert "unavailable" in job.error
    # The image the attempt did upload is gone with it.
    assert stored_keys(farm_ctx, job_id) == set()

    monkeypatch.setattr(store, "put", real_put)
    with farm_ctx.db.transaction() as session:
        states.assign_job(session, job_id, 2, "w1", 30)
    assert render_module.execute_job(runtime, job_id, 2) == "succeeded"
    [output] = outputs_of(farm_ctx, job_id)
    assert output.attempt == 2 and "/a2/" in output.object_key


def test_a_store_that_refuses_the_farm_makes_the_worker_unhealthy(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    runtime.register()
    job_id = new_job(farm_ctx, "w1")
    store = farm_ctx.storage
    refusal = StoragePermanentError("object store", "put", "object store: put failed: InvalidAccessKeyId: the store "
                                    "does not know FARM_S3_ACCESS_KEY; set the access key of an existing user")

    def refuse(*args, **kwargs):
        raise refusal

    monkeypatch.setattr(store, "put", refuse)
    monkeypatch.setattr(store, "check", refuse, raising=False)
    assert render_module.execute_job(runtime, job_id, 1) == "requeued"
    job = job_row(farm_ctx, job_id)
    assert (job.status, job.attempt) == ("queued", 2) and "FARM_S3_ACCESS_KEY" in job.error
    with farm_ctx.db.session() as session:
        row = session.get(Worker, "w1")
        assert row.state == "unhealthy" and "FARM_S3_ACCESS_KEY" in row.health_error
    # The scheduler sends it nothing, so the queue is not burnt through.
    snapshot, _ = Scheduler(farm_ctx, CeleryDispatcher(None)).load_snapshot()
    assert [w.id for w in snapshot.workers] == []
    # A message already on its way is handed back without costing an attempt.
    with farm_ctx.db.transaction() as session:
        states.assign_job(session, job_id, 2, "w1", 30)
    assert render_module.execute_job(runtime, job_id, 2) == "handed back"
    assert (job_row(farm_ctx, job_id).attempt, job_row(farm_ctx, job_id).failures) == (3, 1)

    monkeypatch.undo()
    assert runtime.probe_storage()
    runtime.heartbeat()
    with farm_ctx.db.session() as session:
        assert session.get(Worker, "w1").state == "online"


def test_a_stale_attempt_cannot_touch_the_current_attempts_objects(farm_ctx, monkeypatch):
    """Attempt 1 is frozen before its upload; its lease expires, attempt 2
    completes on another worker; attempt 1 wakes, uploads and is refused."""
    stale, current = WorkerRuntime(farm_ctx, name="w1"), WorkerRuntime(farm_ctx, name="w2")
    job_id = new_job(farm_ctx, "w1")
    real_put_all = render_module._put_all
    woke = {"done": False}

    def frozen_then_resumed(storage, objects):
        if not woke["done"] and all("/a1/" in key for key, _, _ in objects):
            woke["done"] = True
            with farm_ctx.db.transaction() as session:
                states.requeue_job(session, job_id, 1, "lease on worker w1 expired", 3)
                states.assign_job(session, job_id, 2, "w2", 30)
            assert render_module.execute_job(current, job_id, 2) == "succeeded"
        return real_put_all(storage, objects)

    monkeypatch.setattr(render_module, "_put_all", frozen_then_resumed)
    assert render_module.execute_job(stale, job_id, 1) == "refused"
    [output] = outputs_of(farm_ctx, job_id)
    assert output.attempt == 2
    image = farm_ctx.storage.get(output.object_key)
    assert hashlib.sha256(image).hexdigest() == output.content_sha256
    assert json.loads(farm_ctx.storage.get(output.sidecar_key))["attempt"] == 2
    # Bucket = rows: the stale attempt's objects are gone, the current ones stay.
    assert stored_keys(farm_ctx, job_id) == referenced_keys(farm_ctx, job_id)


def sigterm_when_taken(runtime, monkeypatch, grace_s: float) -> None:
    """SIGTERM (begin_stop) arrives as the worker takes its job."""
    real_take = runtime.take

    def take_then_sigterm(*args):
        real_take(*args)
        runtime.begin_stop(grace_s=grace_s)

    monkeypatch.setattr(runtime, "take", take_then_sigterm)


def test_a_stopping_worker_finishes_within_its_grace(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    sigterm_when_taken(runtime, monkeypatch, grace_s=60)
    assert render_module.execute_job(runtime, job_id, 1) == "succeeded"
    assert runtime.state == "stopping"


def test_a_stopping_worker_hands_back_its_job_when_the_grace_runs_out(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    runtime.register()
    job_id, waiting = new_job(farm_ctx, "w1"), new_job(farm_ctx, "w1")
    sigterm_when_taken(runtime, monkeypatch, grace_s=0)
    assert render_module.execute_job(runtime, job_id, 1) == "handed back"
    job = job_row(farm_ctx, job_id)
    assert (job.status, job.attempt, job.failures, job.worker_id) == ("queued", 2, 0, None)
    assert "cannot finish within its grace" in job.error
    assert stored_keys(farm_ctx, job_id) == set()
    # Going offline hands back what was sent to it and not started, at once.
    runtime.stop()
    assert (job_row(farm_ctx, waiting).status, job_row(farm_ctx, waiting).attempt) == ("queued", 2)
    with farm_ctx.db.session() as session:
        assert session.get(Worker, "w1").state == "offline"


def test_a_render_whose_eta_passes_the_grace_is_handed_back_before_the_grace_ends(farm_ctx):
    import time

    runtime = WorkerRuntime(farm_ctx, name="w1")
    reporter = render_module.ProgressReporter(runtime, uuid.uuid4(), 1)
    reporter.started = time.perf_counter() - 10  # 10 s for the first of 10 steps: about 90 s to go
    runtime.begin_stop(grace_s=30)
    with pytest.raises(render_module.HandBack, match=r"about (\d+\.\d)s to go") as raised:
        reporter(1, 10)
    # 90 s, plus nine times whatever passed between setting started and the call (a slow CI run: a second or so).
    assert 90.0 <= float(re.search(r"about (\d+\.\d)s", str(raised.value)).group(1)) < 100.0
    assert time.monotonic() < runtime.stop_deadline  # the grace had not run out


def test_a_superseded_process_leaves_the_row_to_its_successor(farm_ctx, monkeypatch):
    import os

    before, after = WorkerRuntime(farm_ctx, name="w1"), WorkerRuntime(farm_ctx, name="w1")
    before.register()
    after.register()
    signals = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    before.heartbeat()
    assert signals and signals[0][0] == os.getpid()  # it asks its own Celery worker to stop
    before.stop()
    with farm_ctx.db.session() as session:
        row = session.get(Worker, "w1")
        assert row.state == "online" and row.instance_id == after.instance_id
