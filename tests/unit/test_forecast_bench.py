"""bench/scheduler_forecast.py: the at-risk flags scored against what happened, and the light users' errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support.bench_scripts import BENCH, load_bench_script


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports make_traces and scheduler_targets
    return load_bench_script("scheduler_forecast")


def done(campaign, deadline, finished):
    return SimpleNamespace(queued=SimpleNamespace(campaign_id=campaign, deadline=deadline), finished=finished)


def test_a_flag_counts_as_a_warning_of_a_miss_or_a_false_alarm(bench):
    simulation = SimpleNamespace(jobs=[
        done("late", 100.0, 90.0), done("late", 100.0, 130.0),  # one image after the deadline: missed
        done("on-time", 200.0, 150.0),
        done("late-unseen", 300.0, 310.0),
        done(None, None, 50.0),  # no campaign, no deadline: not scored
    ])
    flagged = {"affinity": {"late": 40.0, "on-time": 120.0}, "drain": {}, "class": {"late": 0.0}}
    scored = bench.at_risk_flags(simulation, flagged)
    assert (scored["campaigns"], scored["missed"]) == (3, 2)
    assert scored["affinity"] == {"flagged_missed": 1, "false_alarms": 1, "missed_unflagged": 1, "warning_p50_s": 60.0}
    assert scored["drain"] == {"flagged_missed": 0, "false_alarms": 0, "missed_unflagged": 2, "warning_p50_s": None}
    assert "class" not in scored  # it predicts no finish


def test_a_replay_reports_every_method_with_the_light_users_apart(bench):
    result = bench.replay(BENCH / "workers" / "mixed.json", BENCH / "traces" / "heavy_user.jsonl")
    for method in bench.METHODS:
        row = result[method]
        assert row["jobs"] > row["light_jobs"] > 0
        assert row["abs_error_p50_s"] is not None and row["light_abs_error_p50_s"] is not None
    assert result["at_risk"]["campaigns"] == 0  # heavy_user carries no deadlines


def test_tightened_deadlines_keep_a_campaigns_shared_due_time(bench):
    from farm.scheduler.simulator import TraceJob

    def job(t, deadline_s=None, campaign=None):
        return TraceJob(t=t, user="u", model="m", model_gb=2.0, family="sd", width=64, height=64, steps=2, step_s=1.0,
                        deadline_s=deadline_s, campaign=campaign)

    # A campaign arriving over 100-120 s, due at 400 s; a lone job due 60 s after it arrives; one with no deadline.
    trace = [job(100.0, 300.0, "c"), job(120.0, 280.0, "c"), job(50.0, 60.0), job(10.0)]
    half = bench.tightened(trace, 0.5)
    assert [j.due for j in half[:2]] == [250.0, 250.0]  # 100 + 0.5 x 300, for both of its jobs
    assert half[2].due == 80.0 and half[3].deadline_s is None
    assert bench.tightened([job(100.0, 300.0, "c"), job(390.0, 10.0, "c")], 0.1)[1].deadline_s == 1.0  # never past due on arrival
