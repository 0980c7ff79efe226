"""The clairvoyant lower bound on model loads (farm/scheduler/clairvoyant.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.scheduler.bench import bench
from farm.scheduler.clairvoyant import clairvoyant_lower_bound_loads
from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import place
from farm.scheduler.simulator import TraceJob, WorkerSpec, load_trace, load_workers, lower_bound_loads, simulate


def gpu(wid, *, vram=24.0, speed=1.0, capacity=1, families=("sd", "sdxl", "flux")):
    return WorkerSpec(id=wid, vram_gb=vram, load_gbps=2.0, speed=speed, families=frozenset(families),
                      capacity=capacity)


def job(t, model, *, work=10.0, gb=2.2, family="sd", size=512, user="ana"):
    return TraceJob(t=t, user=user, model=model, model_gb=gb, family=family, width=size, height=size, steps=10,
                    step_s=work / 10)


def test_models_competing_for_the_fast_gpu_need_more_holders_than_each_alone():
    # Two models, two 10 s jobs each, all at t=0; every job must start within
    # 5 s. Alone, either model fits on the speed-2 GPU (20 s of work by
    # t=15). Together they do not: the speed-1 GPU can finish only 16 s of
    # work by t=16 (5 s wait + 10 s render + rounding), so one model needs
    # both GPUs: three loads, where the per-model bound says two.
    workers = [gpu("fast", speed=2.0), gpu("slow")]
    trace = [job(0.0, "a"), job(0.0, "a"), job(0.0, "b"), job(0.0, "b")]
    assert lower_bound_loads(workers, trace, max_wait_s=5.0) == 2
    bound = clairvoyant_lower_bound_loads(workers, trace, 5.0, bucket_s=1.0)
    assert bound.loads == 3 and bound.optimal
    # With a long enough wait, each GPU keeps one model.
    assert clairvoyant_lower_bound_loads(workers, trace, 60.0, bucket_s=1.0).loads == 2


def test_a_wait_limit_no_schedule_can_keep_is_reported_as_infeasible():
    # Three 10 s jobs at once on one speed-1 GPU: the third cannot start within 5 s.
    trace = [job(0.0, "a"), job(0.0, "a"), job(0.0, "a")]
    assert clairvoyant_lower_bound_loads([gpu("only")], trace, 5.0, bucket_s=1.0).loads is None
    assert clairvoyant_lower_bound_loads([gpu("only")], trace, 25.0, bucket_s=1.0).loads == 1


def test_jobs_no_worker_can_run_are_left_out():
    flux = job(0.0, "f", gb=23.8, family="flux", size=1024)
    assert clairvoyant_lower_bound_loads([gpu("small", vram=8.0)], [flux], 10.0).loads == 0
    assert clairvoyant_lower_bound_loads([gpu("small", vram=8.0)], [flux, job(0.0, "a")], 10.0).loads == 1


def test_alike_gpus_each_count_their_own_models():
    # Four alike GPUs and four 10 s jobs of one model that must all start at
    # once: all four GPUs load it.
    workers = [gpu(f"w{i}") for i in range(4)]
    trace = [job(0.0, "a") for _ in range(4)]
    assert clairvoyant_lower_bound_loads(workers, trace, 0.5, bucket_s=1.0).loads == 4


def test_two_gpus_cannot_share_three_busy_models_with_three_loads():
    # Three models, four 5 s jobs each, all at t=0, every job started within
    # 25 s: each model needs 20 s of work by t=30, so both GPUs work all the
    # time and each model takes two thirds of a GPU. With three loads one GPU
    # would hold two models and give them 31 s where they need 40: a fourth
    # load is needed. Each model alone fits on one GPU (the per-model bound),
    # and a count of alike GPUs holding each model would allow three too.
    workers = [gpu("w0"), gpu("w1")]
    trace = [job(0.0, model, work=5.0) for model in "abc" for _ in range(4)]
    assert lower_bound_loads(workers, trace, max_wait_s=25.0) == 3
    bound = clairvoyant_lower_bound_loads(workers, trace, 25.0, bucket_s=1.0)
    assert bound.loads == 4 and bound.optimal


MODELS = [("s1", 2.2, "sd", 512), ("s2", 2.1, "sd", 768), ("x1", 6.9, "sdxl", 1024), ("f1", 23.8, "flux", 1024)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 40), st.sampled_from(MODELS), st.floats(1.0, 20.0),
                          st.sampled_from(["a", "b"])), min_size=1, max_size=25),
       st.lists(st.tuples(st.sampled_from([8.0, 12.0, 24.0, 48.0]), st.sampled_from([0.5, 1.0, 2.0]),
                          st.integers(1, 2)), min_size=1, max_size=4),
       st.sampled_from(["fifo", "farm"]))
def test_no_real_schedule_loads_fewer_than_the_bound_at_its_own_worst_wait(jobs, cluster, policy):
    workers = [gpu(f"w{i}", vram=vram, speed=speed, capacity=capacity)
               for i, (vram, speed, capacity) in enumerate(cluster)]
    trace = [job(t, model, work=work, gb=gb, family=family, size=size, user=user)
             for t, (model, gb, family, size), work, user in jobs]
    m = simulate(workers, trace, place_fifo if policy == "fifo" else place, policy_name=policy)
    if m["rendered"] == 0:
        return
    bound = clairvoyant_lower_bound_loads(workers, trace, m["wait_max_s"], bucket_s=2.0)
    # The run itself keeps every wait within its worst wait, so the program is
    # feasible, and the bound is at least the per-model one and at most the run's loads.
    assert bound.loads is not None
    assert m["lower_bound_loads_at_max_wait"] <= bound.loads <= m["model_loads"]


def test_the_cli_adds_the_clairvoyant_bound_when_asked(tmp_path):
    workers = tmp_path / "w.json"
    workers.write_text('[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]},'
                       ' {"id": "b", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]')
    trace = tmp_path / "t.jsonl"
    line = '{"t": 0, "user": "a", "model": "m", "model_gb": 2, "family": "sd", "width": 512, "height": 512, ' \
           '"steps": 40, "step_s": 0.25}\n'
    trace.write_text(line * 2)
    args = ["scheduler", "--workers", str(workers), "--trace", str(trace), "--policy", "fifo"]
    plain = json.loads(CliRunner().invoke(bench, args).output)
    assert "lower_bound_loads_clairvoyant" not in plain
    result = CliRunner().invoke(bench, args + ["--clairvoyant"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    # Two 10 s jobs at once, both started after a 1 s load: the two GPUs each had to load the model.
    assert metrics["model_loads"] == metrics["lower_bound_loads_clairvoyant"] == 2
    assert metrics["clairvoyant_optimal"] is True


def test_the_simulator_lists_each_workers_loads_in_order():
    workers = [gpu("small", vram=8.0)]
    trace = [job(0.0, "a", gb=4.0), job(1.0, "b", gb=4.0), job(30.0, "a", gb=4.0)]
    m = simulate(workers, trace, place_fifo, policy_name="fifo")
    # 8 GB cannot hold two 4 GB models with a job's working memory: "a" is reloaded.
    assert m["loads_by_worker"] == {"small": ["a", "b", "a"]} and m["model_loads"] == 3


def test_hindsight_keeps_the_waits_and_never_loads_more_than_farm(monkeypatch):
    bench_dir = Path(__file__).resolve().parents[2] / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))
    sys.modules.pop("scheduler_hindsight", None)
    import scheduler_hindsight

    # The shipped bursty trace: farm loads a copy or two that, in hindsight,
    # the waits did not need (docs/benchmarks.md).
    workers = load_workers(bench_dir / "workers" / "mixed.json")
    trace = load_trace(bench_dir / "traces" / "bursty.jsonl")
    out = scheduler_hindsight.hindsight(workers, trace, "bursty")
    assert out["clairvoyant_bound"] <= out["hindsight_loads"] < out["farm_loads"]
    assert out["hindsight_wait_p95_vs_fifo"] <= scheduler_hindsight.P95_VS_FIFO
    # Replaying with what it kept gives what it reported.
    again = simulate(scheduler_hindsight.restricted(workers, {w: set(m) for w, m in out["hindsight_serves"].items()}),
                     trace, place, policy_name="again")
    assert again["model_loads"] == out["hindsight_loads"] and again["wait_max_s"] <= out["max_wait_s"]
    # Each kept drop saves at least one load.
    assert 1 <= len(out["hindsight_dropped"]) <= out["farm_loads"] - out["hindsight_loads"]
    # The bound's own holders, replayed oldest-first, are a real schedule too:
    # every job renders, and the bound at its worst wait is no more than its loads.
    assert out["plan_rendered"] == len(trace)
    assert out["plan_bound_at_its_max_wait"] <= out["plan_loads"]
    assert sum(map(len, out["plan_holders"].values())) == out["clairvoyant_bound"]
