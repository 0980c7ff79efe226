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
