"""`farm up` as a user runs it: start, submit through the API, get an image, stop."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image

from farm.localcluster import free_port

pytestmark = pytest.mark.e2e


@dataclass
class FarmUp:
    process: subprocess.Popen
    env: dict
    port: int
    lines: list[str] = field(default_factory=list)
    token: str = ""

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def render(self, prompt: str) -> dict:
        """Submit a 128 x 128 job through the API and wait for its final state."""
        session = self.session()
        base = f"http://127.0.0.1:{self.port}/api/v1"
        created = session.post(f"{base}/jobs", json={"prompt": prompt, "width": 128, "height": 128}, timeout=30)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        for _ in range(60):
            job = session.get(f"{base}/jobs/{job_id}", params={"wait": 5}, timeout=30).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
        return job


def farm_up_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def start_farm_up(env: dict, port: int | None = None) -> FarmUp:
    """Start `farm up` and wait for its banner (the caller stops it)."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "farm", "up", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    farm = FarmUp(process=process, env=env, port=port)
    token_seen = threading.Event()

    def read_output():
        for line in process.stdout:
            farm.lines.append(line)
            if line.lstrip().startswith("try:"):
                token_seen.set()

    threading.Thread(target=read_output, daemon=True).start()
    if not token_seen.wait(180):
        process.kill()
        raise AssertionError("".join(farm.lines[-40:]))
    farm.token = re.search(r"admin API token: (\S+)", farm.output).group(1)
    return farm


@contextlib.contextmanager
def running_farm_up(tmp_path):
    """Start `farm up` on a free port with its own FARM_HOME, wait for its
    banner, and stop it by SIGTERM afterwards (it must exit cleanly)."""
    farm = start_farm_up(farm_up_env(tmp_path))
    try:
        yield farm
    finally:
        farm.process.send_signal(signal.SIGTERM)
        code = farm.process.wait(60)
    assert code == 0, "".join(farm.lines[-30:])
    assert "farm is stopping" in farm.output


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc, Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The name in parentheses may hold spaces; the parent pid is the second field after it.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def test_farm_up_serves_a_demo_image(tmp_path):
    with running_farm_up(tmp_path) as farm:
        assert f"http://127.0.0.1:{farm.port}/" in farm.output
        assert "random weights" in farm.output  # the demo model is labelled as such
        job = farm.render("a lighthouse at dawn")
        assert job["status"] == "succeeded", f"{job}\n{''.join(farm.lines[-30:])}"
        image = farm.session().get(f"http://127.0.0.1:{farm.port}{job['outputs'][0]['url']}", timeout=30)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (128, 128)
        # The scheduler runs in the api's process: the api's /metrics shows its figures too.
        scraped = requests.get(f"http://127.0.0.1:{farm.port}/metrics", timeout=30).text
        assert 'component="scheduler"' in scraped and 'component="api"' in scraped
        assert re.search(r'^farm_scheduler_assignments_total\{model="[^"]+"\} [1-9]', scraped, flags=re.M), scraped
        # The CLI finds the saved token and address by itself.
        out = subprocess.run([sys.executable, "-m", "farm", "submit", "a second image", "--wait", "--out", str(tmp_path / "out")],
                             env=farm.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        saved = out.stdout.strip().splitlines()[-1]
        assert saved.endswith(".png") and Image.open(saved).format == "PNG"


def test_farm_up_restarts_a_worker_that_dies(tmp_path):
    with running_farm_up(tmp_path) as farm:
        [worker_pid] = child_pids(farm.process.pid)
        os.kill(worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarting it" not in farm.output:
            assert time.monotonic() < deadline, "".join(farm.lines[-30:])
            time.sleep(0.1)
        assert re.search(rf"worker local-cpu exited with code -{signal.SIGKILL:d}; restarting it .*\(restart #1\)", farm.output)
        # The new worker takes the job (render() waits at most 60 x 5 s).
        job = farm.render("a lighthouse after the restart")
        assert job["status"] == "succeeded", f"{job}\n{''.join(farm.lines[-30:])}"
        [new_pid] = child_pids(farm.process.pid)
        assert new_pid != worker_pid


def gone(pid: int) -> bool:
    """No such process, or only its zombie left for init to reap."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def workers_started_by(pid: int) -> list[int]:
    """Worker processes started by `farm up` ``pid``, wherever they were re-parented."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in command and str(pid).encode() in command and b"--parent-pid" in command and not gone(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_a_taken_port_is_one_line_naming_port_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = farm_up_env(tmp_path)
        process = subprocess.Popen([sys.executable, "-m", "farm", "up", "--port", str(port)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert err.strip() == f"Error: port {port} on 127.0.0.1 is in use; pick another with --port", err
    assert "Traceback" not in out + err
    # Bound before anything else: no migration, no demo model, no worker.
    assert not (tmp_path / "home").exists()
    assert workers_started_by(process.pid) == []


def test_the_worker_does_not_outlive_a_killed_farm_up(tmp_path):
    farm = start_farm_up(farm_up_env(tmp_path))
    [worker_pid] = child_pids(farm.process.pid)
    try:
        farm.process.kill()
        farm.process.wait(30)
        # The worker's clean stop (finish or hand back, go offline) is allowed its time.
        wait_until(lambda: gone(worker_pid), 90, f"worker {worker_pid} outlived farm up\n{farm.output[-3000:]}")
    finally:
        if not gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_a_restart_keeps_the_token_and_starts_quietly(tmp_path):
    # Short heartbeats: without marking the previous worker offline, the
    # scheduler would call it lost before the new worker has registered.
    env = farm_up_env(tmp_path, FARM_HEARTBEAT_S="0.5", FARM_HEARTBEAT_TIMEOUT_S="2")
    first = start_farm_up(env)
    wait_until(lambda: "worker local-cpu registered" in first.output, 120, first.output[-3000:])
    [worker_pid] = child_pids(first.process.pid)
    # A crash of the whole farm: the worker dies without going offline, then
    # farm up, before its supervisor starts another worker.
    os.kill(worker_pid, signal.SIGKILL)
    first.process.kill()
    first.process.wait(30)
    wait_until(lambda: workers_started_by(first.process.pid) == [], 30, "a worker of the first run is left")

    second = start_farm_up(env)
    try:
        wait_until(lambda: "worker local-cpu registered" in second.output, 120, second.output[-3000:])
        time.sleep(3)  # past the heartbeat timeout of 2 s: the scheduler has reaped once
        before_registered = second.output.split("worker local-cpu registered")[0]
        token_file = tmp_path / "home" / "token"
        assert second.token == first.token
        assert f"kept in {token_file}" in second.output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        me = second.session().get(f"http://127.0.0.1:{second.port}/api/v1/me", timeout=30)
        assert me.status_code == 200 and me.json()["user"]["name"] == "admin"
        for noise in ("torchvision", "alembic", "No hostname was supplied", "-------------- [queues]"):
            assert noise not in second.output, second.output
        assert "workers lost" not in before_registered, second.output
    finally:
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(60) == 0


def test_a_second_farm_up_on_the_same_home_is_refused(tmp_path):
    with running_farm_up(tmp_path) as farm:
        second = subprocess.run([sys.executable, "-m", "farm", "up", "--port", str(free_port())], env=farm.env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert second.stderr.strip() == (f"Error: another farm up (pid {farm.process.pid}) is using {tmp_path / 'home'}; "
                                         "stop it, or give this one its own FARM_HOME"), second.stderr
        # The first farm is untouched: its one worker still renders.
        assert len(child_pids(farm.process.pid)) == 1
        job = farm.render("still served")
        assert job["status"] == "succeeded", f"{job}\n{''.join(farm.lines[-30:])}"
