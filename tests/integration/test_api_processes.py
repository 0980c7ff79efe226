"""`farm api --processes 2`: two server processes on one port, and /metrics
(answered by either) counts the requests both served (prometheus_client's
multiprocess mode)."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from farm.localcluster import free_port

pytestmark = pytest.mark.integration

ROUTE = "/healthz/live"


def start_api(tmp_path: Path, database_url: str, port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "FARM_HOME": str(tmp_path / "home"), "FARM_DATABASE_URL": database_url, **extra_env}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None) if "PROMETHEUS_MULTIPROC_DIR" not in extra_env else None
    process = subprocess.Popen([sys.executable, "-m", "farm", "api", "--port", str(port), "--processes", "2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if requests.get(f"http://127.0.0.1:{port}{ROUTE}", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            time.sleep(0.3)
    stop(process)
    raise AssertionError("farm api --processes 2 did not answer")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def pids_with(directory: Path, kind: str) -> set[int]:
    return {int(re.search(r"_(\d+)\.db$", path).group(1)) for path in glob.glob(str(directory / f"{kind}_*.db"))}


def scraped_count(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "farm_http_request_duration_seconds_count" and sample.labels["route"] == ROUTE)


def test_metrics_count_the_requests_of_every_process(tmp_path, migrated_postgres_url):
    directory = tmp_path / "prometheus"
    port = free_port()
    process = start_api(tmp_path, migrated_postgres_url, port, {"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        # Both children registered farm_build_info (a live gauge) at start.
        children = pids_with(directory, "gauge_livemax")
        assert len(children) == 2, children
        sent = 1  # start_api's last probe

        def fresh_connection_get(_):
            with requests.Session() as session:
                assert session.get(f"http://127.0.0.1:{port}{ROUTE}", timeout=10).status_code == 200

        # Parallel requests on fresh connections until both processes served some.
        with ThreadPoolExecutor(8) as pool:
            while pids_with(directory, "histogram") != children and sent < 2000:
                list(pool.map(fresh_connection_get, range(40)))
                sent += 40
        assert pids_with(directory, "histogram") == children, "the kernel gave every connection to one process"
        assert scraped_count(port) == sent

        # A child that dies is replaced; its live gauges go, its counts stay.
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (victim in pids_with(directory, "gauge_livemax") or len(pids_with(directory, "gauge_livemax")) < 2) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert victim not in pids_with(directory, "gauge_livemax")
        assert len(pids_with(directory, "gauge_livemax")) == 2
        assert scraped_count(port) == sent
        build = [sample.value for family in text_string_to_metric_families(
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            for sample in family.samples if sample.name == "farm_build_info"]
        assert build == [1.0]
    finally:
        output = stop(process)
    assert process.returncode == 0, output


def test_a_private_metrics_directory_is_removed_at_exit(tmp_path, migrated_postgres_url):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    process = start_api(tmp_path, migrated_postgres_url, port, {"TMPDIR": str(scratch)})
    try:
        made = list(scratch.glob("farm-api-metrics-*"))
        assert len(made) == 1 and list(made[0].glob("*.db"))
        assert scraped_count(port) >= 1
    finally:
        output = stop(process)
    assert process.returncode == 0, output
    assert not list(scratch.glob("farm-api-metrics-*"))
