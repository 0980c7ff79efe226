"""bench/scheduler_sweep.py: one row per trace and worker order, with the light users' worst p95 under both policies."""

from __future__ import annotations

import json

import pytest

from tests.support.bench_scripts import BENCH, load_bench_script


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports make_traces and scheduler_targets
    return load_bench_script("scheduler_sweep")


def test_the_light_users_are_those_with_few_jobs(sweep):
    metrics = {"users": {"campaign": {"jobs": 300, "wait_p95_s": 500.0},
                         "ana": {"jobs": 31, "wait_p95_s": 90.0},
                         "ben": {"jobs": 12, "wait_p95_s": 120.0}}}
    assert sweep.worst_light_p95(metrics) == 120.0
    assert sweep.worst_light_p95({"users": {"campaign": {"jobs": 300, "wait_p95_s": 500.0}}}) is None


def test_each_worker_order_replays_the_trace_again(sweep, capsys, monkeypatch):
    seen = []
    real = sweep.replay

    def recording(workers, trace, policy, **kwargs):
        seen.append((kwargs["policy_name"], kwargs["worker_order_seed"], [w.id for w in workers]))
        return real(workers, trace, policy, **kwargs)

    monkeypatch.setattr(sweep, "replay", recording)
    assert sweep.main(["--traces", "heavy_user", "--trace-seeds", "", "--worker-orders", "0,3"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["trace"], r["worker_order"]) for r in rows] == [("heavy_user", 0), ("heavy_user", 3)]
    # Order 0 is the workers file's (no shuffle); every other order shuffles, for both policies.
    assert [(name, order) for name, order, _ in seen] == [("fifo", None), ("farm", None), ("fifo", 3), ("farm", 3)]
    # fifo's own p95 moves with the order (the figure the docs give for how much), and the ratio is of these.
    assert rows[0]["wait_p95_s"]["fifo"] != rows[1]["wait_p95_s"]["fifo"]
    for row in rows:
        assert row["p95_vs_fifo"] == round(row["wait_p95_s"]["farm"] / row["wait_p95_s"]["fifo"], 3)
        assert row["light_worst_p95_s"]["farm"] > 0 and row["light_worst_p95_s"]["fifo"] > 0
        # All light users' jobs pooled: no higher than the worst light user's own p95.
        for name in ("farm", "fifo"):
            assert 0 < row["light_p95_s"][name] <= row["light_worst_p95_s"][name]
        assert row["loads_vs_fifo"] > 0 and row["makespan_vs_fifo"] > 0
        # No schedule ends before the work bound, and the two ratios agree with the one between them.
        bound = row["makespan_vs_bound"]
        assert bound["farm"] >= 1.0 and bound["fifo"] >= 1.0
        assert bound["farm"] / bound["fifo"] == pytest.approx(row["makespan_vs_fifo"], abs=2e-4)


def test_a_tunable_set_for_the_run_moves_placements_and_is_put_back(sweep, capsys):
    from farm.scheduler import policy

    shipped = policy.MIN_PATIENCE_S
    args = ["--traces", "heavy_user", "--trace-seeds", ""]
    assert sweep.main(args) == 0
    before = json.loads(capsys.readouterr().out)
    # Next to no patience: jobs stop waiting for GPUs that hold their model, so more loads.
    assert sweep.main(args + ["--set", "MIN_PATIENCE_S=0.001,PATIENCE_LOADS=0"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["set"] == {"MIN_PATIENCE_S": 0.001, "PATIENCE_LOADS": 0.0} and before["set"] == {}
    assert after["rows"][0]["loads_vs_fifo"] > before["rows"][0]["loads_vs_fifo"]
    assert policy.MIN_PATIENCE_S == shipped


@pytest.mark.parametrize("bad, why", [("NO_SUCH_TUNABLE=1", "not a numeric tunable"),
                                      ("place=1", "not a numeric tunable"),
                                      ("MIN_PATIENCE_S=soon", "not a number")])
def test_a_bad_setting_is_refused_by_name(sweep, bad, why):
    with pytest.raises(SystemExit, match=why):
        sweep.main(["--traces", "heavy_user", "--trace-seeds", "", "--set", bad])


def test_the_light_users_pooled_p95_counts_their_jobs_only(sweep):
    from farm.scheduler.fifo import place_fifo
    from farm.scheduler.simulator import TraceJob, WorkerSpec

    worker = WorkerSpec(id="w", vram_gb=24.0, load_gbps=100.0, speed=1.0, families=frozenset({"sdxl"}))

    def image(t, user):
        return TraceJob(t=t, user=user, model="m", model_gb=1.0, family="sdxl", width=512, height=512, steps=10, step_s=1.0)

    # 60 images of a campaign at once, then one light image: fifo makes it wait for the whole campaign.
    trace = [image(0.0, "campaign") for _ in range(sweep.LIGHT_JOBS)] + [image(1.0, "ana")]
    metrics = sweep.replay([worker], trace, place_fifo, policy_name="fifo")
    ana = metrics["users"]["ana"]
    assert ana["jobs"] == 1 and metrics["light_wait_p95_s"] == ana["wait_p95_s"] > 500
    assert sweep.replay([worker], trace[:-1], place_fifo, policy_name="fifo")["light_wait_p95_s"] is None


def test_the_families_sum_up_the_rows_per_trace_family(sweep):
    def row(trace, p95, light, makespan, misses):
        return {"trace": trace, "p95_vs_fifo": p95, "makespan_vs_fifo": makespan, "loads_vs_fifo": 0.2,
                "light_p95_s": {"farm": light, "fifo": 10.0}, "makespan_vs_bound": {"farm": makespan, "fifo": 1.0},
                "deadline_misses": {"farm": misses, "fifo": 2 * misses}}

    rows = [row("deadlines", 1.2, 9.0, 1.01, 1), row("deadlines@1", 1.0, 12.0, 0.99, 2), row("deadlines@1", 1.05, 10.5, 1.0, 0),
            row("mixed@2", 0.9, 8.0, 1.02, 0)]
    summary = sweep.summarize(rows)
    assert set(summary) == {"deadlines", "mixed"}
    deadlines = summary["deadlines"]
    assert deadlines["runs"] == 3 and deadlines["p95_over_1_1"] == 1 and deadlines["p95_vs_fifo_max"] == 1.2
    assert deadlines["p95_vs_fifo_median"] == 1.05
    assert deadlines["light_p95_over_1_1"] == 1 and deadlines["light_p95_vs_fifo_max"] == 1.2
    assert deadlines["makespan_over_fifo"] == 1 and deadlines["makespan_vs_bound_max"] == {"farm": 1.01, "fifo": 1.0}
    assert deadlines["deadline_misses"] == {"farm": 3, "fifo": 6}
    assert summary["mixed"]["runs"] == 1 and summary["mixed"]["makespan_over_fifo"] == 1


def test_seed_lists_take_ranges_and_refuse_what_they_cannot_read(sweep):
    assert sweep.seed_list("1,5-7, 11-11") == [1, 5, 6, 7, 11]
    assert sweep.seed_list("") == []
    for bad in ("1-", "a", "20-11", "3-x", "-2"):
        with pytest.raises(SystemExit, match="neither a seed"):
            sweep.seed_list(bad)


def test_the_deadlines_bench_takes_tunables_for_the_run_and_puts_them_back(monkeypatch, capsys):
    from farm.scheduler import policy

    monkeypatch.syspath_prepend(str(BENCH))
    deadlines = load_bench_script("scheduler_deadlines")
    shipped = policy.DEADLINE_BOOST_S
    deadlines.main(["--trace-seeds", ""])
    lifted = json.loads(capsys.readouterr().out)["shipped"]["farm"]
    # No lift: the deadline campaigns no longer go ahead of anyone, and miss more.
    deadlines.main(["--trace-seeds", "", "--set", "DEADLINE_BOOST_S=0"])
    unlifted = json.loads(capsys.readouterr().out)["shipped"]["farm"]
    assert unlifted["deadline_misses"] > lifted["deadline_misses"]
    assert policy.DEADLINE_BOOST_S == shipped
