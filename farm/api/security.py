"""Bearer-token authentication for the API."""

from __future__ import annotations

import logging

from flask import current_app, g, request

from farm.api.errors import ApiError
from farm.auth import user_for_token

logger = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def farm_context():
    return current_app.extensions["farm"]


def authenticate():
    """The caller of a declared operation (farm/api/contract.py), from its bearer token."""
    from farm.api.throttle import current_throttle

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API token: send 'Authorization: Bearer <token>' (farm users create prints one)")
    # An address that failed too often is answered 429 before its token is looked up.
    attempt = current_throttle().token_check()
    # A transaction: user_for_token records last_used_at (at most once a minute per token).
    with farm_context().db.transaction() as session:
        found = user_for_token(session, token.strip())
    if found is None:
        attempt.failed()
        raise ApiError(401, "invalid or revoked API token")
    user, api_token = found
    if api_token.scope == "read" and request.method not in READ_METHODS:
        raise ApiError(403, "this token is read-only")
    g.user = user
    g.token_scope = api_token.scope
    return user


def json_body():
    """The request's JSON, checked by farm.safejson: 400 for what is not JSON
    (or nests too deeply), 422 naming the field for NaN, huge integers, NUL."""
    from farm.safejson import UnsafeJSONError, loads
    from farm.spec import FieldProblem, RequestError

    if not request.is_json:
        raise ApiError(415, "send a JSON body with Content-Type: application/json")
    try:
        return loads(request.get_data(cache=True))
    except UnsafeJSONError as exc:
        if exc.malformed:
            raise ApiError(400, f"malformed request: the body is {exc.message}", [{"field": "body", "message": exc.message}]) from None
        raise RequestError([FieldProblem(exc.field, exc.message)]) from None
