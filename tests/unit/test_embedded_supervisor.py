"""`farm up`'s worker supervisor: restarts a dead worker with a growing delay,
and never during shutdown. Real child processes stand in for the worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from farm import embedded
from farm.settings import Settings


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None)


def start_child(code: str):
    return lambda settings: subprocess.Popen([sys.executable, "-c", code])


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_worker_that_keeps_dying_is_restarted_with_a_doubling_delay(monkeypatch, capsys, settings):
    monkeypatch.setattr(embedded, "start_worker_process", start_child("raise SystemExit(3)"))
    monkeypatch.setattr(embedded, "RESTART_DELAY_FIRST_S", 0.05)
    monkeypatch.setattr(embedded, "RESTART_DELAY_MAX_S", 0.2)
    stop = threading.Event()
    supervisor = embedded.WorkerSupervisor(settings, stop)
    supervisor.start()
    wait_for(lambda: supervisor.restarts >= 5)
    stop.set()
    supervisor.stop_worker()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "worker local-cpu exited with code 3; restarting it in 0.05 s (restart #1)"
    assert [line.split(" in ")[1] for line in lines[:5]] == [
        "0.05 s (restart #1)", "0.1 s (restart #2)", "0.2 s (restart #3)", "0.2 s (restart #4)", "0.2 s (restart #5)"]


def test_shutdown_stops_the_worker_and_starts_no_other(monkeypatch, capsys, settings):
    started: list[subprocess.Popen] = []

    def start_sleeper(settings):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    monkeypatch.setattr(embedded, "start_worker_process", start_sleeper)
    stop = threading.Event()
    supervisor = embedded.WorkerSupervisor(settings, stop)
    supervisor.start()
    stop.set()
    supervisor.stop_worker()  # terminates the child, which the supervisor then sees exit
    assert len(started) == 1 and started[0].poll() is not None
    assert not supervisor._thread.is_alive()
    assert "restarting" not in capsys.readouterr().out


def test_the_delay_starts_over_after_a_worker_stayed_up(monkeypatch, capsys, settings):
    monkeypatch.setattr(embedded, "start_worker_process", start_child("import time; time.sleep(0.1); raise SystemExit(3)"))
    monkeypatch.setattr(embedded, "RESTART_DELAY_FIRST_S", 0.05)
    monkeypatch.setattr(embedded, "RESTART_DELAY_RESET_AFTER_S", 0.1)  # every child here stays up that long
    stop = threading.Event()
    supervisor = embedded.WorkerSupervisor(settings, stop)
    supervisor.start()
    wait_for(lambda: supervisor.restarts >= 3)
    stop.set()
    supervisor.stop_worker()
    lines = capsys.readouterr().out.splitlines()
    assert all(" in 0.05 s " in line for line in lines), lines
