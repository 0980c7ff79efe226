"""The online copy plan experiment (bench/scheduler_plan.py) and the policy's copy_plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def plan_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("scheduler_plan", None)
    import scheduler_plan

    return scheduler_plan


def gpu(wid, *, vram, speed, held=None):
    held = held or {}
    return WorkerState(id=wid, families=frozenset({"sd", "sdxl"}), max_pixels=2048 * 2048, vram_total_gb=vram,
                       vram_free_gb=vram - sum(held.values()), loaded_models=held, serves_models=None, busy=0,
                       speed=speed)


def sample(model, gb):
    return QueuedJob(id=model, attempt=1, user_id=1, model_id=model, family="sdxl", model_gb=gb, width=1024,
                     height=1024, priority=0, queued_at=0.0)


def test_a_model_asking_more_than_one_gpu_gets_two(plan_module):
    workers = [gpu("g1", vram=24.0, speed=1.0), gpu("g2", vram=24.0, speed=1.0), gpu("g3", vram=24.0, speed=0.5)]
    speed = {w.id: w.speed for w in workers}
    plan = plan_module.plan_copies(workers, {"a": 1.5}, {"a": sample("a", 7.0)}, utilisation=1.0)
    assert len(plan) == 2 and sum(speed[w] for w, _ in plan) >= 1.5


def test_models_that_do_not_fit_together_are_not_planned_together(plan_module):
    # The fast 10 GB GPU could serve both models' demand alone, but holds one
    # 7 GB model with a 1024-pixel job's working memory, never two; the other
    # model needs both slow GPUs: three pairs instead of two.
    workers = [gpu("fast", vram=10.0, speed=2.0), gpu("slow1", vram=24.0, speed=0.3),
               gpu("slow2", vram=24.0, speed=0.3)]
    samples = {"a": sample("a", 7.0), "b": sample("b", 7.0)}
    plan = plan_module.plan_copies(workers, {"a": 0.4, "b": 0.4}, samples, utilisation=1.0)
    assert len(plan) == 3
    fast_models = {m for w, m in plan if w == "fast"}
    assert len(fast_models) == 1
    other = ({"a", "b"} - fast_models).pop()
    assert {("slow1", other), ("slow2", other)} <= plan


def test_the_plan_keeps_what_is_loaded_when_it_suffices(plan_module):
    workers = [gpu("g1", vram=24.0, speed=1.0), gpu("g2", vram=24.0, speed=1.0, held={"a": 7.0})]
    plan = plan_module.plan_copies(workers, {"a": 0.8}, {"a": sample("a", 7.0)}, utilisation=0.9)
    assert plan == {("g2", "a")}


def test_demand_beyond_the_cluster_is_scaled_down_not_refused(plan_module):
    workers = [gpu("g1", vram=24.0, speed=1.0)]
    plan = plan_module.plan_copies(workers, {"a": 5.0, "b": 5.0}, {"a": sample("a", 7.0), "b": sample("b", 7.0)},
                                   utilisation=0.9)
    assert plan == {("g1", "a"), ("g1", "b")}


def test_the_planner_sees_each_arrival_once_and_forgets_old_ones(plan_module):
    planner = plan_module.Planner(period_s=5.0, horizon_s=60.0, utilisation=0.9)
    jobs = [sample("a", 7.0)]
    planner.observe(Snapshot(jobs, [], now=10.0))
    planner.observe(Snapshot(jobs, [], now=11.0))
    assert len(planner.arrivals) == 1
    planner.observe(Snapshot([], [], now=10.0 + plan_module.WINDOW_S + 1))
    assert not planner.arrivals
