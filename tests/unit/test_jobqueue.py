"""The job queue's index: queue order per model and per user, sums, and what a placement reads of it."""

from __future__ import annotations

import pytest

from farm.scheduler import jobqueue
from farm.scheduler.bench import synthetic_snapshot
from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import QueuedJob, Snapshot, place


def queued(job_id, *, user=1, model="m", priority=0, t=0.0, est=5.0):
    return QueuedJob(id=job_id, attempt=1, user_id=user, model_id=model, family="sd", model_gb=2.0, width=512,
                     height=512, priority=priority, queued_at=t, est_seconds=est)


def test_lanes_keep_queue_order_counts_and_work():
    queue = JobQueue([queued(1, t=0), queued(2, model="n", user=2, t=1), queued(3, priority=2, t=2),
                      queued(4, user=2, t=3, est=1.5)])
    assert [j.id for j in queue] == [3, 1, 2, 4]  # priority first, then the order they came in
    assert [j.id for j in queue.models["m"]] == [3, 1, 4]
    assert [j.id for j in queue.users[2]] == [2, 4]
    assert (queue.models["m"].count, queue.models["m"].work_s) == (3, 11.5)
    assert queue[0].id == 3 and queue[3].id == 4 and queue.last().id == 4
    with pytest.raises(IndexError):
        queue[4]

    assert queue.remove(3).id == 3
    assert [j.id for j in queue] == [1, 2, 4] and queue.models["m"].first().id == 1
    queue.remove(2)
    assert "n" not in queue.models and 2 not in queue
    queue.remove(1)
    queue.remove(4)
    assert len(queue) == 0 and not queue.models and not queue.users and queue.all.work_s == 0.0


def test_a_job_is_queued_once():
    queue = JobQueue([queued(1)])
    with pytest.raises(ValueError, match="queued already"):
        queue.add(queued(1))


def test_newer_than_reads_from_the_newest_and_stops_at_the_window():
    lane = JobQueue([queued(i, t=float(i)) for i in range(10)] + [queued(99, priority=1, t=8.5)]).models["m"]
    assert [j.id for j in lane.newer_than(7.0)] == [9, 8, 7, 99]


def count_reads(monkeypatch) -> list[int]:
    """Count every job the policy reads out of a JobQueue's lanes."""
    reads = [0]
    lane_iter, newer_than = jobqueue.Lane.__iter__, jobqueue.Lane.newer_than

    def counted(original):
        def wrapper(*args):
            for job in original(*args):
                reads[0] += 1
                yield job
        return wrapper

    monkeypatch.setattr(jobqueue.Lane, "__iter__", counted(lane_iter))
    monkeypatch.setattr(jobqueue.Lane, "newer_than", counted(newer_than))
    return reads


@pytest.mark.parametrize("queued_jobs", [1_000, 100_000])
def test_a_decision_reads_a_bounded_number_of_jobs_however_long_the_queue(monkeypatch, queued_jobs):
    # The synthetic busy farm of `farm bench decision`: 100 workers, 20
    # models, 50 users. A decision reads lane heads and a few jobs behind
    # them; before the index it read every queued job at least twice.
    synthetic = synthetic_snapshot(100, 20, queued_jobs, seed=1)
    snapshot = Snapshot(jobs=JobQueue(synthetic.jobs), workers=synthetic.workers, now=synthetic.now,
                        shares=synthetic.shares)
    reads = count_reads(monkeypatch)
    decisions = place(snapshot)
    assert decisions.assignments  # it did decide something
    assert reads[0] <= 1_000, reads[0]
