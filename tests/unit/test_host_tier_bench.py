"""bench/host_tier.py and bench/host_tier_sim.py run end to end and report both sides of their comparison."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.bench_scripts import BENCH, load_bench_script


def test_the_load_bench_compares_disk_and_tier_loads_at_tiny_scale():
    done = subprocess.run([sys.executable, str(BENCH / "host_tier.py"), "--scale", "tiny", "--repeat", "1"],
                          capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(done.stdout)
    assert report["scale"] == "tiny" and report["model_gb"] > 0
    assert report["disk"]["median_s"] > 0 and report["host_tier"]["median_s"] > 0
    assert report["disk_over_tier"] == round(report["disk"]["median_s"] / report["host_tier"]["median_s"], 1)


def test_the_simulator_bench_runs_each_trace_without_and_with_the_tier(capsys):
    bench = load_bench_script("host_tier_sim")
    assert bench.main(["--traces", "heavy_user", "--policies", "fifo", "--ram-cache-gb", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    run = report["traces"]["heavy_user"]["fifo"]
    assert run["without"]["host_loads"] == 0 and run["with"]["host_loads"] > 0
    assert run["with"]["load_s"] < run["without"]["load_s"]
    for side in ("without", "with"):
        assert run[side]["vram_overcommits"] == run[side]["invalid_assignments"] == 0
