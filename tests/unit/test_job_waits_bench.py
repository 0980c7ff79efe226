"""bench/scheduler_job_waits.py: a user's jobs one by one, with the GPUs the policy left empty while they waited."""

from __future__ import annotations

import json

import pytest

from farm.scheduler.simulator import TraceJob, WorkerSpec
from tests.support.bench_scripts import BENCH, load_bench_script


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports make_traces
    return load_bench_script("scheduler_job_waits")


def gpu(wid):
    return WorkerSpec(id=wid, vram_gb=24.0, load_gbps=2.0, speed=1.0, families=frozenset({"sdxl"}))


def image(t, user, steps):
    return TraceJob(t=t, user=user, model="m", model_gb=2.0, family="sdxl", width=512, height=512, steps=steps, step_s=1.0)


def test_a_short_job_takes_the_empty_gpu_rather_than_wait_for_the_busy_holder(bench):
    # A long render loads the model on one GPU; a short image for the same
    # model arrives a second later. The empty GPU would stay idle while the
    # image waited for the busy holder, so both policies load the model there
    # at once (a 1 s load), and no GPU was left empty while it waited.
    trace = [image(0.0, "studio", 100), image(1.0, "ana", 5)]
    rows = bench.job_waits([gpu("a"), gpu("b")], trace, "ana", 0.0, 10.0)
    assert [row["t"] for row in rows] == [1.0]
    (row,) = rows
    assert row["wait_s"]["farm"] < 2.0 and row["wait_s"]["fifo"] < 2.0
    assert row["empty_idle_gpus_max"] == 0
    # On one GPU the image waits for the only GPU there is, which is not empty.
    (alone,) = bench.job_waits([gpu("a")], trace, "ana", 0.0, 10.0)
    assert alone["wait_s"]["farm"] > 90.0 and alone["empty_idle_gpus_max"] == 0
    # A GPU that holds nothing and cannot take the image (no SDXL pipeline) is counted while it waits.
    sd_only = WorkerSpec(id="sd", vram_gb=24.0, load_gbps=2.0, speed=1.0, families=frozenset({"sd"}))
    (beside,) = bench.job_waits([gpu("a"), sd_only], trace, "ana", 0.0, 10.0)
    assert beside["wait_s"]["farm"] > 90.0 and beside["empty_idle_gpus_max"] == 1
    assert bench.job_waits([gpu("a"), gpu("b")], trace, "ana", 2.0, 10.0) == []  # outside the window


def test_the_command_names_a_user_the_trace_lacks(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--trace", "heavy_user", "--user", "nobody"])
    assert "--user: 'nobody' sends no job in the heavy_user trace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--trace", "nope", "--user", "x"])
    assert "--trace: no trace 'nope'" in capsys.readouterr().err


def test_the_command_prints_the_rows(bench, capsys):
    user = json.loads((BENCH / "traces" / "heavy_user.jsonl").read_text().splitlines()[0])["user"]
    assert bench.main(["--trace", "heavy_user", "--user", user, "--until", "60"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user"] == user and out["jobs"] and all(row["t"] < 60 for row in out["jobs"])
