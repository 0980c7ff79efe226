"""Machinery of the fault suite (issue 17): services it can kill, a TCP proxy
in front of S3 it can break, a whole farm started as processes, a client that
records every HTTP status it sees, and the invariant checker.

Everything listens on 127.0.0.1 and every process is started here, stopped
here by its pid, and logged to a file under the test's temporary directory.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import requests

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# farm/scheduler/service.py LEADER_LOCK_KEY ("farm" in ASCII), if it cannot be imported.
LEADER_LOCK_OBJID = 0x6661726D
FINAL = ("succeeded", "failed", "canceled")

# Farm settings of the stack under test (issue 17). The last five are read by
# the farm once the reliability work lands; unknown FARM_ variables are ignored.
FARM_SETTINGS = {
    "heartbeat_s": 1.5,
    "heartbeat_timeout_s": 6,
    "lease_s": 10,
    "scheduler_poll_s": 0.5,
    "progress_interval_s": 0.1,
    "max_attempts": 5,
    "db_retry_s": 30,
    "storage_retry_s": 8,
    "worker_grace_s": 5,
    "orphan_grace_s": 2,
    "janitor_interval_s": 2,
}


# ---------------------------------------------------------------------- small helpers


def listen_port() -> int:
    """A free loopback port below the ephemeral range: a service restarted on
    it later cannot find it taken by some client's outgoing connection."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low, 12000)
    for _ in range(200):
        port = random.randrange(10000, top)
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        with socket.socket() as probe:  # nothing listening there either
            probe.settimeout(0.2)
            if probe.connect_ex((LOOPBACK, port)) != 0:
                return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class Deadline:
    """A point in time; waits take the earlier of their own and the suite's."""

    def __init__(self, seconds: float, cap: float | None = None) -> None:
        end = time.monotonic() + seconds
        self.at = min(end, cap) if cap is not None else end

    @property
    def left(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left <= 0


def wait_for(predicate: Callable[[], object], seconds: float, what: str, interval: float = 0.2, cap: float | None = None):
    deadline = Deadline(seconds, cap)
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a probe of a service that is down
            last_error = exc
        if deadline.passed:
            suffix = f" (last probe error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {seconds:.0f}s waiting for {what}{suffix}")
        time.sleep(min(interval, max(deadline.left, 0.01)))


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


_ROOT_HELPERS: list[Callable[[], None]] = []


def _last_resort_cleanup() -> None:
    for cleanup in reversed(_ROOT_HELPERS):
        with contextlib.suppress(Exception):
            cleanup()


atexit.register(_last_resort_cleanup)


# ---------------------------------------------------------------------- processes


class ManagedProcess:
    """One process we started, in its own session, logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.process.pid
        self.stopped = False  # SIGSTOPped by us
        _ROOT_HELPERS.append(self._emergency_kill)

    def __repr__(self) -> str:
        return f"<{self.name} pid {self.pid}>"

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(10)
        self.stopped = False

    def wait_exit(self, seconds: float) -> int | None:
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then
        SIGKILL of its whole process group if it lingers."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self._emergency_kill()
        self._log.close()

    def _emergency_kill(self) -> None:
        # Only while it is alive (not yet reaped) is its process group surely
        # ours; the group takes any child (none expected) along.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.process.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------- PostgreSQL


class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb), on loopback TCP only.

    Postgres refuses to run as root: as root, every pg command runs as the
    ``postgres`` OS user in a directory owned by it."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or listen_port()
        self.root = Path(tempfile.mkdtemp(prefix="farm-faults-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.log_dir = log_dir
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)
        self.started = False
        _ROOT_HELPERS.append(self._emergency_stop)

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._as_postgres, *argv], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                               f"{tail(self.log(), 20)}")
        return result

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def _options(self) -> str:
        # fsync off is safe here: a crash of postgres (not of the machine)
        # loses nothing the OS already holds. Commits stay synchronous, so an
        # immediate shutdown keeps every acknowledged commit.
        return " ".join([
            f"-p {self.port}", f"-c listen_addresses={LOOPBACK}", f"-c unix_socket_directories={self.root}",
            "-c max_connections=300", "-c fsync=off", "-c full_page_writes=off", "-c log_min_messages=warning",
        ])

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", self._options(), "-w", "-t", "60", "start")
        self.started = True

    def stop_immediate(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        self.started = False

    def restart_immediate(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", "immediate", "-o", self._options(),
                  "-w", "-t", "60", "restart")
        self.started = True

    def running(self) -> bool:
        result = subprocess.run([*self._as_postgres, "pg_ctl", "-D", str(self.data), "status"], capture_output=True,
                                timeout=20, stdin=subprocess.DEVNULL)
        return result.returncode == 0

    def url(self, database: str = "postgres", application_name: str | None = None) -> str:
        url = f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"
        return f"{url}?application_name={application_name}" if application_name else url

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _emergency_stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self._as_postgres, "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        shutil.rmtree(self.root, ignore_errors=True)

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop_immediate()
        finally:
            with contextlib.suppress(OSError):
                shutil.copy(self.log_path, self.log_dir / "postgres.log")
            shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------- Redis


class RedisServer:
    """redis-server without persistence: a restart comes back empty."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or listen_port()
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = ManagedProcess(
            f"redis.{self.starts}",
            [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--protected-mode", "yes"],
            self.log_dir / f"redis.{self.starts}.log",
        )
        wait_for(self.ping, 20, "redis-server to answer PING")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(5)


# ---------------------------------------------------------------------- S3


class MotoServer:
    """moto's S3 server from the venv (as farm.localcluster.s3_endpoint starts it)."""

    access_key = "farm-faults"
    secret_key = "farm-faults-secret"

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or listen_port()
        moto = Path(sys.executable).parent / "moto_server"
        self.process = ManagedProcess("moto", [str(moto), "-H", LOOPBACK, "-p", str(self.port)], log_dir / "moto.log")
        wait_for(self._responds, 60, "the moto S3 server")

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _responds(self) -> bool:
        requests.get(self.endpoint, timeout=1)
        return True

    def client(self):
        from minio import Minio

        return Minio(f"{LOOPBACK}:{self.port}", access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def stop(self) -> None:
        self.process.stop(5)


# ---------------------------------------------------------------------- TCP proxy


class _Connection:
    def __init__(self, proxy: "TcpProxy", client: socket.socket, peer: tuple[str, int], upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.upstream = upstream
        self.pending = {"up": False, "down": False}  # bytes (or EOF) waiting while held
        self.dead = False
        self._finished = 0
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream, "up"), name=f"proxy-up-{peer[1]}", daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client, "down"), name=f"proxy-down-{peer[1]}", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @property
    def held(self) -> bool:
        return not self.dead and (self.pending["up"] or self.pending["down"])

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        proxy = self.proxy
        try:
            while not self.dead:
                try:
                    readable, _, _ = select.select([src], [], [], 0.1)
                except (OSError, ValueError):
                    break
                if not readable:
                    continue
                with proxy._cond:
                    while proxy._mode == "hold" and not self.dead and not proxy._closing:
                        # Leave the bytes in the kernel: the client hangs.
                        self.pending[direction] = True
                        proxy._cond.wait(0.1)
                    self.pending[direction] = False
                    if self.dead or proxy._closing:
                        break
                    proxy._in_flight += 1
                try:
                    data = src.recv(65536)
                    if data:
                        dst.sendall(data)
                except OSError:
                    data = b""
                finally:
                    with proxy._cond:
                        proxy._in_flight -= 1
                        proxy._cond.notify_all()
                if not data:
                    break
        finally:
            self.kill()
            with self._lock:
                self._finished += 1
                last = self._finished == 2
            if last:
                # Only the pumps close the sockets (never a select on a closed fd).
                for sock in (self.client, self.upstream):
                    with contextlib.suppress(OSError):
                        sock.close()
                proxy._forget(self)

    def kill(self) -> None:
        """Cut both sides at once; the pumps wake up and close the sockets."""
        self.dead = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """A loopback TCP proxy with three modes.

    - ``pass``: forward both ways.
    - ``refuse``: stop listening (connects are refused) and cut every open
      connection at once.
    - ``hold``: accept, and forward nothing either way until released; the
      held bytes stay in the kernel, so clients hang and carry on afterwards.
    """

    MODES = ("pass", "refuse", "hold")

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or listen_port()
        self._mode = "pass"
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._accept_stop: threading.Event | None = None
        self._accept_thread: threading.Thread | None = None
        self.accepted = 0
        _ROOT_HELPERS.append(self.close)

    @property
    def address(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def start(self) -> "TcpProxy":
        self._open_listener()
        return self

    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(256)
        stop = threading.Event()
        thread = threading.Thread(target=self._accept_loop, args=(listener, stop), name="proxy-accept", daemon=True)
        self._listener, self._accept_stop, self._accept_thread = listener, stop, thread
        thread.start()

    def _close_listener(self) -> None:
        if self._accept_thread is not None:
            self._accept_stop.set()
            self._accept_thread.join(5)
        self._listener = self._accept_stop = self._accept_thread = None

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                readable, _, _ = select.select([listener], [], [], 0.05)
                if not readable or stop.is_set():
                    continue
                try:
                    client, peer = listener.accept()
                except OSError:
                    continue
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._cond:
                    if self._mode == "refuse" or self._closing:
                        client.close()
                        upstream.close()
                        continue
                    self.accepted += 1
                    self._connections.add(_Connection(self, client, peer, upstream))
        finally:
            listener.close()

    def _forget(self, connection: _Connection) -> None:
        with self._cond:
            self._connections.discard(connection)

    def set_mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        with self._cond:
            previous, self._mode = self._mode, mode
            self._cond.notify_all()
            if mode == "hold":
                # A chunk already read is delivered; nothing after it.
                end = time.monotonic() + 2
                while self._in_flight and time.monotonic() < end:
                    self._cond.wait(0.05)
            if mode != "hold":
                for connection in self._connections:
                    connection.pending = {"up": False, "down": False}
        if mode == "refuse":
            self._close_listener()
            with self._cond:
                connections = list(self._connections)
            for connection in connections:
                connection.kill()
        elif previous == "refuse":
            self._open_listener()
        logger.info("proxy %s: %s -> %s", self.port, previous, mode)

    def connections(self) -> int:
        with self._cond:
            return sum(1 for c in self._connections if not c.dead)

    def held_peers(self) -> list[tuple[str, int]]:
        """Client addresses of connections with bytes waiting behind a hold."""
        with self._cond:
            return [c.peer for c in self._connections if c.held]

    def held_connections(self) -> int:
        return len(self.held_peers())

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._mode = "refuse"
            self._cond.notify_all()
        self._close_listener()
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.kill()
        for connection in connections:
            for thread in connection.threads:
                thread.join(2)


# ---------------------------------------------------------------------- HTTP client


class HttpLog:
    """Every status any client of the suite saw, and the bodies of 5xx."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: collections.Counter = collections.Counter()
        self.server_errors: list[str] = []

    def record(self, method: str, path: str, status, body: str = "") -> None:
        route = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "{id}", path.split("?")[0])
        with self._lock:
            self.statuses[(method, route, status)] += 1
            if isinstance(status, int) and status >= 500 and status != 503:
                self.server_errors.append(f"{method} {path} -> {status}: {body[:300]}")

    def summary(self) -> dict[str, int]:
        with self._lock:
            counts: collections.Counter = collections.Counter()
            for (_, _, status), n in self.statuses.items():
                counts[str(status)] += n
            return dict(counts)


class ApiClient:
    """A REST client as a patient user would write it: 503 and connection
    errors are retried after a short sleep until ``retry_s`` has passed."""

    def __init__(self, base: str, token: str, log: HttpLog, retry_s: float = 60.0, cap: float | None = None) -> None:
        self.base = base
        self.log = log
        self.retry_s = retry_s
        self.cap = cap  # no retry, and no wait, past this moment (the suite's budget)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        # Longer than FARM_DB_RETRY_S: a request the api holds while it
        # retries the database is answered, not abandoned and sent again.
        timeout = kwargs.pop("timeout", 45)
        deadline = Deadline(self.retry_s, self.cap)
        while True:
            try:
                response = self.session.request(method, self.base + path, timeout=min(timeout, max(deadline.left, 3)),
                                                **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self.log.record(method, path, "connection-error")
                if deadline.passed:
                    raise
                logger.info("%s %s: %s; retrying", method, path, exc)
                time.sleep(0.25)
                continue
            self.log.record(method, path, response.status_code, response.text if response.status_code >= 500 else "")
            if response.status_code == 503 and not deadline.passed:
                time.sleep(0.25)
                continue
            return response

    def submit(self, body: dict) -> str:
        response = self.request("POST", "/api/v1/jobs", json=body)
        if response.status_code != 202:
            raise AssertionError(f"POST /api/v1/jobs answered {response.status_code}: {response.text[:500]}")
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = self.request("GET", f"/api/v1/jobs/{job_id}")
        if response.status_code != 200:
            raise AssertionError(f"GET /api/v1/jobs/{job_id} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def unfinished_ids(self) -> set[str]:
        """Ids of this user's queued, assigned and running jobs (one request)."""
        ids: set[str] = set()
        cursor = None
        while True:
            params = {"status": "queued,assigned,running", "limit": 200, **({"cursor": cursor} if cursor else {})}
            response = self.request("GET", "/api/v1/jobs", params=params)
            if response.status_code != 200:
                raise AssertionError(f"GET /api/v1/jobs answered {response.status_code}: {response.text[:500]}")
            page = response.json()
            ids |= {job["id"] for job in page["jobs"]}
            cursor = page.get("next_cursor")
            if not cursor:
                return ids

    def workers(self) -> list[dict]:
        response = self.request("GET", "/api/v1/workers")
        if response.status_code != 200:
            raise AssertionError(f"GET /api/v1/workers answered {response.status_code}: {response.text[:500]}")
        return response.json()["workers"]

    def cancel(self, job_id: str) -> int:
        return self.request("POST", f"/api/v1/jobs/{job_id}/cancel").status_code

    def close(self) -> None:
        self.session.close()


# ---------------------------------------------------------------------- the farm


@dataclasses.dataclass
class BatchJob:
    id: str
    num_images: int
    client: ApiClient
    final: dict | None = None


class FaultStack:
    """PostgreSQL, Redis, moto behind a TcpProxy, and a farm on top: one api,
    two schedulers, three workers serving one tiny model."""

    WORKERS = ("w1", "w2", "w3")

    def __init__(self, root: Path, suite_budget_s: float = 14 * 60) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.suite_end = time.monotonic() + suite_budget_s
        self.processes: list[ManagedProcess] = []
        self.postgres: PostgresCluster | None = None
        self.redis: RedisServer | None = None
        self.moto: MotoServer | None = None
        self.proxy: TcpProxy | None = None
        self.api: ManagedProcess | None = None
        self.schedulers: list[ManagedProcess] = []
        self.workers: dict[str, ManagedProcess] = {}
        self._scheduler_count = 0
        self._starts: collections.Counter = collections.Counter()
        self.bucket = f"farm-faults-{uuid.uuid4().hex[:8]}"
        self.http = HttpLog()  # the stack's own requests (readiness checks)
        self.env: dict[str, str] = {}
        self.database_url = ""
        self._local = threading.local()

    # ------------------------------------------------------------------ budget

    def cap(self, reserve: float = 20.0) -> float:
        """The latest moment a wait may end, keeping time for teardown."""
        return self.suite_end - reserve

    def time_left(self) -> float:
        return self.suite_end - time.monotonic()

    # ------------------------------------------------------------------ start

    def start(self, model_dir: Path, user_count: int = 20) -> None:
        self.postgres = PostgresCluster(self.logs)
        self.postgres.init()
        self.postgres.start()
        self.database_url = self.postgres.create_database("farm")
        self.redis = RedisServer(self.logs)
        self.redis.start()
        self.moto = MotoServer(self.logs)
        self.moto.client().make_bucket(self.bucket)
        self.proxy = TcpProxy((LOOPBACK, self.moto.port)).start()

        from farm.localcluster import cluster_env

        self.env = cluster_env(self.home, self.database_url, self.redis.url,
                               (self.proxy.address, MotoServer.access_key, MotoServer.secret_key), self.bucket,
                               **FARM_SETTINGS)
        self.farm_cli("db", "upgrade")
        self.admin_token = self.create_user("root", admin=True)
        self.token = self.create_user("alice")
        self.farm_cli("models", "add", "tiny", str(model_dir))
        self.api_port = listen_port()
        self.start_api()
        self.start_scheduler()
        self.start_scheduler()
        for name in self.WORKERS:
            self.start_worker(name)
        # The many users of the load scenario, made while the workers load.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            self.user_tokens = list(pool.map(self.create_user, [f"load{i:02d}" for i in range(user_count)]))
        self.admin = ApiClient(self.api_url, self.admin_token, self.http, retry_s=30, cap=self.cap(reserve=10))
        self.wait_workers_ready(Deadline(180, self.cap()))

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def farm_cli(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "farm", *args], env=self.env, capture_output=True, text=True,
                                timeout=120, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"farm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def create_user(self, name: str, admin: bool = False) -> str:
        """``farm users create``; the token is the last line of its output."""
        return self.farm_cli("users", "create", name, *(["--admin"] if admin else [])).stdout.strip().splitlines()[-1]

    def _start_farm(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> ManagedProcess:
        self._starts[name] += 1
        n = self._starts[name]
        log = self.logs / (f"{name}.log" if n == 1 else f"{name}.{n}.log")
        env = {**self.env, **(extra_env or {})}
        # Tell the database who is who (pg_stat_activity.application_name).
        env["FARM_DATABASE_URL"] = self.postgres.url("farm", application_name=f"farm-{name}")
        process = ManagedProcess(name, [sys.executable, "-m", "farm", *args], log, env)
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        self.api = self._start_farm("api", "api", "--host", LOOPBACK, "--port", str(self.api_port))

        def healthy() -> bool:
            if not self.api.alive():
                raise RuntimeError(f"farm api exited:\n{tail(self.api.log())}")
            return requests.get(f"{self.api_url}/healthz", timeout=2).status_code == 200

        wait_for(healthy, 90, "farm api", cap=self.cap())

    def start_scheduler(self) -> ManagedProcess:
        self._scheduler_count += 1
        process = self._start_farm(f"scheduler-{self._scheduler_count}", "scheduler")
        self.schedulers.append(process)
        return process

    def _worker_args(self, name: str) -> tuple[str, ...]:
        return ("worker", "--name", name, "--vram-gb", "4", "--models", "tiny", "--preload", "tiny")

    # One torch thread per worker: three "GPUs" share two cores.
    WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start_worker(self, name: str) -> ManagedProcess:
        process = self._start_farm(f"worker-{name}", *self._worker_args(name), extra_env=self.WORKER_ENV)
        self.workers[name] = process
        return process

    def prepare_worker(self, name: str) -> "WarmWorker":
        """A ``farm worker`` process that has done its imports and waits for
        :meth:`WarmWorker.go` to run the command: on two busy cores the
        imports alone take longer than the heartbeat timeout, and a restart
        within it is the point of the scenario."""
        go_file = self.root / f"go-{name}-{uuid.uuid4().hex[:6]}"
        self._starts[f"worker-{name}"] += 1
        n = self._starts[f"worker-{name}"]
        env = {**self.env, **self.WORKER_ENV, "FAULTS_GO_FILE": str(go_file),
               "FARM_DATABASE_URL": self.postgres.url("farm", application_name=f"farm-worker-{name}")}
        process = ManagedProcess(f"worker-{name}", [sys.executable, "-c", WARM_PRELUDE, *self._worker_args(name)],
                                 self.logs / f"worker-{name}.{n}.log", env)
        self.processes.append(process)
        wait_for(lambda: "imports warm" in process.log() or not process.alive(), 90, f"a warm {name}", cap=self.cap())
        if not process.alive():
            raise RuntimeError(f"the warm {name} exited:\n{tail(process.log())}")
        return WarmWorker(self, name, process, go_file)

    def restart_worker(self, name: str) -> ManagedProcess:
        old = self.workers[name]
        if old.alive():
            old.kill()
        return self.start_worker(name)

    # ------------------------------------------------------------------ views

    def worker_rows(self) -> dict[str, dict]:
        return {w["id"]: w for w in self.admin.workers()}

    def registered_by(self, name: str, process: ManagedProcess) -> bool:
        """The worker row was (re)registered by this process (not an older one)."""
        import datetime as dt

        row = self.worker_rows().get(name)
        if row is None or not row.get("started_at") or row["state"] != "online":
            return False
        return dt.datetime.fromisoformat(row["started_at"]).timestamp() >= process.started_wall - 1

    def worker_ready(self, name: str) -> bool:
        """Online with a fresh heartbeat, registered by the current process,
        and its Celery consumer started (it would take work)."""
        process = self.workers[name]
        if not process.alive() or process.stopped:
            return False
        row = self.worker_rows().get(name)
        if row is None or row["state"] != "online" or row["heartbeat_age_s"] > FARM_SETTINGS["heartbeat_s"] * 2 + 0.5:
            return False
        return self.registered_by(name, process) and " ready." in process.log()

    def wait_workers_ready(self, deadline: Deadline) -> None:
        for name in self.WORKERS:
            process = self.workers[name]

            def ready(name=name, process=process) -> bool:
                if not process.alive():
                    raise RuntimeError(f"worker {name} exited ({process.returncode}):\n{tail(process.log())}")
                return self.worker_ready(name)

            wait_for(ready, max(deadline.left, 1), f"worker {name} to be online", interval=0.3)

    def db(self, sql: str, params: Iterable | dict | None = None) -> list[tuple]:
        """Query the farm's database directly (one connection per thread,
        made again once after a restart of Postgres)."""
        import psycopg

        for again in (True, False):
            conn = getattr(self._local, "conn", None)
            if conn is None or conn.closed:
                conn = self._local.conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    conn.close()
                self._local.conn = None
                if not again:
                    raise
        raise AssertionError("unreachable")

    def leader(self) -> ManagedProcess | None:
        """The scheduler whose database connection holds the leadership
        advisory lock (each farm process names itself in application_name)."""
        try:
            from farm.scheduler.service import LEADER_LOCK_KEY as key
        except ImportError:
            key = LEADER_LOCK_OBJID
        # A lock on a bigint key shows as classid = high half, objid = low half.
        rows = self.db(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        names = {row[0] for row in rows}
        leaders = [s for s in self.schedulers if f"farm-{s.name}" in names and s.alive()]
        return leaders[0] if leaders else None

    def worker_of_peer(self, peer: tuple[str, int]) -> str | None:
        """Which worker process owns the client end of a proxied connection."""
        import psutil

        for name, process in self.workers.items():
            if not process.alive():
                continue
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(process.pid).net_connections(kind="tcp"):
                    if conn.laddr and conn.laddr.port == peer[1] and conn.raddr and conn.raddr.port == self.proxy.port:
                        return name
        return None

    # ------------------------------------------------------------------ restore

    def restore(self, deadline: Deadline) -> list[str]:
        """Bring everything back: services up, proxy passing, one api, two
        schedulers and three ready workers. Returns what had to be done."""
        actions = []
        if self.proxy.mode != "pass":
            self.proxy.set_mode("pass")
            actions.append("proxy back to pass")
        if not self.postgres.running():
            self.postgres.start()
            actions.append("postgres started")
        if not self.redis.running():
            self.redis.start()
            actions.append("redis started")
        if not self.api.alive():
            actions.append(f"api had exited ({self.api.returncode}); restarted")
            self.start_api()
        self.schedulers = [s for s in self.schedulers if s.alive()]
        while len(self.schedulers) < 2:
            actions.append(f"scheduler-{self._scheduler_count + 1} started")
            self.start_scheduler()
        for name, process in list(self.workers.items()):
            if process.stopped and process.alive():
                process.signal(signal.SIGCONT)
                actions.append(f"{name} continued")
            if not process.alive():
                self.start_worker(name)
                actions.append(f"{name} restarted")
        self.wait_workers_ready(deadline)
        return actions

    def stop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.signal(signal.SIGCONT)
        # Terminate farm processes together, then the services.
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                if process.alive():
                    os.kill(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop(timeout=8)
        for stop in (lambda: self.redis and self.redis.stop(), lambda: self.proxy and self.proxy.close(),
                     lambda: self.moto and self.moto.stop(), lambda: self.postgres and self.postgres.destroy()):
            try:
                stop()
            except Exception as exc:
                logger.warning("teardown step failed: %s", exc)


WARM_PRELUDE = """
import os, sys, time
import torch, diffusers, transformers, celery
import farm.cli, farm.context, farm.workers.main, farm.workers.runtime, farm.workers.render, farm.workers.pipelines
import farm.workers.tasks, farm.workers.celery_app
print("faults: imports warm, waiting for the go file", flush=True)
while not os.path.exists(os.environ["FAULTS_GO_FILE"]):
    time.sleep(0.005)
sys.argv = ["farm"] + sys.argv[1:]
farm.cli.main()
"""


@dataclasses.dataclass
class WarmWorker:
    stack: FaultStack
    name: str
    process: ManagedProcess
    go_file: Path

    def go(self) -> ManagedProcess:
        """Run ``farm worker`` in the warmed process; it is the worker now."""
        self.go_file.touch()
        self.process.started_wall = time.time()
        self.stack.workers[self.name] = self.process
        return self.process


# ---------------------------------------------------------------------- invariants


@dataclasses.dataclass
class StoreReport:
    bucket_keys: set[str]
    row_keys: set[str]
    orphans: set[str]
    missing: set[str]
    rows: list[dict]


def store_report(stack: FaultStack) -> StoreReport:
    rows = [
        dict(job_id=str(r[0]), attempt=r[1], index=r[2], object_key=r[3], sidecar_key=r[4], content_sha256=r[5],
             job_attempt=r[6], job_status=r[7], worker=r[8])
        for r in stack.db(
            "SELECT o.job_id, o.attempt, o.index, o.object_key, o.sidecar_key, o.content_sha256, j.attempt, j.status, "
            "o.lineage->'worker'->>'id' FROM outputs o JOIN jobs j ON j.id = o.job_id")
    ]
    row_keys = {r["object_key"] for r in rows} | {r["sidecar_key"] for r in rows}
    client = stack.moto.client()
    bucket_keys = {o.object_name for o in client.list_objects(stack.bucket, prefix="outputs/", recursive=True)}
    return StoreReport(bucket_keys, row_keys, bucket_keys - row_keys, row_keys - bucket_keys, rows)


def read_object(stack: FaultStack, key: str) -> bytes:
    response = stack.moto.client().get_object(stack.bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def job_keys(keys: Iterable[str], job_id: str) -> list[str]:
    return sorted(k for k in keys if f"/{job_id}/" in k)


# ---------------------------------------------------------------------- scenario runs

RESULTS: list[dict] = []
LOG_DIRS: list[Path] = []


def results_path() -> Path:
    return Path(__file__).resolve().parents[2] / "test-artifacts" / "faults" / "reliability.jsonl"


class ScenarioRun:
    """One scenario on the shared stack: its batch, its fault times, its HTTP
    statuses, and at the end the verdict and the record."""

    def __init__(self, stack: FaultStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.http = HttpLog()
        self.jobs: list[BatchJob] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.fault_end: float | None = None
        self.api_back_s: float | None = None
        self.done_at: float | None = None
        self.started = time.monotonic()
        self.log_offsets = {p: p.log_size() for p in stack.processes}
        self.focus: set[str] = set()  # process names whose logs matter most
        self.baseline_orphans = store_report(stack).orphans
        self.client = self.new_client(stack.token)
        self._lock = threading.Lock()
        # A second client keeps asking during the fault, as users would.
        self._observer_stop = threading.Event()
        self._observer = threading.Thread(target=self._observe, name=f"observer {name}", daemon=True)
        self._observer.start()

    def new_client(self, token: str) -> ApiClient:
        return ApiClient(self.stack.api_url, token, self.http, retry_s=60, cap=self.stack.cap(reserve=15))

    def _observe(self) -> None:
        # The admin sees every user's jobs (the load scenario has twenty users).
        client = self.new_client(self.stack.admin_token)
        failures = 0
        while not self._observer_stop.wait(0.5):
            try:
                client.unfinished_ids()
                with self._lock:
                    job = random.choice(self.jobs) if self.jobs else None
                if job is not None:
                    client.job(job.id)
                client.workers()
            except Exception as exc:  # an answer other than 200 after a minute of retries
                failures += 1
                if failures <= 3:
                    self.problems.append(f"a polling client failed: {type(exc).__name__}: {exc}")
        client.close()

    def deadline(self, seconds: float) -> Deadline:
        return Deadline(seconds, self.stack.cap(reserve=60))

    # ------------------------------------------------------------------ batch

    def submit(self, count: int, two_images_every: int = 3, client: ApiClient | None = None, **params) -> list[BatchJob]:
        client = client or self.client
        body = {"model": "tiny", **params}
        submitted = []
        for i in range(count):
            num_images = 2 if two_images_every and i % two_images_every == two_images_every - 1 else 1
            request = {"prompt": f"{self.name} {i}: a lighthouse at dusk", "seed": 1000 + i, "num_images": num_images, **body}
            submitted.append(BatchJob(client.submit(request), num_images, client))
            with self._lock:
                self.jobs.append(submitted[-1])
        return submitted

    def submit_in_background(self, count: int, **params) -> threading.Thread:
        """Submit while the fault lasts (the client retries 503s)."""
        def submit() -> None:
            try:
                self.submit(count, two_images_every=0, **params)
            except Exception as exc:
                self.problems.append(f"a submission during the fault failed: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=submit, name=f"submit during {self.name}", daemon=True)
        thread.start()
        return thread

    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    def job_rows(self, ids: Iterable[str] | None = None) -> dict[str, dict]:
        ids = list(ids or self.ids())
        rows = self.stack.db(
            "SELECT id, status, attempt, worker_id, progress_step, progress_total FROM jobs WHERE id = ANY(%s::uuid[])",
            (ids,))
        return {str(r[0]): dict(status=r[1], attempt=r[2], worker=r[3], step=r[4], total=r[5]) for r in rows}

    def wait_running(self, predicate: Callable[[dict], bool] | None = None, seconds: float = 60,
                     what: str = "a job of the batch to be mid-render", interval: float = 0.05) -> tuple[str, dict]:
        """A (job id, row) of the batch running on a live worker that
        ``predicate`` accepts (default: mid-render, 0 < step < total)."""
        predicate = predicate or (lambda row: 0 < row["step"] < row["total"])

        def find():
            for job_id, row in self.job_rows().items():
                worker = self.stack.workers.get(row["worker"] or "")
                if row["status"] == "running" and worker is not None and worker.alive() and not worker.stopped and predicate(row):
                    return job_id, row
            return None

        return wait_for(find, seconds, what, interval=interval, cap=self.stack.cap(60))

    def fault_ended(self) -> None:
        self.fault_end = time.monotonic()

    def measure_api_back(self, seconds: float = 10.0) -> float | None:
        """Seconds from the end of the fault until the api answers an
        authenticated request (GET /api/v1/me, which reads the database) with
        200, asking every 20 ms without retrying; recorded as api_back_s."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.stack.token}"
        deadline = self.deadline(seconds)
        while not deadline.passed:
            try:
                response = session.get(f"{self.stack.api_url}/api/v1/me", timeout=5)
                self.http.record("GET", "/api/v1/me", response.status_code,
                                 response.text if response.status_code >= 500 else "")
                if response.status_code == 200:
                    self.api_back_s = round(time.monotonic() - self.fault_end, 3)
                    return self.api_back_s
            except requests.RequestException:
                self.http.record("GET", "/api/v1/me", "connection-error")
            time.sleep(0.02)
        self.problems.append(f"the api did not answer 200 within {seconds:.0f}s of the fault's end")
        return None

    def wait_batch(self, seconds: float, jobs: list[BatchJob] | None = None, poll_s: float = 0.3) -> bool:
        """Poll until every job of the batch is final; False at the deadline."""
        jobs = jobs or self.jobs
        deadline = self.deadline(seconds)
        by_client: dict[int, tuple[ApiClient, set[str]]] = {}
        for job in jobs:
            by_client.setdefault(id(job.client), (job.client, set()))[1].add(job.id)
        while True:
            open_ids = set()
            for client, ids in by_client.values():
                open_ids |= client.unfinished_ids() & ids
            if not open_ids:
                self.done_at = time.monotonic()
                return True
            if deadline.passed:
                self.problems.append(f"{len(open_ids)} of {len(jobs)} jobs still unfinished after {seconds:.0f}s: "
                                     + ", ".join(sorted(open_ids)[:5]))
                return False
            time.sleep(poll_s)

    # ------------------------------------------------------------------ verdict

    def finish(self, error: BaseException | None = None) -> dict:
        """Check every invariant, record the result, restore the stack; the
        caller raises AssertionError when ``problems`` is not empty."""
        stack = self.stack
        self._observer_stop.set()
        self._observer.join(70)
        if error is not None:
            self.problems.append(f"scenario stopped by {type(error).__name__}: {error}")
        lost, duplicated, attempt_mismatch = self._check_jobs()
        # Cancel what is left so the next scenario starts with idle workers.
        for job in self.jobs:
            if job.final is None or job.final["status"] not in FINAL:
                with contextlib.suppress(Exception):
                    job.client.cancel(job.id)
        report, waited = self._settled_store()
        new_orphans = report.orphans - self.baseline_orphans
        old_orphans = report.orphans & self.baseline_orphans
        if new_orphans:
            self.problems.append(f"{len(new_orphans)} bucket objects without an output row (after {waited:.0f}s): "
                                 + ", ".join(sorted(new_orphans)[:6]))
        if old_orphans:
            self.notes.append(f"{len(old_orphans)} orphans from earlier scenarios are still in the bucket")
        if report.missing:
            self.problems.append(f"{len(report.missing)} output rows whose object is not in the bucket: "
                                 + ", ".join(sorted(report.missing)[:6]))
        mismatched, doubled = self._check_objects(report)
        attempt_mismatch |= mismatched
        duplicated |= doubled
        self._check_http()
        self._check_api_log()
        tracebacks = self._tracebacks()
        if tracebacks:
            self.notes.append("tracebacks logged: " + ", ".join(f"{name} {n}" for name, n in tracebacks.items()))

        # Back to one api, two schedulers and three ready workers before the
        # next scenario (and before the record, which says what it took).
        try:
            actions = stack.restore(Deadline(150, stack.cap(reserve=25)))
            if actions:
                self.notes.append("restored: " + "; ".join(actions))
        except Exception as exc:
            self.problems.append(f"could not restore the stack: {exc}")

        recovery = None
        if self.done_at is not None and self.fault_end is not None and not lost:
            recovery = round(max(self.done_at - self.fault_end, 0.0), 2)
        record = {
            "scenario": self.name,
            "jobs": len(self.jobs),
            "images": sum(j.num_images for j in self.jobs),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "orphans": len(report.orphans),
            "new_orphans": len(new_orphans),
            "missing_objects": len(report.missing),
            "attempt_mismatch": len(attempt_mismatch),
            "http": self.http.summary(),
            "recovery_s": recovery,
            "api_back_s": self.api_back_s,
            "store_settled_s": round(waited, 1),
            "passed": not self.problems,
            "problems": self.problems[:12],
            "notes": self.notes,
            "wall_s": round(time.monotonic() - self.started, 1),
        }
        RESULTS.append(record)
        path = results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def _check_jobs(self) -> tuple[set[str], set[str], set[str]]:
        lost, duplicated, mismatched = set(), set(), set()
        for job in self.jobs:
            try:
                job.final = job.client.job(job.id)
            except Exception as exc:
                self.problems.append(f"job {job.id}: cannot read it: {exc}")
                lost.add(job.id)
                continue
            final = job.final
            if final["status"] != "succeeded":
                lost.add(job.id)
                self.problems.append(f"job {job.id} ended {final['status']} on attempt {final['attempt']} "
                                     f"(worker {final['worker']}): error={final['error']!r}")
                continue
            outputs = final["outputs"]
            if len(outputs) != job.num_images:
                (duplicated if len(outputs) > job.num_images else lost).add(job.id)
                self.problems.append(f"job {job.id}: {len(outputs)} outputs, expected {job.num_images}")
            if sorted(o["index"] for o in outputs) != list(range(len(outputs))):
                self.problems.append(f"job {job.id}: output indexes {[o['index'] for o in outputs]}")
        return lost, duplicated, mismatched

    def _settled_store(self) -> tuple[StoreReport, float]:
        """The store once bucket keys equal row keys, or at ~30 s (the
        janitor removes orphans after FARM_ORPHAN_GRACE_S)."""
        started = time.monotonic()
        deadline = Deadline(30, self.stack.cap(reserve=45))
        while True:
            report = store_report(self.stack)
            if (not (report.orphans - self.baseline_orphans) and not report.missing) or deadline.passed:
                return report, time.monotonic() - started
            time.sleep(1.0)

    def _check_objects(self, report: StoreReport) -> tuple[set[str], set[str]]:
        """Per job of the batch: its rows belong to its final attempt, its
        bucket holds one image per index, each sidecar names the row's
        attempt and key, each image hashes as recorded."""
        mismatched: set[str] = set()
        duplicated: set[str] = set()
        by_job: dict[str, list[dict]] = collections.defaultdict(list)
        for row in report.rows:
            by_job[row["job_id"]].append(row)
        for job in self.jobs:
            if job.final is None or job.final["status"] != "succeeded":
                continue
            rows = by_job.get(job.id, [])
            if len(rows) != job.num_images:
                if len(rows) > job.num_images:
                    duplicated.add(job.id)
                self.problems.append(f"job {job.id}: {len(rows)} output rows, expected {job.num_images}")
            images = [k for k in job_keys(report.bucket_keys, job.id) if not k.endswith(".json")]
            if len(images) > job.num_images:
                duplicated.add(job.id)
                self.problems.append(f"job {job.id}: {len(images)} images in the bucket for {job.num_images} outputs: {images}")
            for row in rows:
                if row["attempt"] != row["job_attempt"]:
                    mismatched.add(job.id)
                    self.problems.append(f"job {job.id} index {row['index']}: output row of attempt {row['attempt']}, "
                                         f"the job succeeded on attempt {row['job_attempt']}")
                if row["sidecar_key"] in report.bucket_keys:
                    try:
                        sidecar = json.loads(read_object(self.stack, row["sidecar_key"]))
                    except Exception as exc:
                        self.problems.append(f"sidecar {row['sidecar_key']} unreadable: {exc}")
                        continue
                    if sidecar.get("attempt") != row["attempt"] or sidecar.get("object_key") != row["object_key"]:
                        mismatched.add(job.id)
                        self.problems.append(
                            f"sidecar {row['sidecar_key']} says attempt {sidecar.get('attempt')} (worker "
                            f"{(sidecar.get('worker') or {}).get('id')}), key {sidecar.get('object_key')}; its row says "
                            f"attempt {row['attempt']} (worker {row['worker']}), key {row['object_key']}")
                if row["object_key"] in report.bucket_keys:
                    digest = hashlib.sha256(read_object(self.stack, row["object_key"])).hexdigest()
                    if digest != row["content_sha256"]:
                        mismatched.add(job.id)
                        self.problems.append(f"object {row['object_key']} hashes {digest[:12]}, its row says "
                                             f"{row['content_sha256'][:12]}")
        return mismatched, duplicated

    def _check_http(self) -> None:
        if self.http.server_errors:
            self.problems.append(f"{len(self.http.server_errors)} HTTP 5xx other than 503, first: "
                                 + " | ".join(self.http.server_errors[:3]))

    def _check_api_log(self) -> None:
        api = self.stack.api
        text = api.log_since(self.log_offsets.get(api, 0))
        bad = [line for line in text.splitlines() if "unhandled error" in line or "Traceback" in line]
        if bad:
            index = text.find(bad[0])
            self.problems.append(f"the api log has {len(bad)} unhandled error/Traceback line(s):\n{text[index:index + 1500]}")

    def _tracebacks(self) -> dict[str, int]:
        counts = {}
        for process in self.stack.processes:
            n = process.log_since(self.log_offsets.get(process, 0)).count("Traceback")
            if n:
                counts[process.log_path.name] = n
        return counts

    # ------------------------------------------------------------------ evidence

    def evidence(self, lines: int = 14) -> str:
        """Warnings and errors each process logged during the scenario, and
        the last lines of the processes the scenario is about."""
        parts = [f"logs: {self.stack.logs}"]
        interesting = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|refused|re-queued|lost|stopped|Error")
        for process in self.stack.processes:
            text = process.log_since(self.log_offsets.get(process, 0))
            if not text:
                continue
            if process.name in self.focus:
                parts.append(f"--- {process.log_path.name} (last lines)\n{tail(text, lines)}")
            else:
                picked = [line for line in text.splitlines() if interesting.search(line)]
                if picked:
                    parts.append(f"--- {process.log_path.name} (warnings)\n" + "\n".join(picked[-lines:]))
        return "\n".join(parts)


@contextlib.contextmanager
def scenario(stack: FaultStack, name: str, min_budget_s: float = 60):
    import pytest

    if stack.time_left() < min_budget_s:
        RESULTS.append({"scenario": name, "skipped": "suite time budget exhausted"})
        pytest.skip(f"{name}: only {stack.time_left():.0f}s of the suite's budget left")
    run = ScenarioRun(stack, name)
    error = None
    try:
        yield run
    except Exception as exc:  # a wait that timed out, a refused submission
        error = exc
    run.finish(error)
    if run.problems:
        raise AssertionError(f"{name}: " + "\n".join(run.problems) + "\n\n" + run.evidence())


def format_table(results: list[dict]) -> str:
    header = (f"{'scenario':<44} {'jobs':>4} {'lost':>4} {'dup':>4} {'orph':>4} {'miss':>4} {'att':>4} {'recovery_s':>10} "
              f"{'api_back_s':>10}  result")
    lines = [header, "-" * len(header)]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['scenario']:<44} {'':>4} {'':>4} {'':>4} {'':>4} {'':>4} {'':>4} {'':>10} {'':>10}  skipped")
            continue
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        api_back = "-" if r.get("api_back_s") is None else f"{r['api_back_s']:.2f}"
        lines.append(f"{r['scenario']:<44} {r['jobs']:>4} {r['lost']:>4} {r['duplicated']:>4} {r['orphans']:>4} "
                     f"{r['missing_objects']:>4} {r['attempt_mismatch']:>4} {recovery:>10} {api_back:>10}  "
                     f"{'pass' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)
