"""The preemption benches' parts on small inputs (bench/checkpoint_cost.py, bench/scheduler_preemption.py)."""

from __future__ import annotations

import sys

from farm.scheduler.simulator import PreemptionModel, TraceJob, WorkerSpec
from tests.support.bench_scripts import BENCH, load_bench_script


def test_checkpoint_cost_measures_a_multistep_sampler_against_its_latents():
    bench = load_bench_script("checkpoint_cost")
    row = bench.measure("tiny", "sd", (1, 4, 8, 8), "dpmpp_2m", repeat=1)
    # DPM++ 2M keeps latent-sized history: its checkpoint is bigger than the latents alone.
    assert row["checkpoint_bytes"] > 2 * (4 * 8 * 8 * 4)
    assert row["write_ms"] > 0 and row["read_ms"] > 0


def test_scheduler_preemption_compares_with_and_without_on_one_trace():
    sys.path.insert(0, str(BENCH))  # it imports make_traces for fresh traces
    bench = load_bench_script("scheduler_preemption")
    workers = [WorkerSpec(id="w1", vram_gb=24.0, load_gbps=2.0, speed=1.0, families=frozenset({"sd"}))]
    trace = [TraceJob(t=0.0, user="campaign", model="sd15", model_gb=2.0, family="sd", width=512, height=512,
                      steps=100, step_s=1.0),
             TraceJob(t=10.2, user="ana", model="sd15", model_gb=2.0, family="sd", width=512, height=512, steps=5,
                      step_s=1.0, priority=5)]
    result = bench.compare(workers, trace, [PreemptionModel(wait_s=5.0)])
    assert result["without"]["preemptions"] == 0 and result["with_wait_s=5"]["preemptions"] == 1
    assert result["with_wait_s=5"]["ratios_with_over_without"]["interactive_wait_p95_s"] < 0.1
    assert len(bench.fresh_trace(1)) > 500
