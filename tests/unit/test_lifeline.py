"""farm/lifeline.py: a child never outlives its parent, by the kernel's
parent-death signal and by its own watch on the parent's pid, each tested
alone with real processes (parent -> child; the parent is SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from farm import lifeline

# The "parent": starts the child, prints its pid, then waits to be killed.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from farm.lifeline import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(os.getpid())], {preexec})
    print(child.pid, flush=True)
    time.sleep(600)
""")
SLEEPER = "import time; time.sleep(600)"
# Given the parent's pid, as farm up passes it: a parent gone before the
# watch starts is noticed too.
WATCHER = "import sys, time; from farm.lifeline import watch_parent; watch_parent(int(sys.argv[1]), grace_s=5, interval_s=0.05); time.sleep(600)"


def gone(pid: int) -> bool:
    """No such process, or only its zombie left for init to reap."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_parent_and_wait(child_code: str, preexec: str, timeout: float = 30) -> bool:
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(preexec=preexec), "x", child_code],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert not gone(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + timeout
        while not gone(child_pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
    finally:
        if not gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@pytest.mark.skipif(lifeline._LIBC is None, reason="PR_SET_PDEATHSIG is Linux only")
def test_the_kernel_ends_a_child_whose_parent_was_killed():
    assert kill_parent_and_wait(SLEEPER, "preexec_fn=die_with_parent")


def test_a_child_without_the_signal_lives_on():
    # The control: neither layer, and the orphan keeps running.
    assert not kill_parent_and_wait(SLEEPER, "", timeout=3)


def test_a_child_watching_its_parent_stops_when_the_parent_was_killed():
    assert kill_parent_and_wait(WATCHER, "")


# A test process that starts a LocalCluster process, then is killed before
# its teardown could stop it (a pytest timeout, ^C twice).
CLUSTER_PARENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from farm.localcluster import LocalCluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/nowhere"  # farm db wait retries it
    cluster = LocalCluster(home=Path(sys.argv[1]), env=env, api_port=0)
    print(cluster.start("waiter", "db", "wait", "--timeout", "600").process.pid, flush=True)
    time.sleep(600)
""")


def test_local_cluster_processes_end_with_the_test_process(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", CLUSTER_PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        time.sleep(1.0)
        assert not gone(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while not gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child_pid)
    finally:
        if not gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
