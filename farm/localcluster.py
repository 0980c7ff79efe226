"""Start a real farm on this machine as separate processes: api, scheduler and
workers against given Postgres, Redis and S3 endpoints, plus a throwaway
Postgres database and an S3-protocol server on loopback when none is given.

Used by the end-to-end tests and the benchmarks; nothing here is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from farm.lifeline import die_with_parent

logger = logging.getLogger(__name__)

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------- Postgres


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def temporary_postgres_database(admin_url: str | None = None):
    """A fresh database for one test run; dropped afterwards (we created it)."""
    import psycopg

    admin_url = _psycopg_url(admin_url or os.environ.get("FARM_TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    name = f"farm_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------- S3


@contextlib.contextmanager
def s3_endpoint():
    """FARM_TEST_S3_ENDPOINT (a MinIO) if set, else moto's S3 server on loopback."""
    given = os.environ.get("FARM_TEST_S3_ENDPOINT")
    if given:
        yield given, os.environ.get("FARM_TEST_S3_ACCESS_KEY", "minioadmin"), os.environ.get("FARM_TEST_S3_SECRET_KEY", "minioadmin")
        return
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _responds(endpoint), 30, what="the S3 server")
        yield endpoint, "farm-test", "farm-test-secret"
    finally:
        process.terminate()
        process.wait(10)


def _responds(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


# ---------------------------------------------------------------------- processes


@dataclass
class FarmProcess:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class LocalCluster:
    """Environment and processes of one farm."""

    home: Path
    env: dict[str, str]
    api_port: int
    processes: list[FarmProcess] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def farm(self, *args: str, check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "farm", *args], env={**self.env, **(extra_env or {})},
                                capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise RuntimeError(f"farm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> FarmProcess:
        log_path = self.home / f"{name}.log"
        handle = open(log_path, "wb")
        # A test process killed before its teardown (a timeout, ^C twice) left
        # api, scheduler and workers running: the kernel now stops them with
        # it. Only from the main thread, which lives as long as the process:
        # the signal fires when the thread that forked the child ends.
        from_main = threading.current_thread() is threading.main_thread()
        process = subprocess.Popen([sys.executable, "-m", "farm", *args], env={**self.env, **(extra_env or {})},
                                   stdout=handle, stderr=subprocess.STDOUT, preexec_fn=die_with_parent if from_main else None)
        started = FarmProcess(name, process, log_path)
        self.processes.append(started)
        return started

    def start_api(self) -> FarmProcess:
        process = self.start("api", "api", "--host", "127.0.0.1", "--port", str(self.api_port))
        wait_until(lambda: _healthy(self.api_url) or not process.alive(), 60, what="farm api")
        if not process.alive():
            raise RuntimeError(f"farm api exited:\n{process.log()}")
        return process

    def start_worker(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> FarmProcess:
        return self.start(f"worker-{name}", "worker", "--name", name, *args, extra_env=extra_env)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def cluster_env(home: Path, database_url: str, broker_url: str, s3: tuple[str, str, str], bucket: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
    env.update(
        FARM_HOME=str(home),
        FARM_DATABASE_URL=database_url,
        FARM_BROKER_URL=broker_url,
        FARM_S3_ENDPOINT=s3[0],
        FARM_S3_ACCESS_KEY=s3[1],
        FARM_S3_SECRET_KEY=s3[2],
        FARM_S3_BUCKET=bucket,
        FARM_LOG_LEVEL="INFO",
        # Its own Redis namespace: clusters running at once on one Redis
        # would otherwise take each other's render messages.
        FARM_REDIS_NAMESPACE=f"farm-test-{uuid.uuid4().hex[:8]}:",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"FARM_{key.upper()}": str(value) for key, value in extra.items()})
    return env


def worker_is_online(api_url: str, token: str, name: str) -> bool:
    response = requests.get(f"{api_url}/api/v1/workers", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return any(w["id"] == name and w["state"] == "online" and w["heartbeat_age_s"] < 5 for w in response.json()["workers"])
