"""bench/standin_workers.py: a stand-in worker holds models the way a real worker's LRU does."""

from __future__ import annotations

from types import SimpleNamespace

from tests.support.bench_scripts import load_bench_script


def worker(total_gb: float, *held: tuple[str, float]):
    return SimpleNamespace(vram_total_gb=total_gb, loaded_models=[{"id": m, "vram_gb": gb} for m, gb in held], vram_free_gb=0.0)


def test_a_new_model_drops_the_least_recently_used_until_it_fits():
    standin = load_bench_script("standin_workers")
    row = worker(24.0, ("a", 10.0), ("b", 10.0))
    standin._hold_model(row, "c", 8.0, evict=[])
    assert [m["id"] for m in row.loaded_models] == ["b", "c"]
    assert row.vram_free_gb == 6.0


def test_using_a_held_model_makes_it_the_most_recent_and_evict_drops_first():
    standin = load_bench_script("standin_workers")
    row = worker(24.0, ("a", 10.0), ("b", 10.0))
    standin._hold_model(row, "a", 10.0, evict=[])
    assert [m["id"] for m in row.loaded_models] == ["b", "a"]
    standin._hold_model(row, "c", 4.0, evict=["a"])
    assert [m["id"] for m in row.loaded_models] == ["b", "c"]
    assert row.vram_free_gb == 10.0
