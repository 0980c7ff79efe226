"""/api/v1/users (admin) and /api/v1/me."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify

from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body, require_admin, require_user
from farm.auth import UserExistsError, create_user

logger = logging.getLogger(__name__)
bp = Blueprint("users", __name__)


@bp.post("/users")
@require_admin
def create_user_route():
    payload = json_body()
    name = payload.get("name") if isinstance(payload, dict) else None
    role = payload.get("role", "member") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ApiError(422, "name is required: 1 to 64 characters", [{"field": "name", "message": "required"}])
    if role not in ("admin", "member"):
        raise ApiError(422, "role must be 'admin' or 'member'", [{"field": "role", "message": "admin or member"}])
    unknown = set(payload) - {"name", "team", "role", "password"}
    if unknown:
        raise ApiError(422, f"unknown fields: {', '.join(sorted(unknown))}")
    try:
        with farm_context().db.transaction() as session:
            user, token = create_user(session, name, admin=role == "admin", team=payload.get("team"), password=payload.get("password"))
    except UserExistsError as exc:
        raise ApiError(409, str(exc)) from None
    return jsonify({"id": user.id, "name": user.name, "role": user.role, "token": token}), 201


@bp.get("/me")
@require_user
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


@bp.put("/users/<int:user_id>/quota")
@require_admin
def set_user_quota(user_id: int):
    from farm.services.quotas import quota_view, set_quota

    return jsonify(quota_view(set_quota(farm_context(), "user", user_id, json_body())))


@bp.put("/teams/<int:team_id>/quota")
@require_admin
def set_team_quota(team_id: int):
    from farm.services.quotas import quota_view, set_quota

    return jsonify(quota_view(set_quota(farm_context(), "team", team_id, json_body())))


@bp.get("/usage")
@require_admin
def usage():
    """Usage per user, team, model and/or day; ?format=csv for a spreadsheet."""
    import datetime as dt

    from flask import request

    from farm.models import utcnow
    from farm.services.quotas import usage_report

    def parse_time(name: str, default: dt.datetime) -> dt.datetime:
        value = request.args.get(name)
        if not value:
            return default
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(400, f"{name} must be an ISO date or time, e.g. 2026-11-01") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)

    now = utcnow()
    since = parse_time("since", now - dt.timedelta(days=30))
    until = parse_time("until", now + dt.timedelta(seconds=1))
    group_by = [g for g in request.args.get("group_by", "user").split(",") if g]
    rows = usage_report(farm_context(), group_by, since, until)
    if request.args.get("format") == "csv":
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
