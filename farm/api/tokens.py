"""/api/v1/tokens: create (the token is shown once), list, revoke."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request

from farm.api.errors import ApiError
from farm.api.security import farm_context, json_body, require_user
from farm.services import tokens as token_service
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)
bp = Blueprint("tokens", __name__)

CREATE_FIELDS = frozenset({"name", "scope", "user"})


def _iso(value):
    return value.isoformat() if value else None


def token_view(info: token_service.TokenInfo) -> dict:
    return {"id": info.id, "name": info.name, "prefix": info.prefix, "scope": info.scope, "created_at": _iso(info.created_at),
            "last_used_at": _iso(info.last_used_at), "revoked_at": _iso(info.revoked_at)}


@bp.post("/tokens")
@require_user
def create_token():
    payload = json_body()
    if not isinstance(payload, dict):
        raise RequestError([FieldProblem("body", "must be a JSON object")])
    problems = [FieldProblem(field, "unknown field") for field in sorted(set(payload) - CREATE_FIELDS)]
    user_id = payload.get("user")
    if user_id is not None and (not isinstance(user_id, int) or isinstance(user_id, bool)):
        problems.append(FieldProblem("user", "must be a user id (an integer)"))
    if problems:
        raise RequestError(problems)
    try:
        row, plain = token_service.create_token(
            farm_context(), g.user, user_id=user_id, name=payload.get("name", "default"),
            scope=payload.get("scope", "full"), actor_scope=g.token_scope,
        )
    except token_service.ForbiddenError as exc:
        raise ApiError(403, str(exc)) from None
    return jsonify({"id": row.id, "name": row.name, "prefix": row.prefix, "scope": row.scope, "token": plain}), 201


@bp.get("/tokens")
@require_user
def list_tokens():
    user = request.args.get("user")
    try:
        user_id = int(user) if user is not None else None
    except ValueError:
        raise ApiError(400, "user must be a user id (an integer)") from None
    infos = token_service.list_tokens(farm_context(), g.user, user_id)
    return jsonify({"tokens": [token_view(info) for info in infos]})


@bp.delete("/tokens/<token_id>")
@require_user
def revoke_token(token_id: str):
    return jsonify(token_view(token_service.revoke_token(farm_context(), g.user, token_id)))
