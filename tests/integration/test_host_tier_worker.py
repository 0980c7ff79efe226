"""A worker with a host-memory tier on Postgres and S3: a model pushed off its
(too small) VRAM budget by another is served back from host memory, the load
is counted with source "host", and GET /workers shows the tier."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.registry import add_model
from farm.scheduler.service import CeleryDispatcher, Scheduler
from farm.services import jobs as job_service
from farm.settings import Settings
from farm.workers.runtime import WorkerRuntime
from tests.support.api import auth
from tests.support.worker_jobs import submit_and_execute

pytestmark = pytest.mark.integration


def loads(model_id: str, source: str) -> float:
    return REGISTRY.get_sample_value("farm_model_load_seconds_count", {"model": model_id, "source": source}) or 0.0


@pytest.fixture()
def farm(tmp_path, migrated_postgres_url, s3, s3_bucket, tiny_models):
    endpoint, access_key, secret_key = s3
    # Each model is declared at 1 GB and the VRAM budget is 1 GB: the worker
    # holds one at a time, and 2 GB of host memory keep the other.
    settings = Settings(home=tmp_path / "home", database_url=migrated_postgres_url, s3_endpoint=endpoint,
                        s3_access_key=access_key, s3_secret_key=secret_key, s3_bucket=s3_bucket, device="cpu",
                        worker_vram_gb=1.0, worker_ram_cache_gb=2.0, worker_h2d_gbps=15.0)
    ctx = build_context(settings, events=LocalEvents())
    suffix = uuid.uuid4().hex[:6]
    models = (f"tier-a-{suffix}", f"tier-b-{suffix}")
    with ctx.db.transaction() as session:
        add_model(session, models[0], str(tiny_models["tiny-a"]), vram_gb=1.0)
        add_model(session, models[1], str(tiny_models["tiny-b"]), vram_gb=1.0)
        user, token = create_user(session, f"tier-{suffix}")
    runtime = WorkerRuntime(ctx, name=f"w-tier-{suffix}")
    runtime.register()
    return ctx, user, token, runtime, models


def test_an_evicted_model_is_served_from_host_memory_and_the_api_shows_the_tier(farm):
    ctx, user, token, runtime, (model_a, model_b) = farm
    request = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3}
    from_disk, from_host = loads(model_a, "disk"), loads(model_a, "host")

    _, output_before, image_before = submit_and_execute(ctx, user, runtime, {**request, "model": model_a})
    submit_and_execute(ctx, user, runtime, {**request, "model": model_b})  # pushes model_a to host memory
    runtime.heartbeat()
    client = create_app(ctx.settings, context=ctx).test_client()
    [listed] = [w for w in client.get("/api/v1/workers", headers=auth(token)).get_json()["workers"] if w["id"] == runtime.name]
    assert [m["id"] for m in listed["loaded_models"]] == [model_b]
    assert [m["id"] for m in listed["host_models"]] == [model_a]
    assert (listed["ram_cache_gb"], listed["h2d_gbps"]) == (2.0, 15.0)

    _, output_after, image_after = submit_and_execute(ctx, user, runtime, {**request, "model": model_a})
    assert loads(model_a, "disk") == from_disk + 1 and loads(model_a, "host") == from_host + 1
    # The lineage says where each render's model came from.
    assert (output_before.lineage["timings"]["model_load_source"], output_after.lineage["timings"]["model_load_source"]) \
        == ("disk", "host")
    # Same pipeline, same seed: the same image as before its trip to host memory.
    assert image_after == image_before
    runtime.heartbeat()
    [listed] = [w for w in client.get("/api/v1/workers", headers=auth(token)).get_json()["workers"] if w["id"] == runtime.name]
    assert [m["id"] for m in listed["loaded_models"]] == [model_a]
    assert [m["id"] for m in listed["host_models"]] == [model_b]

    # The scheduler reads the tier into its snapshot.
    job_service.submit_job(ctx, user, {**request, "model": model_b})
    snapshot, _ = Scheduler(ctx, CeleryDispatcher(None)).load_snapshot()
    [state] = [w for w in snapshot.workers if w.id == runtime.name]
    assert state.host_models == frozenset({model_b}) and (state.h2d_gbps, state.ram_cache_gb) == (15.0, 2.0)
