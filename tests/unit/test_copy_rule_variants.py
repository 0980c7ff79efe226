"""bench/experiments/copy_rule_variants.py: each variant changes the copy rule for the run only as its docstring says."""

from __future__ import annotations

import importlib.util

import pytest

from farm.scheduler import policy
from farm.scheduler.policy import Snapshot, place
from tests.support.bench_scripts import BENCH
from tests.unit.test_policy import assigned, fast_worker, job


@pytest.fixture
def variants(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    # Whatever a variant replaces is put back after the test.
    for name in ("should_wait_for_holder", "holders_backlog_s"):
        monkeypatch.setattr(policy._Placement, name, getattr(policy._Placement, name))
    # The variants are measured against the policy without its idle and cold copies (apply turns them off too).
    monkeypatch.setattr(policy, "IDLE_COPY", 0)
    monkeypatch.setattr(policy, "COLD_COPY", 0)
    spec = importlib.util.spec_from_file_location("bench_copy_rule_variants", BENCH / "experiments" / "copy_rule_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_backlog():
    """Two 5 s jobs for a model whose one holder is busy: the shipped rule waits for it; a 1 s load is possible on an idle GPU."""
    return [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)], fast_worker("holder", held={"a": 2.0}, busy=1)


def test_idle_copy_loads_on_an_idle_gpu_once_the_job_has_waited_its_load(variants):
    jobs, holder = short_backlog()
    idle = fast_worker("idle")  # loads model "a" (2 GB) in 1 s
    assert place(Snapshot(jobs, [holder, idle], now=1.5)).assignments == []
    variants.apply("idle-copy=1")
    assert place(Snapshot(jobs, [holder, idle], now=0.5)).assignments == []  # waited under one load time
    assert assigned(place(Snapshot(jobs, [holder, idle], now=1.5))) == {jobs[0].id: "idle"}


def test_light_idle_copy_leaves_a_user_with_a_deep_queue_waiting(variants):
    jobs, holder = short_backlog()
    deep = [job("a", t=0.0, est=0.5) for _ in range(variants.LIGHT_QUEUED + 1)]
    variants.apply("light-idle-copy=1")
    assert assigned(place(Snapshot(jobs, [holder, fast_worker("idle")], now=1.5))) == {jobs[0].id: "idle"}
    assert place(Snapshot(deep, [holder, fast_worker("idle")], now=1.5)).assignments == []


def test_full_backlog_counts_the_other_models_the_holders_serve(variants):
    jobs, _ = short_backlog()
    holder = fast_worker("holder", held={"a": 2.0, "b": 2.0}, busy=1)
    others = [job("b", t=0.0, est=30.0, user=2) for _ in range(4)]
    snapshot = Snapshot(jobs + others, [holder, fast_worker("idle", vram=4.5)], now=1.0)
    placement = policy._Placement(snapshot)
    placement.index(policy.JobQueue(snapshot.jobs))
    assert placement.holders_backlog_s(jobs[0]) == (10.0, 1.0)
    variants.apply("full-backlog")
    assert placement.holders_backlog_s(jobs[0]) == (130.0, 1.0)


def test_an_unknown_variant_is_refused_by_name(variants):
    with pytest.raises(SystemExit, match="unknown variant 'fast'"):
        variants.apply("fast")
