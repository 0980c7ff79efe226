"""The small HTTP server of `farm scheduler` and `farm worker` on
``FARM_METRICS_PORT``: ``/metrics`` (prometheus_client's text output,
behind ``FARM_METRICS_TOKEN`` when set), ``/healthz/live`` and
``/healthz/ready`` (200 or 503 with a JSON reason), for Prometheus and for
Kubernetes probes.

The standard library's threading HTTP server is enough: a scrape or a probe
every few seconds, answered from memory. The process says what live and
ready mean through two callables that return ``(ok, detail)``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from farm.metrics import render_latest

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def scrape_allowed(expected: str | None, authorization: str) -> bool:
    """Whether an ``Authorization`` header may read /metrics: always when no
    token is set, else only ``Bearer <token>`` (compared in constant time)."""
    if not expected:
        return True
    return hmac.compare_digest(authorization.encode(), f"Bearer {expected}".encode())


class MetricsServer:
    """Serves on a daemon thread from :meth:`start` until :meth:`stop`."""

    def __init__(self, host: str, port: int, live: Check, ready: Check, token: str | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if not scrape_allowed(outer.token, self.headers.get("Authorization", "")):
                        self._answer(401, "application/json", json.dumps({"error": {
                            "code": "unauthorized", "message": "send Authorization: Bearer <FARM_METRICS_TOKEN>",
                            "details": None}}).encode(), {"WWW-Authenticate": "Bearer"})
                        return
                    body, content_type = render_latest()
                    self._answer(200, content_type, body)
                elif path in ("/healthz/live", "/healthz/ready"):
                    ok, detail = (outer.live if path.endswith("live") else outer.ready)()
                    self._answer(200 if ok else 503, "application/json",
                                 json.dumps({"status": "ok" if ok else "unavailable", "detail": detail}).encode())
                else:
                    self._answer(404, "application/json", json.dumps({"error": {
                        "code": "not_found", "message": "this port serves /metrics, /healthz/live and /healthz/ready",
                        "details": None}}).encode())

            def _answer(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # probes every few seconds: not worth a log line
                logger.debug("metrics server: " + format, *args)

        self.live, self.ready, self.token = live, ready, token
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="farm-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("metrics and health on port %d", self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_metrics_server(settings, live: Check, ready: Check) -> MetricsServer | None:
    """The server on ``FARM_METRICS_PORT``, started; None when the port is unset."""
    if settings.metrics_port is None:
        return None
    return MetricsServer(settings.metrics_host, settings.metrics_port, live, ready, settings.metrics_token).start()
