"""The scheduler simulator and the fifo baseline on small traces whose right numbers are known by hand."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.scheduler import bench as scheduler_bench
from farm.scheduler.bench import bench, run_bench, synthetic_snapshot
from farm.scheduler.fifo import lru_evictions, place_fifo
from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import Assignment, Decisions, Preload, QueuedJob, Snapshot, WorkerState
from farm.scheduler.simulator import (
    STALL_AFTER_S,
    USAGE_HALF_LIFE_S,
    TraceError,
    TraceJob,
    WorkerSpec,
    load_trace,
    load_workers,
    lower_bound_loads,
    simulate,
)


def gpu(wid="w1", *, vram=24.0, gbps=2.2, speed=1.0, families=("sd", "sdxl", "flux"), **extra):
    return WorkerSpec(id=wid, vram_gb=vram, load_gbps=gbps, speed=speed, families=frozenset(families), **extra)


def job(t=0.0, model="sd15", *, user="ana", gb=2.2, family="sd", size=512, steps=10, step_s=0.1):
    return TraceJob(t=t, user=user, model=model, model_gb=gb, family=family, width=size, height=size, steps=steps,
                    step_s=step_s)


def run(workers, trace, policy=place_fifo):
    return simulate(workers, trace, policy, policy_name="test")


# --- the simulator with the fifo baseline ------------------------------------


def test_three_jobs_of_one_model_on_one_worker_load_it_once():
    # Load 2.2 GB at 2.2 GB/s = 1 s; each render 10 x 0.1 s = 1 s.
    m = run([gpu()], [job(0), job(0), job(0)])
    assert m["model_loads"] == 1 and m["evictions"] == 0
    # Waits run to the start of the render, so the first includes the load.
    assert (m["wait_p50_s"], m["wait_max_s"]) == (2.0, 3.0)
    assert m["makespan_s"] == 4.0
    assert m["vram_overcommits"] == m["invalid_assignments"] == m["double_assignments"] == 0
    assert m["lower_bound_loads"] == 1 and m["rendered"] == 3
    assert m["users"]["ana"] == {"jobs": 3, "rendered": 3, "wait_p50_s": 2.0, "wait_p95_s": 2.9, "wait_max_s": 3.0}


def test_wait_includes_the_load_and_render_time_scales_with_speed():
    # 7 GB at 3.5 GB/s = 2 s of loading; 20 x 0.5 s = 10 s of work at speed 2 = 5 s.
    m = run([gpu(vram=16.0, gbps=3.5, speed=2.0)],
            [job(1.0, "xl", gb=7.0, family="sdxl", size=1024, steps=20, step_s=0.5), job(1.5, "xl", gb=7.0,
                                                                                       family="sdxl", size=1024)])
    assert m["wait_max_s"] == pytest.approx(2.0 + 5.0 - 0.5)
    assert m["wait_p50_s"] == pytest.approx((2.0 + 6.5) / 2)
    assert m["makespan_s"] == pytest.approx(2.0 + 5.0 + 0.5)  # from the first arrival


def test_two_models_that_cannot_share_a_gpu_are_evicted_and_reloaded():
    # 6 + 6 GB of weights do not fit in 10 GB: every switch drops the other model.
    trace = [job(0, "a", gb=6.0), job(10, "b", gb=6.0), job(20, "a", gb=6.0)]
    m = run([gpu(vram=10.0)], trace)
    assert (m["model_loads"], m["evictions"], m["vram_overcommits"]) == (3, 2, 0)
    assert m["lower_bound_loads"] == 2


def test_models_that_fit_together_stay_loaded():
    trace = [job(0, "a", gb=3.0), job(10, "b", gb=3.0), job(20, "a", gb=3.0)]
    m = run([gpu(vram=10.0)], trace)
    assert (m["model_loads"], m["evictions"]) == (2, 0)


def test_a_job_no_worker_can_run_is_unplaceable_and_the_run_still_ends():
    trace = [job(0), job(0, "flux", gb=23.8, family="flux", size=1024), job(1)]
    m = run([gpu(vram=16.0)], trace)
    assert m["unplaceable"] == 1 and m["rendered"] == 2 and m["stalled"] == 0
    assert m["lower_bound_loads"] == 1  # the flux model cannot be loaded anywhere


def test_the_policy_sees_an_unplaceable_job_once_and_reports_it():
    seen = []

    def watching(snapshot):
        decisions = place_fifo(snapshot)
        seen.append((len(snapshot.jobs), dict(decisions.unplaceable)))
        return decisions

    m = run([gpu(vram=8.0, families=("sd",))], [job(0, "xl", gb=7.0, family="sdxl", size=1024)], watching)
    assert m["unplaceable"] == 1 and m["decisions"] == 1
    assert "not sdxl" in seen[0][1][1]


def test_jobs_go_to_the_first_free_worker_in_file_order():
    m = run([gpu("slow", speed=0.5), gpu("fast", speed=2.0)], [job(0, steps=10, step_s=1.0)])
    # fifo does not pick the faster GPU: 1 s load + 20 s render on "slow".
    assert m["makespan_s"] == pytest.approx(21.0)


def test_speed_run_ends_and_counts_every_job():
    trace = [job(t * 0.5, f"m{t % 3}", user=f"u{t % 4}") for t in range(60)]
    m = run([gpu("a"), gpu("b", vram=8.0)], trace)
    assert m["rendered"] == 60 and sum(u["jobs"] for u in m["users"].values()) == 60
    assert m["vram_overcommits"] == 0 and m["decisions"] > 0


models = st.sampled_from([("s1", 2.2, "sd", 512), ("s2", 2.1, "sd", 768), ("x1", 6.9, "sdxl", 1024),
                          ("x2", 7.1, "sdxl", 1024), ("f1", 23.8, "flux", 1024)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), models, st.integers(1, 30), st.sampled_from(["a", "b", "c"])),
                min_size=1, max_size=40),
       st.lists(st.tuples(st.sampled_from([8.0, 12.0, 24.0, 48.0]), st.sampled_from([0.5, 1.0, 2.0]),
                          st.integers(1, 2)), min_size=1, max_size=4))
def test_fifo_on_random_traces_keeps_the_books(jobs, cluster):
    workers = [gpu(f"w{i}", vram=vram, speed=speed, capacity=capacity) for i, (vram, speed, capacity) in enumerate(cluster)]
    trace = [job(t, model, user=user, gb=gb, family=family, size=size, steps=steps)
             for t, (model, gb, family, size), steps, user in jobs]
    m = run(workers, trace)
    assert m["rendered"] + m["unplaceable"] == len(trace) and m["stalled"] == 0
    assert m["invalid_assignments"] == m["double_assignments"] == 0
    if all(w.capacity == 1 for w in workers):
        # With more slots, fifo cannot see the activations of the jobs already
        # running (WorkerState does not carry them); see the test below.
        assert m["vram_overcommits"] == 0
    assert m["lower_bound_loads"] <= m["lower_bound_loads_at_max_wait"] <= m["model_loads"] or m["rendered"] == 0
    assert m["wait_p50_s"] <= m["wait_p95_s"] <= m["wait_max_s"] and m["wait_p50_s"] >= 0


def test_the_shipped_workloads_replay_cleanly():
    bench_dir = Path(__file__).resolve().parents[2] / "bench"
    m = run_bench(bench_dir / "workers" / "mixed.json", bench_dir / "traces" / "mixed.jsonl", "fifo", None)
    assert m["jobs"] >= 1000 and m["workers"] >= 8 and m["lower_bound_loads"] >= 6
    assert m["rendered"] == m["jobs"] and m["vram_overcommits"] == 0
    assert len(m["users"]) > 5 and max(u["jobs"] for u in m["users"].values()) > 3 * m["jobs"] / len(m["users"])
    assert len(load_workers(bench_dir / "workers" / "big.json")) == 100
    for name in ("bursty", "heavy_user"):
        assert len(load_trace(bench_dir / "traces" / f"{name}.jsonl")) >= 500


# --- counting a policy's mistakes --------------------------------------------


def _assign_all_to(worker_id, evict=()):
    def policy(snapshot):
        return Decisions(assignments=[Assignment(j.id, j.attempt, worker_id, tuple(evict)) for j in snapshot.jobs])

    return policy


def test_assigning_to_a_busy_worker_is_an_overcommit_and_is_refused():
    m = run([gpu()], [job(0), job(0)], _assign_all_to("w1"))
    assert m["vram_overcommits"] == 1  # the second job in the first decision
    assert m["rendered"] == 2  # it was placed again once the worker was free


def test_assigning_the_same_job_twice_is_counted():
    def twice(snapshot):
        first = snapshot.jobs[0]
        return Decisions(assignments=[Assignment(first.id, first.attempt, "w1"), Assignment(first.id, first.attempt, "w2")])

    m = run([gpu("w1"), gpu("w2")], [job(0)], twice)
    assert m["double_assignments"] == 1 and m["model_loads"] == 1 and m["rendered"] == 1


def test_a_job_on_a_worker_that_cannot_run_it_is_invalid():
    def wrong(snapshot):
        return Decisions(assignments=[Assignment(j.id, j.attempt, "small" if snapshot.now == 0 else "big")
                                      for j in snapshot.jobs])

    m = run([gpu("small", vram=8.0), gpu("big", vram=80.0)],
            [job(0, "xl", gb=7.0, family="sdxl", size=1024), job(5, "xl", gb=7.0, family="sdxl", size=1024)], wrong)
    assert m["invalid_assignments"] == 1
    assert m["rendered"] == 2  # the refused job stayed queued and went to "big" at t=5


def test_loading_without_evicting_is_an_overcommit_and_the_worker_makes_room():
    # The policy never lists evictions: the second model does not fit beside the first.
    m = run([gpu(vram=10.0)], [job(0, "a", gb=6.0), job(10, "b", gb=6.0)], _assign_all_to("w1"))
    assert m["vram_overcommits"] == 1 and m["evictions"] == 1 and m["model_loads"] == 2


def test_evicting_a_model_in_use_is_refused():
    def evict_running(snapshot):
        decisions = Decisions()
        for w in snapshot.workers:
            if w.busy < w.capacity and snapshot.jobs:
                j = snapshot.jobs[0]
                decisions.assignments.append(Assignment(j.id, j.attempt, w.id, tuple(w.in_use) if w.id == "w1" else ()))
        return decisions

    m = run([gpu("w1", capacity=2)], [job(0, "a"), job(0.5, "b")], evict_running)
    assert m["invalid_assignments"] == 1 and m["rendered"] == 2


def test_activations_of_running_jobs_count_toward_vram():
    # 12 GB, two slots: a 768x768 SD render holds 2.2 + 1.34 GB; an SDXL job
    # beside it needs 7.1 + 2.08 GB. The models fit (9.3 GB) but not with both
    # sets of activations (12.7 GB); fifo only sees the models.
    trace = [job(0, size=768, steps=100), job(0.5, "xl", gb=7.1, family="sdxl", size=1024)]
    m = run([gpu(vram=12.0, capacity=2)], trace)
    assert m["vram_overcommits"] == 1 and m["rendered"] == 2


def test_a_policy_that_places_nothing_stops_the_run():
    m = run([gpu()], [job(0), job(1)], lambda snapshot: Decisions())
    assert m["stalled"] == 2 and m["rendered"] == 0
    # Polled every second while the cluster sat idle, for STALL_AFTER_S after the last arrival.
    assert m["decisions"] == 2 + STALL_AFTER_S
    m = simulate([gpu()], [job(0), job(1)], lambda snapshot: Decisions(), poll_s=None)
    assert m["stalled"] == 2 and m["decisions"] == 2


def test_a_policy_that_waits_on_purpose_is_asked_again():
    def patient(snapshot):
        # Holds every job for 5 s, as a policy with patience might.
        return place_fifo(Snapshot([j for j in snapshot.jobs if snapshot.now - j.queued_at >= 5], snapshot.workers,
                                   snapshot.now, snapshot.shares))

    m = run([gpu()], [job(0.5)], patient)
    # Asked on arrival (t=0.5), then polled at 1.5, 2.5, ... 5.5, when it
    # places the job; the wait is those 5 s plus a 1 s load.
    assert m["rendered"] == 1 and m["decisions"] == 6 and m["wait_max_s"] == pytest.approx(6.0)
    # Only on events, nothing would ever ask it again.
    assert simulate([gpu()], [job(0.5)], patient, poll_s=None)["stalled"] == 1


def test_a_preloaded_model_is_not_loaded_again():
    def preload_then_place(snapshot):
        w = snapshot.workers[0]
        if "a" not in w.loaded_models and w.busy == 0:
            return Decisions(preloads=[Preload(w.id, "a")])
        if w.busy == 0:
            j = snapshot.jobs[0]
            return Decisions(assignments=[Assignment(j.id, j.attempt, w.id)])
        return Decisions()

    m = run([gpu()], [job(0, "a")], preload_then_place)
    assert (m["model_loads"], m["preloads"], m["rendered"]) == (1, 1, 1)
    assert m["wait_max_s"] == pytest.approx(1.0)  # it waited for the preload's 1 s load


def test_snapshots_show_lru_order_in_use_and_decayed_usage():
    snapshots = []

    def recording(snapshot):
        # The simulator's queue changes after the call: keep what this call saw.
        snapshots.append(dataclasses.replace(snapshot, jobs=list(snapshot.jobs)))
        return place_fifo(snapshot)

    # ana renders from t=0 to 101 (1 s load, 100 s render); bo's "b" job waits
    # for her, holds the GPU from 101 to 103; bo comes back at 200 for "a".
    trace = [job(0, "a", user="ana", steps=100, step_s=1.0), job(0.1, "b", user="bo"), job(200, "a", user="bo")]
    run([gpu(vram=24.0)], trace, recording)
    assert [s.now for s in snapshots] == [0, 0.1, 101, 200]
    h = USAGE_HALF_LIFE_S

    waiting = snapshots[1]
    (w,) = waiting.workers
    assert (w.busy, w.in_use, list(w.loaded_models)) == (1, frozenset({"a"}), ["a"])
    assert w.vram_free_gb == pytest.approx(24.0 - 2.2)
    assert [j.user_id for j in waiting.jobs] == [2]
    assert (waiting.shares[1].running, waiting.shares[2].running) == (1, 0)
    assert waiting.shares[1].usage_s == pytest.approx(h / math.log(2) * (1 - 2 ** (-0.1 / h)))

    late = snapshots[3]
    (w,) = late.workers
    assert list(w.loaded_models) == ["a", "b"]  # least recently used first
    assert (w.busy, w.in_use) == (0, frozenset())
    assert set(late.shares) == {2}  # ana has nothing queued or running
    assert late.shares[2].usage_s == pytest.approx(h / math.log(2) * (2 ** (-97 / h) - 2 ** (-99 / h)))


def test_snapshots_list_jobs_as_the_live_scheduler_reads_them(monkeypatch):
    from farm.scheduler import simulator

    assert simulator.MAX_JOBS_PER_SNAPSHOT == math.inf  # the live scheduler keeps the whole queue (livequeue.py)
    monkeypatch.setattr(simulator, "MAX_JOBS_PER_SNAPSHOT", 3)
    snapshots = []

    def recording(snapshot):
        snapshots.append([j.id for j in snapshot.jobs])
        return place_fifo(snapshot)

    # Highest priority first, then oldest; at most MAX_JOBS_PER_SNAPSHOT of them.
    trace = [dataclasses.replace(job(t), priority=p) for t, p in [(0, 0), (0, 2), (0.2, 0), (0.1, 1), (0.1, 2)]]
    run([gpu()], trace, recording)
    # t=0: ids 1 and 2 (fifo takes 1); t=0.1: 4 and 5 arrive; t=0.2: 3 arrives, beyond the cap.
    assert snapshots[:3] == [[2, 1], [2, 5, 4], [2, 5, 4]]
    assert snapshots[-1] == [3]


def test_weights_reach_the_shares():
    snapshots = []

    def recording(snapshot):
        snapshots.append(snapshot)
        return place_fifo(snapshot)

    simulate([gpu()], [job(0, user="ana"), job(0, user="bo")], recording, weights={"ana": 3.0})
    assert {uid: share.weight for uid, share in snapshots[0].shares.items()} == {1: 3.0, 2: 1.0}


def test_users_may_be_numbers_and_are_reported_by_name(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"t": 0, "user": 7, "model": "a", "model_gb": 2, "family": "sd", "width": 512,
                                 "height": 512, "steps": 4, "step_s": 0.1}) + "\n")
    workers = tmp_path / "w.json"
    workers.write_text(json.dumps([{"id": "w", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]))
    assert list(run_bench(workers, trace, "fifo", None)["users"]) == ["7"]


# --- the lower bound -----------------------------------------------------------


def test_lower_bound_counts_models_some_worker_can_run():
    trace = [job(0, "a"), job(0, "a"), job(0, "b"), job(0, "f", gb=23.8, family="flux", size=1024)]
    assert lower_bound_loads([gpu(vram=16.0)], trace) == 2


def test_lower_bound_with_a_wait_limit_counts_workers_needed_at_once():
    # Four 10 s jobs arrive together; to start all within 1 s, four workers must load the model.
    workers = [gpu(f"w{i}") for i in range(4)]
    trace = [job(0, steps=100, step_s=0.1) for _ in range(4)]
    assert lower_bound_loads(workers, trace, max_wait_s=1.0) == 4
    assert lower_bound_loads(workers, trace, max_wait_s=30.0) == 1
    m = run(workers, trace)
    assert m["model_loads"] == m["lower_bound_loads_at_max_wait"] == 4 and m["wait_max_s"] == pytest.approx(1.0)


def test_lower_bound_with_a_wait_limit_never_exceeds_a_real_schedule():
    trace = [job(t * 0.3, f"m{t % 3}", steps=10 + t % 7, step_s=0.2) for t in range(80)]
    workers = [gpu("a", speed=2.0), gpu("b", vram=8.0, speed=0.5), gpu("c", vram=12.0, capacity=2)]
    m = run(workers, trace)
    assert m["lower_bound_loads"] <= m["lower_bound_loads_at_max_wait"] <= m["model_loads"]


# --- the files -----------------------------------------------------------------


def write(path, text):
    path.write_text(text)
    return path


def test_files_with_extra_fields_are_accepted(tmp_path):
    workers = write(tmp_path / "w.json", json.dumps([
        {"id": "w1", "vram_gb": 24, "load_gbps": 2.0, "speed": 1.0, "families": ["sd"], "gpu": "RTX 4090",
         "max_pixels": 1048576, "capacity": 1, "region": "eu"}]))
    trace = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in [
        {"t": 0, "user": "ana", "model": "a", "model_gb": 2.2, "family": "sd", "width": 512, "height": 512,
         "steps": 20, "step_s": 0.05, "priority": 3, "team": "design", "prompt": "a lighthouse"},
        {"t": 2.5, "user": "bo", "model": "a", "model_gb": 2.2, "family": "sd", "width": 768, "height": 768,
         "steps": 20, "step_s": 0.1, "campaign": "spring"},
    ]) + "\n\n")
    assert load_workers(workers)[0].max_pixels == 1048576
    jobs = load_trace(trace)
    assert (jobs[0].priority, jobs[0].team, jobs[1].priority) == (3, "design", 0)
    m = run_bench(workers, trace, "fifo", None)
    assert m["rendered"] == 2 and m["model_loads"] == 1


@pytest.mark.parametrize("line, message", [
    ('{"t": 0, "user": "a"', "t.jsonl:2: not valid JSON"),
    ('{"t": 0, "user": "a", "model": "m", "model_gb": 2, "family": "sd", "width": 512, "height": 512, "steps": 4}',
     "t.jsonl:2: missing field 'step_s'"),
    ('{"t": -1, "user": "a", "model": "m", "model_gb": 2, "family": "sd", "width": 512, "height": 512, "steps": 4, '
     '"step_s": 0.1}', "field 't' must be a finite number >= 0"),
    ('{"t": 0, "user": "a", "model": "m", "model_gb": "big", "family": "sd", "width": 512, "height": 512, "steps": 4, '
     '"step_s": 0.1}', "field 'model_gb' must be a number"),
    ('{"t": 0, "user": "a", "model": "m", "model_gb": 2, "family": "sd", "width": 512.5, "height": 512, "steps": 4, '
     '"step_s": 0.1}', "field 'width' must be a whole number"),
    ('{"t": 0, "user": "a", "model": "ok", "model_gb": 3, "family": "sd", "width": 512, "height": 512, "steps": 4, '
     '"step_s": 0.1}', "model 'ok' is 3.0 GB/sd here but 2.0 GB/sd on line 1"),
    ('[1, 2]', "t.jsonl:2: expected a JSON object"),
])
def test_a_malformed_trace_names_the_line(tmp_path, line, message):
    good = '{"t": 0, "user": "a", "model": "ok", "model_gb": 2, "family": "sd", "width": 512, "height": 512, "steps": 4, "step_s": 0.1}'
    trace = write(tmp_path / "t.jsonl", good + "\n" + line + "\n")
    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_trace(trace)


@pytest.mark.parametrize("text, message", [
    ("{}", "expected a JSON list of workers"),
    ('[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1}]', "worker 1: missing field 'families'"),
    ('[{"id": "a", "vram_gb": 0, "load_gbps": 2, "speed": 1, "families": []}]', "field 'vram_gb' must be a number > 0"),
    ('[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": "sd"}]', "must be a list of strings"),
    ('[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]},'
     ' {"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]', "worker 2: duplicate worker id"),
    ("not json", "not valid JSON"),
])
def test_a_malformed_workers_file_says_what_is_wrong(tmp_path, text, message):
    with pytest.raises(TraceError, match=message):
        load_workers(write(tmp_path / "w.json", text))


def test_the_cli_gives_one_line_for_a_bad_file(tmp_path):
    workers = write(tmp_path / "w.json", '[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]')
    trace = write(tmp_path / "t.jsonl", '{"t": 0}\n')
    result = CliRunner().invoke(bench, ["scheduler", "--workers", str(workers), "--trace", str(trace)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {trace}:1: missing field 'user'"]
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(bench, ["scheduler", "--workers", str(tmp_path / "nope.json"), "--trace", str(trace)])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_cli_prints_metrics_json(tmp_path):
    workers = write(tmp_path / "w.json", '[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]')
    trace = write(tmp_path / "t.jsonl", '{"t": 0, "user": "a", "model": "m", "model_gb": 2, "family": "sd", '
                                        '"width": 512, "height": 512, "steps": 4, "step_s": 0.25}\n')
    for policy in ("fifo", "farm"):
        result = CliRunner().invoke(bench, ["scheduler", "--workers", str(workers), "--trace", str(trace),
                                            "--policy", policy, "--seed", "3"])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output)
        assert (metrics["policy"], metrics["model_loads"], metrics["wait_max_s"], metrics["seed"]) == (policy, 1, 1.0, 3)


def test_the_decision_bench_runs_both_policies():
    result = CliRunner().invoke(bench, ["decision", "--workers", "10", "--models", "4", "--queued", "50",
                                        "--repeat", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["queued"] == 50 and {"p50_ms", "p99_ms"} <= set(out["farm"]) and {"p50_ms", "p99_ms"} <= set(out["fifo"])


def test_the_decision_bench_times_the_queue_as_the_live_scheduler_keeps_it(monkeypatch):
    # The live scheduler hands the policy a JobQueue it keeps between passes;
    # a plain list would be indexed on every call, 10 x the cost of a
    # decision at 10,000 queued, which the live scheduler never pays.
    timed = {}
    monkeypatch.setattr(scheduler_bench, "time_decisions",
                        lambda place, snapshot, repeat: timed.setdefault(place, snapshot.jobs) and {"p50_ms": 0.0})
    scheduler_bench.run_decision_bench(workers=10, models=4, queued=50, repeat=1)
    farm_jobs = timed[scheduler_bench.policy_function("farm")]
    assert isinstance(farm_jobs, JobQueue) and len(farm_jobs) == 50
    assert len(timed[scheduler_bench.policy_function("fifo")]) == 50


def test_the_decision_bench_replays_a_trace_and_times_every_pass(tmp_path):
    workers = write(tmp_path / "w.json", '[{"id": "a", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]},'
                                         '{"id": "b", "vram_gb": 8, "load_gbps": 2, "speed": 1, "families": ["sd"]}]')
    line = ('{"t": 0, "user": "u%d", "model": "m", "model_gb": 2, "family": "sd", "width": 512, "height": 512, '
            '"steps": 4, "step_s": 0.25}\n')
    trace = write(tmp_path / "t.jsonl", "".join(line % (i % 3) for i in range(6)))
    args = ["decision", "--trace", str(trace), "--workers-file", str(workers)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    for policy in ("farm", "fifo"):
        # All six at t=0 on two GPUs: a pass at 0 and after each pair of renders.
        assert out[policy]["rendered"] == 6 and out[policy]["passes"] >= 3
        assert out[policy]["decision_ms_p99"] >= out[policy]["decision_ms_p50"] > 0
        assert out[policy]["makespan_s"] >= out[policy]["makespan_lower_bound_s"] == 3.0  # 6 s of work on 2 GPUs
    stopped = json.loads(CliRunner().invoke(bench, args + ["--passes", "1"]).output)
    assert stopped["farm"]["passes"] == 1 and stopped["farm"]["stopped_after_passes"] == 1
    alone = CliRunner().invoke(bench, ["decision", "--trace", str(trace)])
    assert alone.exit_code == 2 and "--workers-file" in alone.output


def test_the_synthetic_snapshot_is_consistent():
    snapshot = synthetic_snapshot(workers=30, models=7, queued=200, seed=1)
    assert len(snapshot.jobs) == 200 and len(snapshot.workers) == 30
    for w in snapshot.workers:
        assert sum(w.loaded_models.values()) <= w.vram_total_gb and w.in_use <= set(w.loaded_models)


# --- the fifo baseline on its own ------------------------------------------------


def qjob(jid, model="a", *, t=0.0, gb=2.0, family="sd", size=512, excluded=()):
    return QueuedJob(id=jid, attempt=1, user_id=1, model_id=model, family=family, model_gb=gb, width=size, height=size,
                     priority=0, queued_at=t, excluded_workers=frozenset(excluded))


def wstate(wid, *, vram=8.0, held=None, busy=0, in_use=(), families=("sd", "sdxl"), capacity=1, draining=False):
    held = dict(held or {})
    return WorkerState(id=wid, families=frozenset(families), max_pixels=2048 * 2048, vram_total_gb=vram,
                       vram_free_gb=vram - sum(held.values()), loaded_models=held, serves_models=None, busy=busy,
                       capacity=capacity, draining=draining, in_use=frozenset(in_use))


def placed(decisions):
    return [(a.job_id, a.worker_id, a.evict) for a in decisions.assignments]


def test_fifo_takes_jobs_in_arrival_order_then_id():
    d = place_fifo(Snapshot([qjob(3, t=2.0), qjob(2, t=1.0), qjob(1, t=2.0)], [wstate("w1"), wstate("w2")], now=3))
    assert placed(d) == [(2, "w1", ()), (1, "w2", ())]


def test_fifo_ignores_held_models_and_takes_the_first_free_worker():
    d = place_fifo(Snapshot([qjob(1, "b")], [wstate("w1", busy=1), wstate("w2", held={"a": 2.0}),
                                             wstate("w3", held={"b": 2.0})], now=0))
    assert placed(d) == [(1, "w2", ())]


def test_fifo_skips_draining_excluded_and_unable_workers():
    d = place_fifo(Snapshot([qjob(1, excluded={"w3"}), qjob(2, "x", gb=7.0, family="sdxl", size=1024)],
                            [wstate("w1", draining=True), wstate("w2", families=("sdxl",), vram=24.0), wstate("w3"),
                             wstate("w4")], now=0))
    assert placed(d) == [(1, "w4", ()), (2, "w2", ())]


def test_fifo_evicts_least_recently_used_first_and_never_what_is_in_use():
    w = wstate("w1", vram=12.0, held={"old": 3.0, "busy": 3.0, "mid": 3.0, "new": 2.0}, in_use={"busy"}, busy=1,
               capacity=2)
    d = place_fifo(Snapshot([qjob(1, "x", gb=4.0)], [w], now=0))
    # 1 GB free; the job needs 4 + 0.82 GB: drop "old" (LRU), skip "busy", then "mid".
    assert placed(d) == [(1, "w1", ("old", "mid"))]


def test_fifo_does_not_place_a_job_that_cannot_fit_beside_models_in_use():
    w = wstate("w1", vram=12.0, held={"busy": 9.0}, in_use={"busy"}, busy=1, capacity=2)
    d = place_fifo(Snapshot([qjob(1, "x", gb=4.0)], [w], now=0))
    assert d.assignments == [] and d.unplaceable == {}


def test_fifo_reports_jobs_no_worker_can_ever_run():
    d = place_fifo(Snapshot([qjob(1, "f", gb=24.0, family="flux", size=1024), qjob(2)], [wstate("w1")], now=0))
    assert placed(d) == [(2, "w1", ())]
    assert "not flux" in d.unplaceable[1]


def test_fifo_never_preloads_and_plans_each_worker_once_per_call():
    d = place_fifo(Snapshot([qjob(i, f"m{i}", gb=3.0) for i in range(1, 5)], [wstate("w1", vram=8.0, capacity=3)], now=0))
    assert d.preloads == []
    # Three slots; the third job needs room: m1 and m2 are now in use, nothing can go.
    assert placed(d) == [(1, "w1", ()), (2, "w1", ())]


def test_lru_evictions():
    assert lru_evictions({"a": 2.0, "b": 2.0}, frozenset(), 8.0, 4.0) == ()
    assert lru_evictions({"a": 2.0, "b": 2.0}, frozenset(), 5.0, 3.0) == ("a",)
    assert lru_evictions({"a": 2.0, "b": 2.0}, frozenset({"a"}), 5.0, 3.0) == ("b",)
    assert lru_evictions({"a": 2.0, "b": 2.0}, frozenset({"a", "b"}), 5.0, 3.0) is None


# --- the host-memory tier -----------------------------------------------------


def test_an_evicted_model_comes_back_from_the_host_tier_at_the_host_rate():
    # 6 + 6 GB do not fit in 10 GB. Without a tier "a" is read from disk again
    # (6 GB at 2 GB/s = 3 s); with 8 GB of host memory it waited there and
    # comes back at 12 GB/s (0.5 s).
    trace = [job(0, "a", gb=6.0), job(10, "b", gb=6.0), job(20, "a", gb=6.0)]
    plain = run([gpu(vram=10.0, gbps=2.0)], trace)
    tiered = run([gpu(vram=10.0, gbps=2.0, ram_cache_gb=8.0, h2d_gbps=12.0)], trace)
    assert (plain["model_loads"], plain["host_loads"], plain["load_s"], plain["wait_max_s"]) == (3, 0, 9.0, 3.0)
    assert (tiered["model_loads"], tiered["host_loads"], tiered["load_s"], tiered["wait_max_s"]) == (3, 1, 6.5, 3.0)
    assert tiered["host_load_s"] == 0.5 and tiered["load_gb"] == plain["load_gb"] == 18.0


def test_the_host_tier_keeps_what_fits_least_recently_evicted_out_first():
    # a, b, c in turn on a GPU that holds one at a time, 7 GB of host memory:
    # b's eviction pushes a out of the tier, so a comes from disk; then c's
    # eviction pushes b out, and b's return is from disk as well.
    trace = [job(0, "a", gb=6.0), job(10, "b", gb=6.0), job(20, "c", gb=6.0), job(30, "a", gb=6.0), job(40, "c", gb=6.0)]
    m = run([gpu(vram=10.0, gbps=2.0, ram_cache_gb=7.0)], trace)
    # Only the last job's model (c, evicted by a at t=30) was still in the tier.
    assert (m["model_loads"], m["host_loads"], m["evictions"]) == (5, 1, 4)


def test_snapshots_show_the_host_tier_to_the_policy():
    seen = []

    def looking(snapshot):
        seen.append({w.id: (w.host_models, w.h2d_gbps, w.ram_cache_gb) for w in snapshot.workers})
        return place_fifo(snapshot)

    trace = [job(0, "a", gb=6.0), job(10, "b", gb=6.0), job(20, "a", gb=6.0)]
    simulate([gpu(vram=10.0, ram_cache_gb=8.0, h2d_gbps=20.0)], trace, looking, policy_name="test")
    assert seen[0] == {"w1": (frozenset(), 20.0, 8.0)} and seen[-1]["w1"][0] == frozenset({"a"})


def test_workers_files_and_the_cli_set_the_host_tier(tmp_path):
    workers = write(tmp_path / "w.json", '[{"id": "a", "vram_gb": 10, "load_gbps": 2, "speed": 1, "families": ["sd"],'
                                          ' "ram_cache_gb": 8, "h2d_gbps": 16}]')
    assert (load_workers(workers)[0].ram_cache_gb, load_workers(workers)[0].h2d_gbps) == (8.0, 16.0)
    bad = write(tmp_path / "bad.json", '[{"id": "a", "vram_gb": 10, "load_gbps": 2, "speed": 1, "families": ["sd"],'
                                       ' "ram_cache_gb": -1}]')
    with pytest.raises(TraceError, match="worker 1: field 'ram_cache_gb' must be a finite number >= 0"):
        load_workers(bad)
    plain = write(tmp_path / "p.json", '[{"id": "a", "vram_gb": 10, "load_gbps": 2, "speed": 1, "families": ["sd"]}]')
    trace = write(tmp_path / "t.jsonl", "".join(
        json.dumps({"t": t, "user": "u", "model": m, "model_gb": 6, "family": "sd", "width": 512, "height": 512,
                    "steps": 4, "step_s": 0.25}) + "\n" for t, m in ((0, "a"), (10, "b"), (20, "a"))))
    without = json.loads(CliRunner().invoke(bench, ["scheduler", "--workers", str(plain), "--trace", str(trace)]).output)
    result = CliRunner().invoke(bench, ["scheduler", "--workers", str(plain), "--trace", str(trace),
                                        "--ram-cache-gb", "8", "--h2d-gbps", "12"])
    assert result.exit_code == 0, result.output
    assert (without["host_loads"], json.loads(result.output)["host_loads"]) == (0, 1)
    refused = CliRunner().invoke(bench, ["scheduler", "--workers", str(plain), "--trace", str(trace), "--h2d-gbps", "0"])
    assert refused.exit_code == 2 and "--h2d-gbps" in refused.output


# --- the makespan lower bound ------------------------------------------------


def test_makespan_bound_weighs_work_only_some_workers_can_run_against_them_alone():
    from farm.scheduler.simulator import makespan_lower_bound_s

    small = gpu("small", vram=12.0, families=("sd",))
    big = gpu("big", vram=80.0, speed=2.0)
    # 100 s of FLUX work that only the big card can run, 100 s of SD work either can.
    flux = [job(0, "flux", gb=23.8, family="flux", size=1024, steps=10, step_s=1.0) for _ in range(10)]
    sd = [job(0, steps=10, step_s=1.0) for _ in range(10)]
    # Overall: 200 s over speed 3 = 66.7 s; FLUX alone: 100 s over speed 2 = 50 s.
    assert makespan_lower_bound_s([small, big], flux + sd) == pytest.approx(200 / 3)
    # Twice the FLUX work: 300 s over 3 = 100 s, but the big card alone needs 200 / 2 = 100 s... and
    # with three times: 300 / 2 = 150 s beats 400 / 3.
    assert makespan_lower_bound_s([small, big], flux * 3 + sd) == pytest.approx(150.0)


def test_makespan_bound_counts_late_arrivals_and_the_longest_job():
    from farm.scheduler.simulator import makespan_lower_bound_s

    # One job of 50 s arriving at 100 s: it cannot end before 150 s (its model may be loaded by then).
    trace = [job(0, steps=1, step_s=1.0), job(100, steps=50, step_s=1.0)]
    assert makespan_lower_bound_s([gpu(gbps=2.2), gpu("w2", gbps=2.2)], trace) == pytest.approx(150.0)
    # Arriving first, it waits for its model's 1 s load as well.
    assert makespan_lower_bound_s([gpu(gbps=2.2), gpu("w2", gbps=2.2)], trace[1:]) == pytest.approx(51.0)
    # Work arriving at 10 s on one worker: 10 + 40 s, beyond the 41 s the work alone asks.
    late = [job(0, steps=1, step_s=1.0)] + [job(10, steps=10, step_s=1.0) for _ in range(4)]
    assert makespan_lower_bound_s([gpu()], late) == pytest.approx(50.0)
    # Jobs no worker can run are left out.
    assert makespan_lower_bound_s([gpu(families=("sd",))], [job(0, "f", family="flux", gb=23.8)]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.sampled_from(["sd15", "sdxl", "flux"]), st.integers(1, 40)),
                min_size=1, max_size=30))
def test_no_replay_finishes_before_the_makespan_bound(rows):
    from farm.scheduler.policy import place

    shapes = {"sd15": (2.2, "sd", 512), "sdxl": (6.9, "sdxl", 1024), "flux": (23.8, "flux", 1024)}
    trace = [job(t, model, gb=shapes[model][0], family=shapes[model][1], size=shapes[model][2], steps=steps)
             for t, model, steps in rows]
    workers = [gpu("a", vram=12.0, families=("sd", "sdxl")), gpu("b", vram=48.0, speed=1.4, gbps=3.0),
               gpu("c", vram=80.0, speed=2.2, gbps=4.0)]
    for policy in (place_fifo, place):
        metrics = run(workers, trace, policy)
        assert metrics["makespan_s"] >= metrics["makespan_lower_bound_s"] - 1e-6


def test_quantized_flux_variants_run_on_a_24_gb_gpu_and_cuda_only_ones_never_on_a_cpu_worker():
    """FLUX.1 dev at 1024x1024 (sizes as tests/unit/test_policy.py computes them): the 16-bit model fits
    neither worker; int8 fits both; nf4 fits both but needs CUDA, so only the GPU loads it."""
    from farm.scheduler.policy import place

    workers = [gpu("gpu", vram=24.0, families=("flux",)), gpu("cpu", vram=32.0, speed=0.05, families=("flux",), cuda=False)]
    flux = dict(family="flux", size=1024, steps=4)
    # The int8 job holds the GPU for a while; the nf4 jobs arrive while only the CPU worker is free, and wait.
    trace = [job(0, "flux", gb=40.5, **flux), job(0, "flux-int8", gb=20.5, family="flux", size=1024, steps=400),
             job(1, "flux-nf4", gb=11.0, **flux), job(2, "flux-nf4", gb=11.0, **flux)]
    trace = [dataclasses.replace(j, needs_cuda=j.model == "flux-nf4") for j in trace]
    m = run(workers, trace, place)
    assert m["unplaceable"] == 1 and m["rendered"] == 3 and m["invalid_assignments"] == 0 and m["stalled"] == 0
    assert "flux-nf4" in m["loads_by_worker"]["gpu"] and "flux-nf4" not in m["loads_by_worker"]["cpu"]


def test_the_files_say_which_workers_have_cuda_and_which_jobs_need_it(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps([{"id": "cpu", "vram_gb": 64, "load_gbps": 1, "speed": 0.1,
                                                  "families": ["flux"], "cuda": False}]))
    (tmp_path / "t.jsonl").write_text(json.dumps({"t": 0, "user": "a", "model": "flux-nf4", "model_gb": 11, "family": "flux",
                                                  "width": 1024, "height": 1024, "steps": 4, "step_s": 1,
                                                  "needs_cuda": True}) + "\n")
    assert load_workers(tmp_path / "w.json")[0].cuda is False and load_trace(tmp_path / "t.jsonl")[0].needs_cuda is True
    (tmp_path / "w.json").write_text(json.dumps([{"id": "cpu", "vram_gb": 64, "load_gbps": 1, "speed": 0.1,
                                                  "families": ["flux"], "cuda": "no"}]))
    with pytest.raises(TraceError, match="field 'cuda' must be true or false"):
        load_workers(tmp_path / "w.json")
