"""bench/cpu.py: cores used between two readings, with process groups whose members come and go."""

from __future__ import annotations

from tests.support.bench_scripts import load_bench_script


def test_a_group_member_that_ended_is_not_counted_negative_and_a_new_one_counts_from_zero():
    cpu = load_bench_script("cpu")
    before = {"api": 10.0, "postgres (all)": {1: 50.0, 2: 7.0}, "machine": 100.0, "wall": 0.0}
    # Between the readings: the api used 1 s, backend 2 closed, backend 3 opened and used 0.5 s.
    after = {"api": 11.0, "postgres (all)": {1: 50.5, 3: 0.5}, "machine": 103.0, "wall": 2.0}
    cores = cpu.CpuMeter.cores(before, after)
    assert cores["api"] == 0.5
    assert cores["postgres (all)"] == 0.5
    assert cores["machine"] == 1.5
    assert cores["rest of the machine"] == 0.5
