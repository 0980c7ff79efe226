"""/healthz and /metrics (Prometheus text format)."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import func, select, text

from farm.api.security import farm_context
from farm.models import Job, Worker

logger = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        with farm_context().db.session() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        logger.warning("health check failed: %s", exc)
        return jsonify({"status": "unavailable", "database": "down"}), 503
    return jsonify({"status": "ok", "database": "up"})


@bp.get("/metrics")
def metrics():
    expected = farm_context().settings.metrics_token
    if expected:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            response = jsonify({"error": {"code": "unauthorized", "message": "send Authorization: Bearer <FARM_METRICS_TOKEN>",
                                          "details": None}})
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, 401
    with farm_context().db.session() as session:
        by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        by_state = dict(session.execute(select(Worker.state, func.count()).group_by(Worker.state)).all())
        by_state["draining"] = session.execute(
            select(func.count()).where(Worker.draining, Worker.state == "online")).scalar_one()
    lines = ["# HELP farm_jobs Jobs by status.", "# TYPE farm_jobs gauge"]
    for status in ("queued", "assigned", "running", "succeeded", "failed", "canceled"):
        lines.append(f'farm_jobs{{status="{status}"}} {by_status.get(status, 0)}')
    lines += ["# HELP farm_workers Workers by state.", "# TYPE farm_workers gauge"]
    for state in ("online", "draining", "offline"):
        lines.append(f'farm_workers{{state="{state}"}} {by_state.get(state, 0)}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
