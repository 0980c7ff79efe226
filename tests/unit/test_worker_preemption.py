"""A job attempt preempted on a worker, in-process (SQLite, a local store):
the render stops at a step, its checkpoint goes to the store, the job goes
back to the queue marked resumable, and the next attempt continues it to the
bytes a render that was never stopped gives."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from farm import states
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, Output
from farm.registry import add_model
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model
from tests.support.factories import make_job


class PreemptingEvents(LocalEvents):
    """Asks for a preemption of the job as its progress passes ``at_step`` (once)."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx = None
        self.at_step: int | None = None
        self.target: tuple[uuid.UUID, int] | None = None

    def publish_live(self, job_id, campaign_id, message: dict) -> None:
        if (self.at_step is not None and message.get("type") == "progress" and message["step"] >= self.at_step
                and self.target == (job_id, self.target[1])):
            with self.ctx.db.transaction() as session:
                assert states.request_preemption(session, job_id, self.target[1], max_preemptions=2)
            self.at_step = None


@pytest.fixture()
def farm_ctx(sqlite_settings, tmp_path):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0, "progress_interval_s": 0.0})
    events = PreemptingEvents()
    ctx = build_context(settings, events=events)
    events.ctx = ctx
    model_dir = write_tiny_model(tmp_path / "tiny", family="sd", seed=0)
    with ctx.db.transaction() as session:
        add_model(session, "tiny", str(model_dir))
    return ctx


def two_image_job(ctx, sampler: str = "dpmpp_2m") -> uuid.UUID:
    params = {"prompt": "p", "final_prompt": "p", "final_negative_prompt": "", "width": 64, "height": 64, "steps": 4,
              "guidance_scale": 5.0, "sampler": sampler, "scheduler": "normal", "seed": 7, "num_images": 2,
              "output_format": "png", "model": "tiny", "family": "sd", "negative_prompt": ""}
    return make_job(ctx, model="tiny", params=params, steps=4, num_images=2, seed=7)


def run_attempt(ctx, runtime, job_id, attempt: int) -> str:
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, attempt, runtime.name, 30)
    return render_module.execute_job(runtime, job_id, attempt)


def output_hashes(ctx, job_id) -> list[str]:
    with ctx.db.session() as session:
        return [o.content_sha256 for o in session.query(Output).filter_by(job_id=job_id).order_by(Output.index)]


@pytest.mark.parametrize("at_step", [2, 6])  # in the first image; in the second (steps count across images)
def test_preempted_job_continues_to_the_uninterrupted_bytes(farm_ctx, at_step):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    whole = two_image_job(farm_ctx)
    assert run_attempt(farm_ctx, runtime, whole, 1) == "succeeded"

    job_id = two_image_job(farm_ctx)
    farm_ctx.events.at_step, farm_ctx.events.target = at_step, (job_id, 1)
    counted = REGISTRY.get_sample_value("farm_jobs_requeued_total", {"reason": "preempted"}) or 0.0
    assert run_attempt(farm_ctx, runtime, job_id, 1) == "preempted"
    assert REGISTRY.get_sample_value("farm_jobs_requeued_total", {"reason": "preempted"}) == counted + 1
    with farm_ctx.db.session() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.failures, job.preemptions, job.preempt_requested) == ("queued", 2, 0, 1, False)
        assert job.resume_key and "preempted on w1" in job.error
        assert session.query(Output).filter_by(job_id=job_id).count() == 0
        key = job.resume_key
    assert farm_ctx.storage.get(key)  # the checkpoint is in the store

    # Another worker process (a fresh pipeline object) continues it.
    other = WorkerRuntime(farm_ctx, name="w2")
    assert run_attempt(farm_ctx, other, job_id, 2) == "succeeded"
    assert output_hashes(farm_ctx, job_id) == output_hashes(farm_ctx, whole)
    with farm_ctx.db.session() as session:
        assert session.get(Job, job_id).resume_key is None
    assert not farm_ctx.storage.exists(key)  # done with: deleted


def test_a_flag_on_a_non_resumable_sampler_is_ignored(farm_ctx):
    pytest.importorskip("torchsde")
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = two_image_job(farm_ctx, sampler="dpmpp_sde")
    farm_ctx.events.at_step, farm_ctx.events.target = 1, (job_id, 1)
    assert run_attempt(farm_ctx, runtime, job_id, 1) == "succeeded"


def test_a_missing_checkpoint_costs_the_steps_not_the_job(farm_ctx):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    whole = two_image_job(farm_ctx)
    assert run_attempt(farm_ctx, runtime, whole, 1) == "succeeded"
    job_id = two_image_job(farm_ctx)
    farm_ctx.events.at_step, farm_ctx.events.target = 2, (job_id, 1)
    assert run_attempt(farm_ctx, runtime, job_id, 1) == "preempted"
    with farm_ctx.db.session() as session:
        farm_ctx.storage.delete(session.get(Job, job_id).resume_key)
    assert run_attempt(farm_ctx, runtime, job_id, 2) == "succeeded"
    assert output_hashes(farm_ctx, job_id) == output_hashes(farm_ctx, whole)


def running_render(ctx, runtime, sampler: str, eta_s: float) -> uuid.UUID:
    job_id = two_image_job(ctx, sampler=sampler)
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, runtime.name, 30)
        states.start_job(session, job_id, 1, runtime.name, 30, instance_id=runtime.instance_id)
        states.record_progress(session, job_id, 1, 1, 8, eta_s)
    return job_id


@pytest.mark.parametrize("sampler,priority,expected", [("dpmpp_2m", 5, True), ("dpmpp_sde", 5, False),
                                                      ("dpmpp_2m", 0, False)])
def test_the_scheduler_flags_a_long_low_class_render_for_an_interactive_job(farm_ctx, sampler, priority, expected):
    from farm.scheduler.service import CeleryDispatcher, Scheduler
    from farm.workers.runtime import find_model

    runtime = WorkerRuntime(farm_ctx, name="w1")
    runtime.pipeline_for(find_model(farm_ctx, "tiny"))
    runtime.register()
    campaign = running_render(farm_ctx, runtime, sampler, eta_s=600.0)
    interactive = make_job(farm_ctx, user="bob", model="tiny", priority=priority)
    report = Scheduler(farm_ctx, CeleryDispatcher(None)).run_pass()
    with farm_ctx.db.session() as session:
        assert session.get(Job, campaign).preempt_requested is expected
        assert session.get(Job, interactive).status == "queued"
    assert report.preempted == int(expected)


def test_the_janitor_keeps_the_checkpoint_a_job_continues_from_and_sweeps_the_others(sqlite_settings):
    import datetime as dt

    from farm.janitor import Janitor
    from farm.models import utcnow
    from farm.storage import checkpoint_key

    ctx = build_context(sqlite_settings.model_copy(update={"orphan_grace_s": 60.0}))
    job_id = make_job(ctx)
    for attempt in (1, 2):
        with ctx.db.transaction() as session:
            states.assign_job(session, job_id, attempt, "w1", 30)
            states.start_job(session, job_id, attempt, "w1", 30, instance_id="i")
            user_id = session.get(Job, job_id).user_id
        ctx.storage.put(checkpoint_key(user_id, job_id, attempt), b"state", "application/octet-stream")
        with ctx.db.transaction() as session:
            states.preempt_job(session, job_id, attempt, checkpoint_key(user_id, job_id, attempt), "preempted", 3)
    stale, current = checkpoint_key(user_id, job_id, 1), checkpoint_key(user_id, job_id, 2)
    later = utcnow() + dt.timedelta(seconds=120)
    assert Janitor(ctx).sweep(now=later).deleted == [stale]
    assert ctx.storage.exists(current)
    with ctx.db.transaction() as session:
        states.cancel_job(session, job_id)
    assert Janitor(ctx).sweep(now=later).deleted == [current]
