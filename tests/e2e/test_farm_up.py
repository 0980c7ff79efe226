"""`farm up` as a user runs it: start, submit through the API, get an image, stop."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
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


@contextlib.contextmanager
def running_farm_up(tmp_path):
    """Start `farm up` on a free port with its own FARM_HOME, wait for its
    banner, and stop it by SIGTERM afterwards (it must exit cleanly)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(tmp_path / "home")
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
    try:
        assert token_seen.wait(180), "".join(farm.lines[-40:])
        farm.token = re.search(r"admin API token: (\S+)", farm.output).group(1)
        yield farm
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
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
