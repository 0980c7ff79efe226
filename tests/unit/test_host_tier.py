"""The worker's host-memory tier: LRU within its budget, evicted pipelines kept
and served back instead of read from disk, on real tiny pipelines."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY

from farm.context import build_context
from farm.events import LocalEvents
from farm.models import ModelEntry
from farm.registry import add_model
from farm.workers.host_tier import HostTier, move_to_device, move_to_host
from farm.workers.runtime import LoadedModel, WorkerRuntime
from farm.workers.tiny import build_tiny_pipeline, write_tiny_model


def record(model_id: str, gb: float, seed: int = 0) -> LoadedModel:
    return LoadedModel(model_id, "sd", build_tiny_pipeline("sd", seed=seed), gb, f"/models/{model_id}", None, None, "float32")


def test_the_tier_keeps_evicted_pipelines_least_recently_evicted_out_first():
    tier = HostTier(3.0, torch.device("cpu"))
    a, b, c = record("a", 1.0), record("b", 1.5), record("c", 1.0, seed=1)
    assert tier.put(a) == [] and tier.put(b) == []
    # 2.5 GB held; c needs 1 GB more: "a", evicted first, goes for good.
    assert tier.put(c) == ["a"]
    assert [m["id"] for m in tier.models()] == ["b", "c"] and tier.used_gb() == pytest.approx(2.5)
    # Taking a model out gives back the very pipeline object (nothing re-read).
    assert tier.take("b") is b and tier.take("b") is None and "b" not in tier
    assert tier.models() == [{"id": "c", "gb": 1.0}]


def test_an_off_or_too_small_tier_drops_what_is_evicted():
    assert HostTier(0.0, torch.device("cpu")).put(record("a", 0.5)) == ["a"]
    small = HostTier(1.0, torch.device("cpu"))
    assert small.put(record("big", 2.0)) == ["big"] and small.models() == []


def test_moving_a_pipeline_to_host_and_back_keeps_its_modules_and_weights():
    pipe = build_tiny_pipeline("sd", seed=3)
    unet = pipe.unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    move_to_host(pipe, pin=False)
    move_to_device(pipe, torch.device("cpu"))
    assert pipe.unet is unet
    assert all(torch.equal(before[name], p) for name, p in unet.named_parameters())


@pytest.fixture()
def tiered_ctx(sqlite_settings, tmp_path):
    # Each tiny model is declared at 1 GB in a 1 GB budget: loading one pushes the other out.
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 1.0, "worker_ram_cache_gb": 2.0,
                                                  "worker_h2d_gbps": 20.0})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        for index, model_id in enumerate(("tier-a", "tier-b")):
            add_model(session, model_id, str(write_tiny_model(tmp_path / model_id, family="sd", seed=index)), vram_gb=1.0)
    return ctx


def entry(ctx, model_id: str) -> ModelEntry:
    with ctx.db.session() as session:
        return session.get(ModelEntry, model_id)


def loads(model_id: str, source: str) -> float:
    return REGISTRY.get_sample_value("farm_model_load_seconds_count", {"model": model_id, "source": source}) or 0.0


def test_an_evicted_model_comes_back_from_host_memory_not_from_disk(tiered_ctx):
    runtime = WorkerRuntime(tiered_ctx, name="w-tier")
    from_disk, from_host = loads("tier-a", "disk"), loads("tier-a", "host")
    first, _ = runtime.pipeline_for(entry(tiered_ctx, "tier-a"))
    runtime.pipeline_for(entry(tiered_ctx, "tier-b"))
    assert runtime.held_model_ids() == ["tier-b"] and runtime.host_tier.models()[0]["id"] == "tier-a"
    again, _ = runtime.pipeline_for(entry(tiered_ctx, "tier-a"))
    assert again is first and again.pipe is first.pipe
    assert loads("tier-a", "disk") == from_disk + 1 and loads("tier-a", "host") == from_host + 1
    # Now "tier-b" waits in host memory and "tier-a" is on the device.
    assert runtime.held_model_ids() == ["tier-a"] and [m["id"] for m in runtime.host_tier.models()] == ["tier-b"]
    # An eviction the scheduler asks for moves the model too.
    runtime.evict(["tier-a"])
    assert runtime.held_model_ids() == [] and [m["id"] for m in runtime.host_tier.models()] == ["tier-b", "tier-a"]
    gauge = {labels["model"] for labels in (sample.labels for metric in REGISTRY.collect()
                                            if metric.name == "farm_worker_host_model" for sample in metric.samples)
             if labels["worker"] == "w-tier"}
    assert gauge == {"tier-a", "tier-b"}


def test_without_the_tier_an_evicted_model_is_read_from_disk_again(tiered_ctx):
    ctx = build_context(tiered_ctx.settings.model_copy(update={"worker_ram_cache_gb": 0.0}), events=LocalEvents())
    runtime = WorkerRuntime(ctx, name="w-no-tier")
    from_disk = loads("tier-a", "disk")
    first, _ = runtime.pipeline_for(entry(ctx, "tier-a"))
    runtime.pipeline_for(entry(ctx, "tier-b"))
    again, _ = runtime.pipeline_for(entry(ctx, "tier-a"))
    assert again is not first and loads("tier-a", "disk") == from_disk + 2 and runtime.host_tier.models() == []


def test_a_model_re_pointed_in_the_registry_is_not_served_from_the_tier(tiered_ctx, tmp_path):
    runtime = WorkerRuntime(tiered_ctx, name="w-repoint")
    first, _ = runtime.pipeline_for(entry(tiered_ctx, "tier-a"))
    runtime.pipeline_for(entry(tiered_ctx, "tier-b"))
    moved = entry(tiered_ctx, "tier-a")
    moved.source = str(write_tiny_model(tmp_path / "tier-a-v2", family="sd", seed=7))
    again, _ = runtime.pipeline_for(moved)
    assert again is not first and again.source == moved.source
    assert "tier-a" not in runtime.host_tier


def test_the_heartbeat_reports_the_tier(tiered_ctx):
    from farm.models import Worker

    runtime = WorkerRuntime(tiered_ctx, name="w-beat")
    runtime.register()
    runtime.pipeline_for(entry(tiered_ctx, "tier-a"))
    runtime.pipeline_for(entry(tiered_ctx, "tier-b"))
    runtime.heartbeat()
    with tiered_ctx.db.session() as session:
        row = session.get(Worker, "w-beat")
    assert [m["id"] for m in row.loaded_models] == ["tier-b"]
    assert [m["id"] for m in row.host_models] == ["tier-a"] and row.host_models[0]["gb"] > 0
    assert (row.ram_cache_gb, row.h2d_gbps) == (2.0, 20.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned host memory and the H2D rate need CUDA")
def test_on_cuda_an_evicted_pipeline_waits_in_pinned_memory_and_comes_back_intact():
    from farm.workers.host_tier import measure_h2d_gbps

    cuda = torch.device("cuda")
    assert measure_h2d_gbps(cuda) > 0 and measure_h2d_gbps(torch.device("cpu")) is None
    tier = HostTier(1.0, cuda)
    loaded = record("a", 0.01)
    loaded.pipe.to(cuda)
    before = {name: p.detach().cpu().clone() for name, p in loaded.pipe.unet.named_parameters()}
    assert tier.put(loaded) == []
    assert all(p.device.type == "cpu" and p.is_pinned() for p in loaded.pipe.unet.parameters())
    taken = tier.take("a")
    tier.restore(taken)
    assert all(p.device.type == "cuda" for p in taken.pipe.unet.parameters())
    assert all(torch.equal(before[name], p.cpu()) for name, p in taken.pipe.unet.named_parameters())


def test_each_images_lineage_says_where_its_model_came_from(tiered_ctx):
    from farm import states
    from farm.models import Output
    from farm.workers import render as render_module
    from tests.support.factories import make_job

    runtime = WorkerRuntime(tiered_ctx, name="w-lineage")
    sources = []
    for model_id in ("tier-a", "tier-a", "tier-b", "tier-a"):
        job_id = make_job(tiered_ctx, model=model_id)
        with tiered_ctx.db.transaction() as session:
            states.assign_job(session, job_id, 1, runtime.name, 30)
        assert render_module.execute_job(runtime, job_id, 1) == "succeeded"
        with tiered_ctx.db.session() as session:
            [output] = session.query(Output).filter_by(job_id=job_id).all()
            sources.append(output.lineage["timings"]["model_load_source"])
    assert sources == ["disk", "held", "disk", "host"]


def test_a_quantized_variant_is_kept_on_the_cpu_but_not_moved_off_a_gpu():
    quantized = record("q", 0.5)
    quantized.quantization = {"format": "int8", "library": "torchao"}
    assert HostTier(2.0, torch.device("cpu")).put(quantized) == []
    # Off the CPU the tier drops it without touching its (packed) weights.
    assert HostTier(2.0, torch.device("cuda")).put(quantized) == ["q"]
