"""API-token authentication: a bearer token, or where an adapter's clients send
it so, HTTP Basic or an x-key header (farm.api.contract.SECURITY_SCHEMES)."""

from __future__ import annotations

import base64
import binascii
import logging

from flask import current_app, g, request

from farm import logs
from farm.api.errors import ApiError
from farm.auth import user_for_token

logger = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def farm_context():
    return current_app.extensions["farm"]


def presented_token(schemes=("bearer",)) -> str | None:
    """The API token the request carries in one of ``schemes`` (see
    farm.api.contract.SECURITY_SCHEMES), or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and "bearer" in schemes and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and "basic" in schemes and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2].strip() or None  # any user name; the token is the password
    if "x-key" in schemes and request.headers.get("x-key", "").strip():
        return request.headers["x-key"].strip()
    if "x-api-key" in schemes and request.headers.get("X-API-KEY", "").strip():
        return request.headers["X-API-KEY"].strip()
    return None


def authenticate(schemes=("bearer",), reads: bool = False):
    """The caller of a declared operation (farm/api/contract.py), from the API
    token it presents in one of ``schemes``; a read-only token is refused for
    methods that write, unless the operation ``reads`` only (a POST that reads)."""
    from farm.api.throttle import current_throttle

    token = presented_token(schemes)
    if token is None:
        ways = {"bearer": "'Authorization: Bearer <token>'", "basic": "HTTP Basic with the token as password",
                "x-key": "'x-key: <token>'", "x-api-key": "'X-API-KEY: <token>'"}
        raise ApiError(401, f"missing API token: send {' or '.join(ways[s] for s in schemes)} (farm users create prints one)")
    # An address that failed too often is answered 429 before its token is looked up.
    attempt = current_throttle().token_check()
    # A transaction: user_for_token records last_used_at (at most once a minute per token).
    with farm_context().db.transaction() as session:
        found = user_for_token(session, token)
    if found is None:
        attempt.failed()
        raise ApiError(401, "invalid or revoked API token")
    user, api_token = found
    if api_token.scope == "read" and request.method not in READ_METHODS and not reads:
        raise ApiError(403, "this token is read-only")
    g.user = user
    logs.bind_fields(user=user.id)  # until the request ends (farm.api.register_log_fields)
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
