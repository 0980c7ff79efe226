"""A child process that never outlives its parent (`farm up`'s worker).

Two layers, because neither alone covers every case:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` set in the child between fork
  and exec (:func:`die_with_parent`), so the kernel signals the child as soon
  as its parent dies, SIGKILL included. The signal fires when the *thread*
  that forked the child ends (prctl(2)), so the parent must fork from a
  thread that lives as long as the child should.
- Everywhere: the child watches its parent's pid (:func:`watch_parent`) and
  stops itself when the parent is gone (it was re-parented). This also
  covers the moment between fork and prctl, and systems without prctl.

SIGTERM is the worker's own clean stop (finish or hand back the job, go
offline); if that does not end the process within its grace, it exits hard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_GET_PDEATHSIG = 2
_SIGTERM = int(signal.SIGTERM)  # a plain int: nothing to convert after fork
WATCH_INTERVAL_S = 0.5


def die_with_parent() -> None:
    """``preexec_fn`` of the child: ask the kernel for SIGTERM when the parent
    dies. Does nothing where prctl is missing (the watcher still works).

    Runs between fork and exec, so it only calls async-signal-safe things:
    libc was loaded by the parent (see :data:`_LIBC`)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0)


def _pdeathsig() -> int:
    """The signal this process gets when its parent dies (0: none)."""
    if _LIBC is None:
        return 0
    value = ctypes.c_int(0)
    _LIBC.prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded once in the parent: dlopen between fork and exec is not safe.
_LIBC = _load_libc()


def watch_parent(parent_pid: int, grace_s: float, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Stop this process when ``parent_pid`` is no longer its parent: SIGTERM
    to itself (the clean stop), and after ``grace_s`` more an immediate exit."""

    # Armed and the parent still there: the kernel sends SIGTERM itself.
    kernel_signals = os.getppid() == parent_pid and _pdeathsig() == _SIGTERM

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        logger.warning("parent process %d is gone; stopping", parent_pid)
        if not kernel_signals:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        logger.error("still running %.0fs after the parent died; exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="farm-lifeline", daemon=True)
    thread.start()
    return thread
