"""`farm up` as a user runs it: start, submit through the API, get an image, stop."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import requests
from PIL import Image

from farm.localcluster import free_port

pytestmark = pytest.mark.e2e


def test_farm_up_serves_a_demo_image(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(tmp_path / "home")
    process = subprocess.Popen([sys.executable, "-m", "farm", "up", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    token_seen = threading.Event()

    def read_output():
        for line in process.stdout:
            lines.append(line)
            if line.lstrip().startswith("try:"):
                token_seen.set()

    threading.Thread(target=read_output, daemon=True).start()
    try:
        assert token_seen.wait(180), "".join(lines[-40:])
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in banner
        assert "random weights" in banner  # the demo model is labelled as such
        token = re.search(r"admin API token: (\S+)", banner).group(1)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        base = f"http://127.0.0.1:{port}/api/v1"
        created = session.post(f"{base}/jobs", json={"prompt": "a lighthouse at dawn", "width": 128, "height": 128}, timeout=30)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        for _ in range(60):
            job = session.get(f"{base}/jobs/{job_id}", params={"wait": 5}, timeout=30).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
        assert job["status"] == "succeeded", job
        image = session.get(f"http://127.0.0.1:{port}{job['outputs'][0]['url']}", timeout=30)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (128, 128)
        # The CLI finds the saved token and address by itself.
        out = subprocess.run([sys.executable, "-m", "farm", "submit", "a second image", "--wait", "--out", str(tmp_path / "out")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        saved = out.stdout.strip().splitlines()[-1]
        assert saved.endswith(".png") and Image.open(saved).format == "PNG"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0, "".join(lines[-30:])
    assert "farm is stopping" in "".join(lines)
