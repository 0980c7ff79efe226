"""/healthz, /healthz/live, /healthz/ready and /metrics, and the request
timing behind ``farm_http_request_duration_seconds``.

/metrics is prometheus_client's text output of this process (every api
process's in ``farm api --processes N``; under ``farm up`` also the
scheduler's, which runs in the same process). A scrape reads no table: the
queue gauges are the scheduler's, filled from its pass snapshot.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, jsonify, request
from sqlalchemy import text

from farm.api.security import farm_context
from farm.metrics import HTTP_REQUEST_SECONDS, note_build_info, render_latest
from farm.metrics_server import scrape_allowed

logger = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

# Methods counted under their own name; anything else a client invents is
# 'other', so the method label stays bounded.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def _database_reached() -> bool:
    try:
        with farm_context().db.session() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        logger.warning("health check failed: %s", exc)
        return False
    return True


@bp.get("/healthz")
@bp.get("/healthz/ready")
def ready():
    """Ready to serve: the database answers."""
    if not _database_reached():
        return jsonify({"status": "unavailable", "database": "down"}), 503
    return jsonify({"status": "ok", "database": "up"})


@bp.get("/healthz/live")
def live():
    """The process answers; nothing outside it is asked (a restart would not
    bring an unreachable database back)."""
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics():
    if not scrape_allowed(farm_context().settings.metrics_token, request.headers.get("Authorization", "")):
        response = jsonify({"error": {"code": "unauthorized", "message": "send Authorization: Bearer <FARM_METRICS_TOKEN>",
                                      "details": None}})
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, 401
    body, content_type = render_latest()
    return Response(body, content_type=content_type)


def instrument_requests(app: Flask) -> None:
    """Time every request Flask answers, by URL rule, method and status, and
    say which farm version this api runs (``farm_build_info``)."""
    note_build_info("api")

    @app.before_request
    def _start_clock():
        g.farm_request_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.pop("farm_request_started", None)
        if started is not None:
            rule = request.url_rule
            method = request.method if request.method in KNOWN_METHODS else "other"
            HTTP_REQUEST_SECONDS.labels(route=rule.rule if rule is not None else UNMATCHED, method=method,
                                        status=str(response.status_code)).observe(time.perf_counter() - started)
        return response
