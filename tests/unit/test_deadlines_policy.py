"""Deadlines in the placement policy and the simulator (issue 23): slack ordering, the bound on the boost, metrics."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from farm.scheduler.fifo import place_fifo
from farm.scheduler.policy import (AGE_WEIGHT, DEADLINE_BOOST_S, DEADLINE_HORIZON_S, QueuedJob, Share, Snapshot,
                                   WorkerState, place)
from farm.scheduler.simulator import TraceError, TraceJob, WorkerSpec, load_trace, simulate


def job(user, *, t=0.0, deadline=None, campaign=None, est=10.0, model="a"):
    return QueuedJob(id=uuid.uuid4(), attempt=1, user_id=user, model_id=model, family="sd", model_gb=2.0, width=512,
                     height=512, priority=0, queued_at=t, est_seconds=est, deadline=deadline, campaign_id=campaign)


def worker(wid="w1", held=("a",)):
    return WorkerState(id=wid, families=frozenset({"sd"}), max_pixels=2048 * 2048, vram_total_gb=24.0,
                       vram_free_gb=24.0 - 2.0 * len(held), loaded_models={m: 2.0 for m in held}, serves_models=None,
                       busy=0)


def winner(snapshot):
    (assignment,) = place(snapshot).assignments
    return assignment.job_id


def test_a_campaign_close_to_its_deadline_goes_before_one_with_hours_to_spare():
    now = 100.0
    # Both users' campaigns have 500 s of queued work left on one speed-1 GPU.
    soon = job(2, t=0.0, deadline=now + 500 + DEADLINE_HORIZON_S / 2, campaign="soon")
    later = job(1, t=0.0, deadline=now + 4 * 3600, campaign="later")
    work = {"soon": 500.0, "later": 500.0}
    # Equal shares: without the deadline term the tie goes to the lower user
    # id (the later campaign's owner); both orders are tried.
    for jobs in ([soon, later], [later, soon]):
        assert winner(Snapshot(jobs, [worker()], now=now, campaign_work_s=work)) == soon.id
    # The same snapshot with the deadlines hidden goes the other way.
    blind = [dataclasses.replace(j, deadline=None) for j in (soon, later)]
    assert winner(Snapshot(blind, [worker()], now=now)) == later.id


def test_a_deadline_with_time_to_spare_changes_nothing():
    now = 100.0
    # Heavier use puts user 1 behind user 2; a far deadline does not lift it.
    relaxed = job(1, t=0.0, deadline=now + 3600, campaign="c")
    other = job(2, t=0.0)
    shares = {1: Share(usage_s=300.0), 2: Share()}
    assert winner(Snapshot([relaxed, other], [worker()], now=now, shares=shares, campaign_work_s={"c": 50.0})) == other.id


def test_the_boost_is_bounded_a_user_who_waited_longer_still_goes_first():
    now = 1000.0
    late = job(1, t=now - 10, deadline=now + 5, campaign="c")
    # A user without deadlines whose job has waited DEADLINE_BOOST_S (and a
    # bit) longer than the urgent job outranks it.
    patient = job(2, t=now - 10 - DEADLINE_BOOST_S - 1)
    assert winner(Snapshot([patient, late], [worker()], now=now, campaign_work_s={"c": 100.0})) == patient.id
    # ... and one who waited a little less than that does not.
    recent = job(2, t=now - 10 - DEADLINE_BOOST_S + 1)
    assert winner(Snapshot([recent, late], [worker()], now=now, campaign_work_s={"c": 100.0})) == late.id


def test_a_campaign_running_as_many_jobs_as_its_deadline_needs_gets_no_boost():
    now = 0.0
    # 40 s of work due in 60 s on speed-1 slots needs under one slot; the
    # owner already runs two: not behind, so fair share (less use first) decides.
    urgent = job(1, t=0.0, deadline=60.0, campaign="c")
    other = job(2, t=0.0)
    shares = {1: Share(usage_s=AGE_WEIGHT, running=2), 2: Share()}
    assert winner(Snapshot([urgent, other], [worker()], now=now, shares=shares, campaign_work_s={"c": 40.0})) == other.id
    shares[1] = Share(usage_s=AGE_WEIGHT, running=0)
    assert winner(Snapshot([urgent, other], [worker()], now=now, shares=shares, campaign_work_s={"c": 40.0})) == urgent.id


def test_an_urgent_job_does_not_wait_for_a_worker_that_holds_its_model():
    now = 10.0
    # Worker w1 holds model "b" and renders in one of its two slots; the only
    # job is for "a", which a busy worker holds. Within its patience the job
    # waits for that holder rather than load a copy beside a render; an
    # urgent one takes the free slot.
    busy_holder = dataclasses.replace(worker("w0", held=("a",)), busy=1)
    free = dataclasses.replace(worker("w1", held=("b",)), capacity=2, busy=1)
    calm = job(1, t=0.0)
    assert place(Snapshot([calm], [busy_holder, free], now=now)).assignments == []
    urgent = job(1, t=0.0, deadline=now + 20.0)
    assert [a.worker_id for a in place(Snapshot([urgent], [busy_holder, free], now=now)).assignments] == ["w1"]


# --- the simulator ------------------------------------------------------------


def trace_job(t, *, deadline_s=None, campaign=None, user="ana"):
    return TraceJob(t=t, user=user, model="sd15", model_gb=2.2, family="sd", width=512, height=512, steps=10,
                    step_s=1.0, deadline_s=deadline_s, campaign=campaign)


def test_simulator_counts_misses_and_lateness():
    gpu = WorkerSpec(id="w1", vram_gb=24.0, load_gbps=2.2, speed=1.0, families=frozenset({"sd"}))
    # Load 1 s, then three 10 s renders back to back: they finish at 11, 21, 31.
    trace = [trace_job(0.0, deadline_s=15.0), trace_job(0.0, deadline_s=15.0), trace_job(0.0)]
    m = simulate([gpu], trace, place_fifo, policy_name="fifo")
    assert m["deadline_jobs"] == 2
    assert m["deadline_misses"] == 1 and m["deadline_miss_s_total"] == 6.0


def test_trace_rows_may_carry_a_deadline_and_a_campaign(tmp_path):
    row = {"t": 1, "user": "u", "model": "m", "model_gb": 2, "family": "sd", "width": 512, "height": 512,
           "steps": 10, "step_s": 0.1}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({**row, "deadline_s": 30, "campaign": "c1"}) + "\n" + json.dumps(row) + "\n")
    first, second = load_trace(path)
    assert (first.deadline_s, first.campaign, first.due) == (30, "c1", 31.0)
    assert (second.deadline_s, second.campaign, second.due) == (None, None, None)
    path.write_text(json.dumps({**row, "deadline_s": -5}) + "\n")
    with pytest.raises(TraceError, match="t.jsonl:1: field 'deadline_s' must be a number > 0"):
        load_trace(path)


def test_the_shipped_deadline_trace_has_campaigns_with_and_without_deadlines():
    from pathlib import Path

    trace = load_trace(Path(__file__).resolve().parents[2] / "bench" / "traces" / "deadlines.jsonl")
    campaigns = {}
    for row in trace:
        if row.campaign is not None:
            campaigns.setdefault(row.campaign, set()).add(row.due is not None)
    assert {True} in campaigns.values() and {False} in campaigns.values()
    assert any(row.campaign is None and row.due is not None for row in trace)


def test_a_campaign_without_a_deadline_yields_to_a_lifted_one_for_under_a_minute():
    # The lift's price is paid by the jobs it passes: a campaign without a
    # deadline whose head has waited a minute longer than a lifted
    # campaign's head keeps its turn (docs/benchmarks.md: a 120 s lift put a
    # no-deadline campaign's images at the top of the p95 of all jobs).
    now = 1000.0
    lifted = job(1, t=now - 30, deadline=now + 20, campaign="due")
    plain = job(2, t=now - 90, campaign="no-deadline")
    shares = {1: Share(usage_s=100.0), 2: Share(usage_s=100.0)}
    work = {"due": 200.0}
    assert winner(Snapshot([plain, lifted], [worker()], now=now, shares=shares, campaign_work_s=work)) == plain.id
    # Waiting only a little longer than the lifted head is not enough.
    plain = job(2, t=now - 40, campaign="no-deadline")
    assert winner(Snapshot([plain, lifted], [worker()], now=now, shares=shares, campaign_work_s=work)) == lifted.id
