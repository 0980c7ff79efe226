"""The foundation's placement policy on small hand-made snapshots."""

from __future__ import annotations

import uuid

from farm.scheduler.policy import QueuedJob, Snapshot, WorkerState, place


def job(model="a", *, t=0.0, priority=0, gb=2.0, family="sd", size=512, excluded=()):
    return QueuedJob(id=uuid.uuid4(), attempt=1, user_id=1, model_id=model, family=family, model_gb=gb, width=size,
                     height=size, priority=priority, queued_at=t, excluded_workers=frozenset(excluded))


def worker(wid, *, vram=8.0, free=None, held=None, busy=0, serves=None, families=("sd", "sdxl"), draining=False):
    held = held or {}
    return WorkerState(id=wid, families=frozenset(families), max_pixels=2048 * 2048, vram_total_gb=vram,
                       vram_free_gb=free if free is not None else vram - sum(held.values()), loaded_models=held,
                       serves_models=frozenset(serves) if serves is not None else None, busy=busy, draining=draining)


def assigned(decisions):
    return {a.job_id: a.worker_id for a in decisions.assignments}


def test_prefers_the_worker_that_holds_the_model():
    j = job("b")
    d = place(Snapshot([j], [worker("w1", held={"a": 2.0}), worker("w2", held={"b": 2.0})], now=0))
    assert assigned(d) == {j.id: "w2"}


def test_otherwise_the_most_free_vram():
    j = job("c")
    d = place(Snapshot([j], [worker("small", vram=6.0), worker("big", vram=24.0)], now=0))
    assert assigned(d) == {j.id: "big"}


def test_one_job_per_free_slot_and_oldest_first():
    old, new = job(t=1.0), job(t=2.0)
    d = place(Snapshot([new, old], [worker("w1")], now=3))
    assert assigned(d) == {old.id: "w1"}


def test_priority_before_age():
    old, urgent = job(t=1.0), job(t=2.0, priority=5)
    d = place(Snapshot([old, urgent], [worker("w1")], now=3))
    assert assigned(d) == {urgent.id: "w1"}


def test_busy_and_draining_workers_get_nothing():
    j = job()
    assert place(Snapshot([j], [worker("w1", busy=1), worker("w2", draining=True)], now=0)).assignments == []


def test_unplaceable_jobs_are_reported_with_reasons():
    too_big, wrong_family, not_served = job(gb=30.0), job(family="flux"), job("z")
    d = place(Snapshot([too_big, wrong_family, not_served], [worker("w1", vram=16.0, serves={"a"}, families=("sd",))], now=0))
    assert d.assignments == []
    assert "16.0 GB of VRAM" in d.unplaceable[too_big.id]
    assert "not flux" in d.unplaceable[wrong_family.id]
    assert "does not serve model z" in d.unplaceable[not_served.id]


def test_no_worker_at_all():
    j = job()
    assert place(Snapshot([j], [], now=0)).assignments == []


def test_excluded_worker_is_skipped():
    j = job(excluded={"w1"})
    d = place(Snapshot([j], [worker("w1", vram=80.0), worker("w2", vram=8.0)], now=0))
    assert assigned(d) == {j.id: "w2"}
    alone = place(Snapshot([j], [worker("w1")], now=0))
    assert "ran out of memory" in alone.unplaceable[j.id]


def test_working_memory_counts_toward_fit():
    # 7 GB of weights fit in 8 GB, but not with a 2048x2048 render's activations.
    j = job(gb=7.0, size=2048)
    d = place(Snapshot([j], [worker("w1", vram=8.0)], now=0))
    assert d.assignments == [] and "needs" in d.unplaceable[j.id]
