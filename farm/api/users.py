"""/api/v1/users (admin) and /api/v1/me."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify

from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.security import farm_context
from farm.spec import FieldProblem, RequestError
from farm.auth import UserExistsError, create_user

logger = logging.getLogger(__name__)
bp = Blueprint("users", __name__)


@bp.post("/users")
@declare("Create a user (admin); the answer holds its first API token", {201: schemas.UserCreated},
         auth="admin", body=schemas.UserCreate, errors=(409,))
def create_user_route(body: schemas.UserCreate):
    try:
        with farm_context().db.transaction() as session:
            user, token = create_user(session, body.name, admin=body.role == "admin", team=body.team, password=body.password)
    except UserExistsError as exc:
        raise ApiError(409, str(exc)) from None
    return jsonify({"id": user.id, "name": user.name, "role": user.role, "token": token}), 201


@bp.get("/me")
@declare("Who the token belongs to, with quota limits, usage and what remains", {200: schemas.MeView})
def me():
    from farm.services.quotas import me_report

    user = g.user
    with farm_context().db.session() as session:
        report = me_report(session, user)
    return jsonify({
        "user": {"id": user.id, "name": user.name, "role": user.role, "team": user.team.name if user.team else None},
        "quota": {"user": report["user"], "team": report["team"]},
        "usage": report["usage"],
        "remaining": report["remaining"],
    })


@bp.put("/users/<user_id>/quota")
@declare("Set a user's quota (admin); null or absent = unlimited", {200: schemas.QuotaView}, auth="admin",
         path=schemas.UserPath, body=schemas.QuotaLimits)
def set_user_quota(user_id: int, body: schemas.QuotaLimits):
    from farm.services.quotas import quota_view, set_quota

    return jsonify(quota_view(set_quota(farm_context(), "user", user_id, body.model_dump(exclude_none=True))))


@bp.put("/teams/<team_id>/quota")
@declare("Set a team's quota (admin); null or absent = unlimited", {200: schemas.QuotaView}, auth="admin",
         path=schemas.TeamPath, body=schemas.QuotaLimits)
def set_team_quota(team_id: int, body: schemas.QuotaLimits):
    from farm.services.quotas import quota_view, set_quota

    return jsonify(quota_view(set_quota(farm_context(), "team", team_id, body.model_dump(exclude_none=True))))


@bp.get("/usage")
@declare("Usage per user, team, model and/or day (admin); format=csv for a spreadsheet",
         {200: Answer(schemas.UsageReport, media={"text/csv": {"type": "string"}})}, auth="admin", query=schemas.UsageQuery)
def usage(query: schemas.UsageQuery):
    """Usage per user, team, model and/or day; ?format=csv for a spreadsheet."""
    import datetime as dt

    from farm.models import utcnow
    from farm.services.quotas import usage_report

    def parse_time(name: str, value: str | None, default: dt.datetime) -> dt.datetime:
        if not value:
            return default
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise RequestError([FieldProblem(name, "must be an ISO date or time, e.g. 2026-11-01")], status=400) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)

    now = utcnow()
    since = parse_time("since", query.since, now - dt.timedelta(days=30))
    until = parse_time("until", query.until, now + dt.timedelta(seconds=1))
    group_by = query.group_by.split(",")
    rows = usage_report(farm_context(), group_by, since, until)
    if query.format == "csv":
        return usage_csv(rows, group_by)
    return jsonify({"since": since.isoformat(), "until": until.isoformat(), "group_by": group_by, "rows": rows})


def usage_csv(rows: list[dict], group_by: list[str]):
    """Usage rows as a CSV attachment (the API's ?format=csv and the dashboard's export)."""
    import io

    from flask import Response

    from farm.csvsafe import SafeDictWriter

    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, fieldnames=[*group_by, "images", "gpu_seconds"])
    writer.writeheader()
    writer.writerows(rows)
    return Response(buffer.getvalue(), mimetype="text/csv", headers={"Content-Disposition": "attachment; filename=usage.csv"})
