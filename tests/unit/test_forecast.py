"""The queue forecast's play (farm/scheduler/forecast.py, issue 23): a job
waits for a GPU that holds its model, or pays a load, as the policy would."""

from __future__ import annotations

import pytest

from farm.scheduler.forecast import forecast
from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState, patience_s

NOW = 1_000.0


def job(i: int, est_s: float = 10.0, queued_at: float = NOW, deadline: float | None = None) -> QueuedJob:
    # 20 GB at the default 2 GB/s: a copy takes 10 s to load.
    return QueuedJob(id=i, attempt=1, user_id=1, model_id="m", family="sd", model_gb=20.0, width=512, height=512,
                     priority=0, queued_at=queued_at, est_seconds=est_s, deadline=deadline)


def gpu(wid: str, holds: bool, busy: int = 0) -> WorkerState:
    return WorkerState(id=wid, families=frozenset({"sd"}), max_pixels=1 << 22, vram_total_gb=48.0, vram_free_gb=28.0,
                       loaded_models={"m": 20.0} if holds else {}, serves_models=None, busy=busy)


def other_gpu(wid: str) -> WorkerState:
    """A free GPU holding model "x", which has a job queued (``x_job``): not idle for want of work, so a
    job for "m" weighs waiting for m's holder against a copy there (an idle GPU with nothing queued for
    its models takes the copy at once, as the policy does)."""
    return WorkerState(id=wid, families=frozenset({"sd"}), max_pixels=1 << 22, vram_total_gb=48.0, vram_free_gb=40.0,
                       loaded_models={"x": 8.0}, serves_models=None, busy=0)


def x_job(est_s: float = 10.0) -> QueuedJob:
    return QueuedJob(id="x", attempt=1, user_id=2, model_id="x", family="sd", model_gb=8.0, width=512, height=512,
                     priority=0, queued_at=NOW + 1.0, est_seconds=est_s)


def starts(jobs, workers, method: str = "affinity") -> list[float]:
    return forecast(Snapshot(jobs, workers, now=NOW), method=method).models["m"].starts_s


def test_a_job_waits_for_a_busy_holder_that_frees_before_a_copy_could_load():
    # The holder's render frees it after half a mean render (10 s over the two jobs queued: 5 s); a copy
    # on the free GPU would start at 10 s.
    workers = [gpu("holder", holds=True, busy=1), other_gpu("other")]
    assert starts([job(1), x_job()], workers) == [5.0]
    assert starts([job(1), x_job()], workers, method="drain") == [0.0]  # the baseline: the first free slot, loads free


def test_an_idle_gpu_with_nothing_queued_for_its_models_takes_the_copy_at_once():
    # The policy loads a copy on a GPU that would otherwise stay idle (policy.idle_without_work).
    workers = [gpu("holder", holds=True, busy=1), gpu("empty", holds=False)]
    assert starts([job(1)], workers) == [10.0]


def test_a_long_queue_for_the_holder_is_played_onto_a_copy_once_the_copy_pays():
    workers = [gpu("holder", holds=True), other_gpu("other")]
    played = starts([job(i) for i in range(8)] + [x_job()], workers)
    # Five renders wait for the holder (its queue under MIN_COPY_BACKLOG_S); the sixth would wait 50 s,
    # so a copy is loaded (10 s) and from then on both GPUs hold the model.
    assert played[:6] == [0.0, 10.0, 20.0, 30.0, 40.0, 10.0]
    assert played[6:] == [20.0, 30.0]


@pytest.mark.parametrize(("waited", "deadline", "expected"), [
    (0.0, None, 30.0),  # patience left: it waits for the holder (free at 30 s)
    (None, None, 10.0),  # patience spent: the copy, loaded by 10 s
    (0.0, NOW + 3_600, 10.0),  # a deadline: it does not wait for a holder
])
def test_patience_and_deadlines_decide_whether_a_job_waits_for_a_holder(waited, deadline, expected):
    queued_at = NOW - (patience_s(job(1)) + 1.0 if waited is None else waited)
    # 60 s renders in the queue: the busy holder frees after 30 s.
    workers = [gpu("holder", holds=True, busy=1), other_gpu("other")]
    assert starts([job(1, est_s=60.0, queued_at=queued_at, deadline=deadline), x_job(60.0)], workers) == [expected]


def test_with_the_idle_copy_off_the_play_waits_for_the_holder_as_the_policy_then_does(monkeypatch):
    from farm.scheduler import policy

    monkeypatch.setattr(policy, "IDLE_COPY", 0)
    workers = [gpu("holder", holds=True, busy=1), gpu("empty", holds=False)]
    assert starts([job(1)], workers) == [5.0]
