"""One job attempt on a worker, in-process: success, stale attempt, cancel, out of memory."""

from __future__ import annotations

import uuid

import pytest
import torch

from farm import states
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, Output
from farm.registry import add_model
from farm.scheduler.service import CeleryDispatcher, Scheduler
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model
from tests.support.factories import make_job


@pytest.fixture()
def farm_ctx(sqlite_settings, tmp_path):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0})
    ctx = build_context(settings, events=LocalEvents())
    model_dir = write_tiny_model(tmp_path / "tiny", family="sd", seed=0)
    with ctx.db.transaction() as session:
        add_model(session, "tiny", str(model_dir))
    return ctx


def new_job(ctx, worker: str) -> uuid.UUID:
    job_id = make_job(ctx, model="tiny")
    with ctx.db.transaction() as session:
        states.assign_job(session, job_id, 1, worker, 30)
    return job_id


def test_a_job_renders_uploads_and_records(farm_ctx):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    assert render_module.execute_job(runtime, job_id, 1) == "succeeded"
    with farm_ctx.db.session() as session:
        job = session.get(Job, job_id)
        [output] = job.outputs
    assert job.status == "succeeded" and job.gpu_seconds > 0
    assert farm_ctx.storage.get(output.object_key)[:4] == b"\x89PNG"
    assert output.lineage["content_sha256"] == output.content_sha256
    # Running the same attempt again is refused: it is no longer assigned.
    assert render_module.execute_job(runtime, job_id, 1) == "skipped"


def test_stale_attempt_is_skipped(farm_ctx):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    with farm_ctx.db.transaction() as session:
        states.requeue_job(session, job_id, 1, "lease expired", 3)
    assert render_module.execute_job(runtime, job_id, 1) == "skipped"


def test_out_of_memory_requeues_away_from_this_worker(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="small-gpu")
    job_id = new_job(farm_ctx, "small-gpu")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(render_module, "render", out_of_memory)
    assert render_module.execute_job(runtime, job_id, 1) == "requeued"
    with farm_ctx.db.session() as session:
        job = session.get(Job, job_id)
        assert session.query(Output).filter_by(job_id=job_id).count() == 0
    assert (job.status, job.attempt, job.excluded_workers) == ("queued", 2, ["small-gpu"])
    assert "out of memory on small-gpu" in job.error

    # The scheduler will not send it back there.
    runtime.register()
    snapshot, _ = Scheduler(farm_ctx, CeleryDispatcher(None)).load_snapshot()
    from farm.scheduler.policy import place

    decisions = place(snapshot)
    assert decisions.assignments == []
    assert "ran out of memory on small-gpu" in decisions.unplaceable[job_id]


def test_other_errors_fail_the_job_with_the_reason(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job_id = new_job(farm_ctx, "w1")
    monkeypatch.setattr(render_module, "render", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad latent shape")))
    assert render_module.execute_job(runtime, job_id, 1) == "failed"
    with farm_ctx.db.session() as session:
        job = session.get(Job, job_id)
    assert job.status == "failed" and job.error == "ValueError: bad latent shape"


def test_rerender_reproduces_the_same_bytes(farm_ctx):
    from farm.api import create_app
    from farm.auth import create_user
    from farm.services import jobs as job_service

    with farm_ctx.db.transaction() as session:
        user, token = create_user(session, "ana")
    runtime = WorkerRuntime(farm_ctx, name="w1")
    job = job_service.submit_job(farm_ctx, user, {"prompt": "a lighthouse", "model": "tiny", "width": 64, "height": 64,
                                                  "steps": 2, "seed": 11, "num_images": 2})
    with farm_ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, "w1", 30)
    assert render_module.execute_job(runtime, job.id, 1) == "succeeded"
    with farm_ctx.db.session() as session:
        second = session.query(Output).filter_by(job_id=job.id, index=1).one()
    again = job_service.rerender_output(farm_ctx, user, str(second.id))
    assert again.seed == 12 and again.params["num_images"] == 1
    with farm_ctx.db.transaction() as session:
        states.assign_job(session, again.id, 1, "w1", 30)
    assert render_module.execute_job(runtime, again.id, 1) == "succeeded"
    client = create_app(farm_ctx.settings, context=farm_ctx).test_client()
    view = client.get(f"/api/v1/jobs/{again.id}", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert view["rerender_of"] == str(second.id) and view["rerender_matches"] is True
    lineage = client.get(view["outputs"][0]["lineage_url"], headers={"Authorization": f"Bearer {token}"}).get_json()
    assert lineage["rerender_of"] == str(second.id) and lineage["content_sha256"] == second.content_sha256
    # Another user cannot rerender it.
    with farm_ctx.db.transaction() as session:
        _, other = create_user(session, "eve")
    refused = client.post(f"/api/v1/outputs/{second.id}/rerender", headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 404


def test_self_attention_guidance_changes_the_image_and_zero_is_a_plain_render(farm_ctx):
    from farm.auth import create_user
    from farm.services import jobs as job_service

    with farm_ctx.db.transaction() as session:
        user, _ = create_user(session, "sag")
    runtime = WorkerRuntime(farm_ctx, name="w1")
    base = {"prompt": "a lighthouse", "model": "tiny", "width": 64, "height": 64, "steps": 3, "seed": 5,
            "sampler": "dpmpp_2m"}

    def rendered(**extra) -> Output:
        job = job_service.submit_job(farm_ctx, user, {**base, **extra})
        with farm_ctx.db.transaction() as session:
            states.assign_job(session, job.id, 1, "w1", 30)
        assert render_module.execute_job(runtime, job.id, 1) == "succeeded"
        with farm_ctx.db.session() as session:
            return session.query(Output).filter_by(job_id=job.id).one()

    plain, zero, guided = rendered(), rendered(sag_scale=0), rendered(sag_scale=0.75)
    storage = farm_ctx.storage
    assert storage.get(zero.object_key) == storage.get(plain.object_key)
    assert guided.content_sha256 != plain.content_sha256
    assert guided.lineage["params"]["sag_scale"] == 0.75 and "sag_scale" not in zero.lineage["params"]
    # The SAG pipeline shares the UNet and gives its attention back: a plain render after it is unchanged.
    assert rendered().content_sha256 == plain.content_sha256
