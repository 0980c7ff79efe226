"""The scale-out benches (issue 21) run end to end on real services at a tiny
size and report what they measured: every stand-in job went through the state
machine to succeeded (the bench raises otherwise), the baselines came back,
and no request failed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_scheduler_throughput_places_every_job_on_stand_in_workers(redis_url):
    report = run_bench("scheduler_throughput.py", "--workers", "6", "--burst", "40", "--rounds", "1", "--rate", "5",
                       "--steady-s", "2", "--redis", redis_url)
    burst, steady = report["burst"], report["steady"]
    assert report["workers"] == 6
    assert burst["jobs_per_s"] > 0 and burst["assignments_per_s"] > 0
    assert burst["baseline_celery_round_trips_per_s"] > 0
    assert burst["passes_per_round"][0] > 0 and burst["scheduler_pass_p50_ms"] is not None
    assert burst["assigned_to_started_p50_ms"] >= 0 and burst["started_to_finished_p50_ms"] >= 0
    # The policy and the sends are parts of the pass.
    parts = burst["pass_parts_p50_ms"]
    assert all(value is not None and value <= burst["scheduler_pass_p99_ms"] for value in parts.values())
    assert steady["queue_wait_p50_ms"] is not None and steady["baseline_round_trip_p50_ms"] is not None
    assert steady["created_to_succeeded_p50_ms"] >= steady["queue_wait_p50_ms"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="bench/api_throughput.py needs wrk (apt-get install wrk)")
def test_api_throughput_measures_each_endpoint_without_errors(redis_url):
    report = run_bench("api_throughput.py", "--processes", "1", "--rounds", "1", "--duration", "1", "--warmup", "1",
                       "--jobs", "5", "--connections", "4", "--redis", redis_url)
    assert report["cpus"] == os.cpu_count()
    assert set(report["endpoints"]) == {"POST /api/v1/jobs", "GET /api/v1/jobs/{id}", "GET /healthz/live"}
    for endpoint, by_count in report["endpoints"].items():
        one = by_count["1 process"]
        assert one["requests"] > 0 and one["errors"] == 0, (endpoint, one)
        assert one["over_1_process"] == 1.0
