"""A worker's metrics, in-process on the embedded database and store: render
and load histograms, images produced and failed by reason, VRAM, held
models, busy, and its health answers."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY

from farm.storage import StorageUnavailableError
from farm.workers import pipelines
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from tests.unit.test_worker_render import farm_ctx, new_job  # noqa: F401  (fixture)


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_render_is_measured(farm_ctx):
    runtime = WorkerRuntime(farm_ctx, name="w-measured")
    renders, loads = value("farm_render_seconds_count", model="tiny"), value("farm_model_load_seconds_count", model="tiny", source="disk")
    produced = value("farm_images_produced_total", model="tiny")
    seen_busy = []
    real_render = render_module.render

    def render_and_look(*args, **kwargs):
        seen_busy.append(value("farm_worker_busy", worker="w-measured"))
        return real_render(*args, **kwargs)

    render_module.render = render_and_look
    try:
        assert render_module.execute_job(runtime, new_job(farm_ctx, "w-measured"), 1) == "succeeded"
        assert render_module.execute_job(runtime, new_job(farm_ctx, "w-measured"), 1) == "succeeded"
    finally:
        render_module.render = real_render
    assert value("farm_render_seconds_count", model="tiny") == renders + 2
    assert value("farm_render_seconds_sum", model="tiny") > 0
    # Loaded once, held for the second job.
    assert value("farm_model_load_seconds_count", model="tiny", source="disk") == loads + 1
    assert value("farm_images_produced_total", model="tiny") == produced + 2
    assert seen_busy == [1.0, 1.0] and value("farm_worker_busy", worker="w-measured") == 0
    assert value("farm_worker_models_loaded", worker="w-measured") == 1
    assert value("farm_worker_model_loaded", worker="w-measured", model="tiny") == 1
    # CPU: the configured 4 GB budget, the held model's estimate in use.
    total, used, free = (value(f"farm_worker_vram_{kind}_bytes", worker="w-measured") for kind in ("total", "used", "free"))
    assert total == 4e9 and 0 < used < total and used + free == pytest.approx(total)

    runtime.evict(["tiny"])
    assert value("farm_worker_models_loaded", worker="w-measured") == 0
    assert REGISTRY.get_sample_value("farm_worker_model_loaded", {"worker": "w-measured", "model": "tiny"}) is None
    assert value("farm_worker_vram_used_bytes", worker="w-measured") == 0


def _out_of_memory(monkeypatch, ctx):
    monkeypatch.setattr(render_module, "render", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))


def _broken_weights(monkeypatch, ctx):
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(OSError("no model_index.json")))


def _bad_input(monkeypatch, ctx):
    monkeypatch.setattr(render_module, "render", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad latent shape")))


def _bug(monkeypatch, ctx):
    monkeypatch.setattr(render_module, "render", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))


def _store_away(monkeypatch, ctx):
    monkeypatch.setattr(ctx.storage, "put", lambda key, *a: (_ for _ in ()).throw(
        StorageUnavailableError("object store", f"put {key}", "object store unavailable: connection refused")))


@pytest.mark.parametrize("fault, reason", [(_out_of_memory, "oom"), (_broken_weights, "model_load"), (_bad_input, "bad_input"),
                                           (_bug, "error"), (_store_away, "storage")])
def test_images_that_fail_are_counted_by_reason(farm_ctx, monkeypatch, fault, reason):
    runtime = WorkerRuntime(farm_ctx, name="w-faulty")
    fault(monkeypatch, farm_ctx)
    before = {r: value("farm_images_failed_total", model="tiny", reason=r) for r in ("oom", "model_load", "bad_input", "error", "storage")}
    produced = value("farm_images_produced_total", model="tiny")
    assert render_module.execute_job(runtime, new_job(farm_ctx, "w-faulty"), 1) in ("failed", "requeued")
    after = {r: value("farm_images_failed_total", model="tiny", reason=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {r: 1.0 if r == reason else 0.0 for r in before}
    assert value("farm_images_produced_total", model="tiny") == produced
    assert value("farm_worker_busy", worker="w-faulty") == 0


def test_a_canceled_render_counts_as_canceled(farm_ctx, monkeypatch):
    runtime = WorkerRuntime(farm_ctx, name="w-cancel")
    monkeypatch.setattr(render_module, "render", lambda *a, **k: (_ for _ in ()).throw(
        pipelines.RenderCanceled("job canceled")))
    before = value("farm_images_failed_total", model="tiny", reason="canceled")
    assert render_module.execute_job(runtime, new_job(farm_ctx, "w-cancel"), 1) == "stopped"
    assert value("farm_images_failed_total", model="tiny", reason="canceled") == before + 1


def test_ready_once_registered_and_not_while_stopping(farm_ctx):
    runtime = WorkerRuntime(farm_ctx, name="w-health")
    assert runtime.liveness() == (True, "starting")
    assert runtime.readiness() == (False, "not registered yet")
    runtime.start()
    try:
        assert runtime.readiness() == (True, "online")
        assert runtime.liveness()[0] is True
        runtime.last_beat_at -= 10 * farm_ctx.settings.heartbeat_s  # heartbeats stopped reaching the database
        assert runtime.readiness()[0] is False and "no heartbeat" in runtime.readiness()[1]
        runtime.heartbeat()
        assert runtime.readiness() == (True, "online")
        runtime.begin_stop(grace_s=5)
        assert runtime.readiness() == (False, "worker is stopping")
    finally:
        runtime.stop()
