"""`farm up`: the whole farm on one machine with no external service.

SQLite, a local directory store and kombu's filesystem transport live under
FARM_HOME. The api and the scheduler run in this process; one CPU worker runs
as a child process (one pipeline per worker process), restarted by a
supervisor thread if it dies. An offline demo model with random weights is
written on first start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from farm.settings import Settings

logger = logging.getLogger(__name__)

DEMO_MODEL_ID = "demo-tiny-sd"
DEMO_NOTE = "offline demo model: random weights, its images are noise"
ADMIN_NAME = "admin"
TOKEN_NAME = "farm-up"
WORKER_NAME = "local-cpu"
# A worker that dies at start would otherwise be restarted in a tight loop.
RESTART_DELAY_FIRST_S = 1.0
RESTART_DELAY_MAX_S = 30.0
RESTART_DELAY_RESET_AFTER_S = 60.0  # up this long: the next crash starts over at the first delay


def prepare_home(settings: Settings) -> str:
    """Migrate, write and register the demo model, mark this farm's previous
    worker offline, and return the admin token (kept across restarts)."""
    from farm.auth import create_user, revoke_tokens
    from farm.context import build_context
    from farm.db import upgrade_database
    from farm.models import ModelEntry, User
    from farm.registry import add_model

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    ctx = build_context(settings)
    demo_dir = settings.resolved_model_cache / DEMO_MODEL_ID
    if not (demo_dir / "model_index.json").is_file():
        from farm.workers.tiny import write_tiny_model  # imports diffusers: only when needed

        logger.info("writing the offline demo model to %s", demo_dir)
        write_tiny_model(demo_dir, family="sd", seed=0)
    with ctx.db.transaction() as session:
        if session.get(ModelEntry, DEMO_MODEL_ID) is None:
            add_model(session, DEMO_MODEL_ID, str(demo_dir), family="sd", description=DEMO_NOTE, default_steps=8)
        admin = session.execute(select(User).where(User.name == ADMIN_NAME)).scalar_one_or_none()
        if admin is None:
            admin, _ = create_user(session, ADMIN_NAME, admin=True)
            revoke_tokens(session, admin, "default")
        token = keep_admin_token(session, admin, token_path(settings))
        retire_previous_worker(session, settings.max_attempts)
    ctx.db.dispose()
    return token


def token_path(settings: Settings) -> Path:
    return settings.home / "token"


def keep_admin_token(session, admin, path: Path) -> str:
    """The token saved at ``path`` while it still signs in as the admin with
    full scope; otherwise the admin's earlier `farm up` tokens are revoked and
    a new one is saved (mode 0600). A `$TOKEN` exported once keeps working."""
    from farm.auth import issue_token, revoke_tokens, user_for_token

    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    found = user_for_token(session, saved) if saved else None
    if found is not None and found[0].id == admin.id and found[1].scope == "full":
        path.chmod(0o600)
        return saved
    revoke_tokens(session, admin, TOKEN_NAME)
    token = issue_token(session, admin, name=TOKEN_NAME)
    # Created 0600 (never readable by others, even for a moment); chmod for a file that was there.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    path.chmod(0o600)
    logger.info("issued a new admin token, saved in %s", path)
    return token


def retire_previous_worker(session, max_attempts: int) -> None:
    """The last run's worker child is gone (this farm owns the name): mark it
    offline and hand its jobs back now, before the scheduler's first pass,
    instead of letting the scheduler declare it lost a heartbeat timeout later."""
    from sqlalchemy import update

    from farm import states
    from farm.models import Job, JobStatus, Worker, utcnow

    worker = session.get(Worker, WORKER_NAME)
    if worker is None or worker.state == "offline":
        return
    session.execute(update(Worker).where(Worker.id == WORKER_NAME).values(state="offline", loaded_models=[], host_models=[], updated_at=utcnow()))
    held = session.execute(select(Job.id, Job.attempt).where(
        Job.worker_id == WORKER_NAME, Job.status.in_([JobStatus.assigned.value, JobStatus.running.value]))).all()
    for row in held:
        states.requeue_job(session, row.id, row.attempt, f"farm up restarted while worker {WORKER_NAME} held it",
                           max_attempts, charge=False)
    logger.info("worker %s of the previous run marked offline; %d job(s) back in the queue", WORKER_NAME, len(held))


def start_worker_process(settings: Settings) -> subprocess.Popen:
    """The worker child. It never outlives this process: the kernel sends it
    SIGTERM when the forking thread ends (farm/lifeline.py), and it watches
    this pid itself. Call from a thread that lives as long as the child should:
    the main thread, or the supervisor's, which waits on the child."""
    from farm.lifeline import die_with_parent

    env = dict(os.environ, FARM_HOME=str(settings.home))
    command = [sys.executable, "-m", "farm", "worker", "--name", WORKER_NAME, "--vram-gb", "8", "--preload", DEMO_MODEL_ID,
               "--parent-pid", str(os.getpid())]
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)


class WorkerSupervisor:
    """Keeps the worker child running: when it exits while the farm is not
    stopping, says so on stdout and starts another after a growing delay.

    Nothing else would: the worker is the only consumer of its queue, and a
    dead one left jobs waiting until `farm up` was restarted (issue 17).
    """

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.restarts = 0
        # Held while starting a child, so that stop_worker never misses one.
        self._lock = threading.Lock()
        self.process = start_worker_process(settings)
        self._thread = threading.Thread(target=self._watch, name="farm-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        delay = RESTART_DELAY_FIRST_S
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self.stop.is_set():
                return
            if time.monotonic() - started >= RESTART_DELAY_RESET_AFTER_S:
                delay = RESTART_DELAY_FIRST_S
            self.restarts += 1
            print(f"worker {WORKER_NAME} exited with code {code}; restarting it in {delay:g} s (restart #{self.restarts})", flush=True)
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, RESTART_DELAY_MAX_S)
            with self._lock:
                if self.stop.is_set():
                    return
                self.process = start_worker_process(self.settings)

    def stop_worker(self) -> None:
        """Stop the current child; call after setting ``stop``."""
        with self._lock:
            process = self.process
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        self._thread.join(timeout=5)


def run_embedded(settings: Settings, host: str, port: int) -> None:
    from farm.ports import listen_socket

    if not settings.embedded or settings.broker_url or settings.s3_endpoint:
        raise ValueError("farm up runs the embedded farm; unset FARM_DATABASE_URL, FARM_BROKER_URL and FARM_S3_ENDPOINT")
    # Bound before anything starts: a taken port is one line (AddressInUseError)
    # with no worker, thread or migration behind it.
    sock = listen_socket(host, port)
    try:
        with home_lock(settings.home):
            _serve(settings, host, port, sock)
    finally:
        sock.close()


class HomeInUseError(Exception):
    """Another `farm up` runs on this FARM_HOME."""


@contextlib.contextmanager
def home_lock(home: Path):
    """Hold FARM_HOME/farm-up.lock for this run. Two farms on one home would
    share a database, a broker folder and the worker name `local-cpu`, and
    each start marks the other's worker offline; the second is refused."""
    try:
        import fcntl
    except ImportError:  # no flock here: nothing to hold
        yield
        return
    home.mkdir(parents=True, exist_ok=True)
    path = home / "farm-up.lock"
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            raise HomeInUseError(f"another farm up (pid {holder}) is using {home}; stop it, "
                                 "or give this one its own FARM_HOME") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _serve(settings: Settings, host: str, port: int, sock) -> None:
    from farm.api import create_app
    from farm.api.server import make_server
    from farm.context import build_context
    from farm.events import LocalEvents
    from farm.scheduler.service import CeleryDispatcher, Scheduler
    from farm.workers.celery_app import create_celery

    # The worker is another process and cannot wake this one: poll briskly
    # (a cheap query on a local SQLite file).
    settings = Settings(**{**settings.model_dump(), "scheduler_poll_s": min(settings.scheduler_poll_s, 0.05)})
    token = prepare_home(settings)
    url = f"http://{host}:{port}/"
    (settings.home / "api-url").write_text(url.rstrip("/") + "\n")

    ctx = build_context(settings, events=LocalEvents(live_dir=settings.home / "live"))
    stop = threading.Event()
    scheduler = Scheduler(ctx, CeleryDispatcher(create_celery(settings)))
    scheduler_thread = threading.Thread(target=scheduler.run, args=(stop,), name="farm-scheduler", daemon=True)
    scheduler_thread.start()
    server = make_server(create_app(settings, context=ctx), ctx, host, port, settings.api_threads, sock=sock)

    def shut_down(*_):
        raise KeyboardInterrupt  # unwinds server.run() into the clean-up below

    signal.signal(signal.SIGTERM, shut_down)
    # Started once nothing but serving is left to fail, so that the finally
    # below always stops it. Forked from this (the main) thread, which lives
    # until the child is stopped: PR_SET_PDEATHSIG follows the forking thread.
    worker = WorkerSupervisor(settings, stop)
    worker.start()
    print(f"farm is up (embedded, data in {settings.home})", flush=True)
    print(f"  dashboard:       {url}", flush=True)
    print(f"  API:             {url}api/v1", flush=True)
    print(f"  admin API token: {token}", flush=True)
    print(f"                   (kept in {token_path(settings)}; the same after a restart)", flush=True)
    print(f"  demo model:      {DEMO_MODEL_ID} ({DEMO_NOTE})", flush=True)
    print('  try:             farm submit "a lighthouse at dawn" --wait', flush=True)
    print("  stop:            Ctrl-C", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        print("farm is stopping", flush=True)
        stop.set()
        worker.stop_worker()
        scheduler_thread.join(timeout=5)
