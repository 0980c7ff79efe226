"""Preemption in the simulator: what a preempted render costs and what the waiting job gains."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.scheduler.policy import place
from farm.scheduler.simulator import PreemptionModel, TraceJob, WorkerSpec, load_trace, load_workers, simulate

BENCH = Path(__file__).resolve().parents[2] / "bench"


def gpu(wid="w1"):
    return WorkerSpec(id=wid, vram_gb=24.0, load_gbps=2.0, speed=1.0, families=frozenset({"sd"}))


def job(t, user, priority=0, steps=100, step_s=1.0):
    return TraceJob(t=t, user=user, model="sd15", model_gb=2.0, family="sd", width=512, height=512, steps=steps,
                    step_s=step_s, priority=priority)


def test_an_interactive_job_waits_one_step_and_the_checkpoint_instead_of_the_whole_render():
    trace = [job(0.0, "campaign"), job(10.2, "ana", priority=5, steps=5)]
    model = PreemptionModel(wait_s=5.0, checkpoint_s=0.5, restore_s=0.5, lost_steps=1)
    without = simulate([gpu()], trace, place)
    with_ = simulate([gpu()], trace, place, preemption=model)
    load_s = 1.0  # 2 GB at 2 GB/s
    assert without["users"]["ana"]["wait_max_s"] == pytest.approx(100.0 + load_s - 10.2)
    # The campaign's render stops at its next step boundary (t = 11.0) and checkpoints for 0.5 s.
    assert with_["users"]["ana"]["wait_max_s"] == pytest.approx(11.5 - 10.2)
    assert with_["preemptions"] == 1
    # It then pays the restore and one step again: 1.5 s more than its 100 s, plus the interactive 5 s.
    assert with_["finished_s_by_user"]["campaign"] == pytest.approx(load_s + 100.0 + 5.0 + 0.5 + 0.5 + 1.0)
    assert with_["rendered"] == 2 and with_["vram_overcommits"] == 0 and with_["double_assignments"] == 0


def test_a_render_is_preempted_at_most_max_preemptions_times():
    trace = [job(0.0, "campaign")] + [job(10.0 + 20.0 * i, f"user-{i}", priority=5, steps=2) for i in range(4)]
    with_ = simulate([gpu()], trace, place, preemption=PreemptionModel(wait_s=5.0, max_preemptions=2))
    assert with_["preemptions"] == 2 and with_["rendered"] == 5


def test_without_a_preemption_model_nothing_is_preempted():
    trace = [job(0.0, "campaign"), job(10.2, "ana", priority=5, steps=5)]
    assert simulate([gpu()], trace, place)["preemptions"] == 0


def test_the_shipped_preemption_trace_shortens_interactive_waits_without_breaking_the_cluster():
    workers = load_workers(BENCH / "workers" / "mixed.json")
    trace = load_trace(BENCH / "traces" / "preempt_campaign.jsonl")
    without = simulate(workers, trace, place)
    with_ = simulate(workers, trace, place, preemption=PreemptionModel())
    assert with_["preemptions"] > 0 and with_["rendered"] == without["rendered"] == len(trace)
    assert with_["priorities"]["5"]["wait_p95_s"] < without["priorities"]["5"]["wait_p95_s"]
    assert (with_["vram_overcommits"], with_["invalid_assignments"], with_["double_assignments"]) == (0, 0, 0)
