"""`farm api --processes N`: N server processes on one port.

The parent checks the port (a taken port fails there, in one line) and holds
it; uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) starts N
children and replaces one that dies. Each child listens on a socket of its
own in the port's SO_REUSEPORT group, and the kernel spreads new connections
over those sockets evenly; on one shared socket, a burst of keep-alive
connections went to whichever child woke first.

Metrics stay right across the processes with prometheus_client's
multiprocess mode: each child writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``, answered by any child, merges
every file (``farm.metrics.render_latest``). The directory is the operator's
when set (emptied at start, as prometheus_client asks), otherwise a private
one made here and removed at exit. It is set in the environment before any
child starts, so prometheus_client is imported after it in every child. The
gauge files of a child that exited are dropped (``mark_process_dead``), so
its live gauges stop counting.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile

from uvicorn.supervisors import multiprocess

from farm.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# prometheus_client's variable (farm.metrics reads it too). This module does
# not import farm.metrics: the parent must create no metric, or it would leave
# files of its own in the directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def build_front():
    """Factory that every child process calls (by import string) to build its
    ASGI app from the environment it inherited."""
    from farm.api import create_app
    from farm.api.server import make_front
    from farm.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    return make_front(app, app.extensions["farm"], settings.api_threads)


class _OwnSocketProcess(multiprocess.Process):
    """uvicorn's child process, serving on a listening socket of its own in
    the port's SO_REUSEPORT group instead of the parent's shared one."""

    def target(self, sockets=None) -> None:  # runs in the child
        from farm.api.server import SERVER_OPTIONS
        from farm.ports import listen_socket

        own = listen_socket(self.config.host, self.config.port, SERVER_OPTIONS["backlog"], reuse_port=True)
        super().target([own])


def _metrics_dir() -> tuple[str, bool]:
    """The multiprocess directory and whether it is private to this run."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        return given, False
    return tempfile.mkdtemp(prefix="farm-api-metrics-"), True


def serve_processes(settings: Settings, host: str, port: int, processes: int) -> None:
    """Serve the api with ``processes`` processes until SIGINT/SIGTERM."""
    import uvicorn
    from prometheus_client.multiprocess import mark_process_dead
    from uvicorn.supervisors import Multiprocess

    from farm.api.server import SERVER_OPTIONS
    from farm.ports import listen_socket

    # A taken port is one line naming --port. The parent then only holds the
    # port (bound in the SO_REUSEPORT group, not listening): each child
    # listens on a socket of its own in that group (_OwnSocketProcess), so
    # the kernel spreads new connections over the children. On one shared
    # socket the first child to wake accepted a whole burst of keep-alive
    # connections (a load balancer's pool) and kept them: two processes
    # served on one core (docs/benchmarks.md, scale-out).
    listen_socket(host, port, SERVER_OPTIONS["backlog"]).close()
    sock = listen_socket(host, port, reuse_port=True, listen=False)
    sock.set_inheritable(True)
    multiprocess.Process = _OwnSocketProcess
    directory, private = _metrics_dir()
    os.environ[MULTIPROC_ENV] = directory

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, telling prometheus_client of every child that exits."""

        def _forget_exited(self, before: set[int]) -> None:
            for pid in before - {process.pid for process in self.processes}:
                mark_process_dead(pid, directory)

        def _pids(self) -> set[int]:
            return {process.pid for process in self.processes if process.pid is not None}

        def keep_subprocess_alive(self) -> None:
            before = self._pids()
            super().keep_subprocess_alive()
            self._forget_exited(before)

        def restart_all(self) -> None:
            before = self._pids()
            super().restart_all()
            self._forget_exited(before)

        def handle_ttou(self) -> None:
            before = self._pids()
            super().handle_ttou()
            self._forget_exited(before)

    config = uvicorn.Config("farm.api.processes:build_front", factory=True, host=host, port=port, workers=processes,
                            **SERVER_OPTIONS)
    try:
        logger.info("farm api: %d processes on %s:%d, metrics merged from %s", processes, host, port, directory)
        supervisor = Supervisor(config, sockets=[sock])
        try:
            supervisor.run()
        finally:
            for pid in supervisor._pids():
                mark_process_dead(pid, directory)
            sock.close()
    finally:
        if private:
            shutil.rmtree(directory, ignore_errors=True)
