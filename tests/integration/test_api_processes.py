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
from farm.metrics import COMPONENT_METRICS

pytestmark = pytest.mark.integration

PROBE = "/healthz/live"
# The requests counted go elsewhere than the start-up probes (one that timed
# out may still be answered, and counted, later).
COUNTED = "/no/such/page"


def start_api(tmp_path: Path, database_url: str, port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "FARM_HOME": str(tmp_path / "home"), "FARM_DATABASE_URL": database_url, **extra_env}
    if "PROMETHEUS_MULTIPROC_DIR" not in extra_env:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "farm", "api", "--port", str(port), "--processes", "2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "farm api --processes 2 exited"
            try:
                # The parent listens at once; the children answer once they have started.
                if requests.get(f"http://127.0.0.1:{port}{PROBE}", timeout=5).status_code == 200:
                    return process
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.3)
        raise AssertionError("farm api --processes 2 did not answer")
    except BaseException:
        print(stop(process))
        raise


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


def pids_counting(directory: Path) -> set[int]:
    """The processes whose own files hold requests to COUNTED."""
    import json

    from prometheus_client.mmap_dict import MmapedDict

    pids = set()
    for pid in pids_with(directory, "histogram"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(directory / f"histogram_{pid}.db")):
            _, sample, labels, *_ = json.loads(key)
            if sample.endswith("_sum") and labels.get("route") == "unmatched" and value > 0:
                pids.add(pid)
    return pids


def scraped_count(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "farm_http_request_duration_seconds_count" and sample.labels["route"] == "unmatched"
               and sample.labels["status"] == "404")


def start_two(tmp_path: Path, database_url: str) -> tuple[subprocess.Popen, Path, int, set[int]]:
    """`farm api --processes 2` with its metrics directory under tmp_path; the
    children's pids are those that registered farm_build_info (a live gauge)."""
    directory = tmp_path / "prometheus"
    port = free_port()
    process = start_api(tmp_path, database_url, port, {"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    children = pids_with(directory, "gauge_livemax")
    if len(children) != 2:
        print(stop(process))
        raise AssertionError(f"two children expected, found {children}")
    return process, directory, port, children


def test_metrics_count_the_requests_of_every_process(tmp_path, migrated_postgres_url):
    process, directory, port, children = start_two(tmp_path, migrated_postgres_url)
    try:
        sent = 0

        def fresh_connection_get(_):
            with requests.Session() as session:
                assert session.get(f"http://127.0.0.1:{port}{COUNTED}", timeout=30).status_code == 404

        # Parallel requests on fresh connections until both processes served some.
        with ThreadPoolExecutor(8) as pool:
            while pids_counting(directory) != children and sent < 2000:
                list(pool.map(fresh_connection_get, range(40)))
                sent += 40
        assert pids_counting(directory) == children, "the kernel gave every connection to one process"
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
        assert requests.get(f"http://127.0.0.1:{port}{COUNTED}", timeout=30).status_code == 404
        assert scraped_count(port) == 1
        # The files also hold the metrics every process creates on import; only the api's are shown.
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert {family.name for family in text_string_to_metric_families(text)} == \
            {metric._name for metric in COMPONENT_METRICS["api"]}
    finally:
        output = stop(process)
    assert process.returncode == 0, output
    assert not list(scratch.glob("farm-api-metrics-*"))


def test_a_taken_port_is_one_line_and_starts_nothing(tmp_path, migrated_postgres_url):
    import socket

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**os.environ, "FARM_HOME": str(tmp_path / "home"), "FARM_DATABASE_URL": migrated_postgres_url,
               "TMPDIR": str(scratch)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        result = subprocess.run([sys.executable, "-m", "farm", "api", "--port", str(port), "--processes", "2"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"port {port}" in result.stderr and "--port" in result.stderr
    assert not list(scratch.glob("farm-api-metrics-*"))


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (state 0A in /proc/net/tcp)."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def test_each_process_listens_on_its_own_socket_so_connections_spread(tmp_path, migrated_postgres_url):
    """A burst of keep-alive connections opened at once (a load balancer's
    pool, wrk) reaches both processes: each child listens on a socket of its
    own in the port's SO_REUSEPORT group. On one inherited socket the first
    child to wake accepted the whole burst (two processes used one core)."""
    process, directory, port, children = start_two(tmp_path, migrated_postgres_url)
    try:
        listening = listening_inodes(port)
        own = {pid: socket_inodes(pid) & listening for pid in children}
        assert all(len(inodes) == 1 for inodes in own.values()), own
        assert len(set().union(*own.values())) == 2, f"the children share one listening socket: {own}"
        assert not socket_inodes(process.pid) & listening, "the parent must hold the port without listening"

        # 32 connections opened together, each then used for a request.
        import socket as sockets

        conns = [sockets.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
        try:
            for conn in conns:
                conn.sendall(f"GET {COUNTED} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for conn in conns:
                assert conn.recv(64).startswith(b"HTTP/1.1 404")
        finally:
            for conn in conns:
                conn.close()
        assert pids_counting(directory) == children, "one process took every connection of the burst"
    finally:
        output = stop(process)
    assert process.returncode == 0, output
