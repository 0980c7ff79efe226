"""/api/v1/tokens: create (the token is shown once), list, revoke."""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify

from farm.api import schemas
from farm.api.contract import Answer, declare
from farm.api.errors import ApiError
from farm.api.security import farm_context
from farm.services import tokens as token_service

logger = logging.getLogger(__name__)
bp = Blueprint("tokens", __name__)

def _iso(value):
    return value.isoformat() if value else None


def token_view(info: token_service.TokenInfo) -> dict:
    return {"id": info.id, "name": info.name, "prefix": info.prefix, "scope": info.scope, "created_at": _iso(info.created_at),
            "last_used_at": _iso(info.last_used_at), "revoked_at": _iso(info.revoked_at)}


@bp.post("/tokens")
@declare("Create an API token for yourself (admins: for any user); the token is shown once", {201: Answer(
    schemas.TokenCreated, "Created", links={"RevokeToken": ("DELETE /api/v1/tokens/{token_id}", {"token_id": "$response.body#/id"})})},
         body=schemas.TokenCreate, errors=(404, 409))
def create_token(body: schemas.TokenCreate):
    try:
        row, plain = token_service.create_token(farm_context(), g.user, user_id=body.user, name=body.name,
                                                scope=body.scope, actor_scope=g.token_scope)
    except token_service.ForbiddenError as exc:
        raise ApiError(403, str(exc)) from None
    return jsonify({"id": row.id, "name": row.name, "prefix": row.prefix, "scope": row.scope, "token": plain}), 201


@bp.get("/tokens")
@declare("Your tokens, revoked ones included (admins: user=ID for another's); never the token or its hash",
         {200: schemas.TokenList}, query=schemas.TokenListQuery, errors=(403, 404))
def list_tokens(query: schemas.TokenListQuery):
    infos = token_service.list_tokens(farm_context(), g.user, query.user)
    return jsonify({"tokens": [token_view(info) for info in infos]})


@bp.delete("/tokens/<token_id>")
@declare("Revoke a token (your own; admins: any)", {200: schemas.TokenView}, path=schemas.TokenPath, errors=(409,))
def revoke_token(token_id: int):
    return jsonify(token_view(token_service.revoke_token(farm_context(), g.user, str(token_id))))
