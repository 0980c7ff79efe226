"""JSON errors: ``{"error": {"code", "message", "details"}}``, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from farm.db import classify_database_error, describe_database_error
from farm.retry import ServiceError, ServicePermanentError

from farm.services.jobs import ConflictError, NotFoundError
from farm.services.quotas import QuotaExceededError
from farm.services.tokens import ForbiddenError
from farm.spec import RequestError

logger = logging.getLogger(__name__)

# Seconds a client should wait before trying again during an outage: the
# database comes back from a restart within about a second; the store's
# clients already retried for FARM_STORAGE_RETRY_S.
DATABASE_RETRY_AFTER_S = 1
STORAGE_RETRY_AFTER_S = 5

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "validation_error", 429: "quota_exceeded",
          503: "unavailable", 504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, details=None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.code = code or _CODES.get(status, "error")


def error_response(status: int, message: str, details=None, code: str | None = None):
    body = {"error": {"code": code or _CODES.get(status, "error"), "message": message, "details": details}}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.details, exc.code)

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError):
        message = "the request needs fixing: " + "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
        return error_response(exc.status, message, [p.as_dict() for p in exc.problems])

    @app.errorhandler(QuotaExceededError)
    def _quota(exc: QuotaExceededError):
        response, status = error_response(429, str(exc), {"limit": exc.limit, "owner": exc.owner, **exc.details})
        # Chosen per limit by the quota service (farm/services/quotas.py).
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response, status

    @app.errorhandler(NotFoundError)
    def _not_found(exc: NotFoundError):
        return error_response(404, str(exc))

    @app.errorhandler(ConflictError)
    def _conflict(exc: ConflictError):
        return error_response(409, str(exc))

    @app.errorhandler(ForbiddenError)
    def _forbidden(exc: ForbiddenError):
        return error_response(403, str(exc))

    def _database_down(exc: Exception):
        if classify_database_error(exc) is None:
            return _unexpected(exc)
        logger.warning("database unavailable: %s", describe_database_error(exc))
        response, status = error_response(503, "the database is unavailable; try again shortly")
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response, status

    for database_error in (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError):
        app.register_error_handler(database_error, _database_down)

    @app.errorhandler(ServiceError)
    def _service_down(exc: ServiceError):
        logger.warning("%s", exc)
        if isinstance(exc, ServicePermanentError):
            # Retry-After too: clients back off the same way while an operator fixes it.
            response, status = error_response(503, f"the {exc.service} refuses the farm; an operator must fix it: {exc}")
        else:
            response, status = error_response(503, f"the {exc.service} is unavailable; try again shortly")
        response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_S)
        return response, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if request.blueprint is None and not g.get("farm_native_error"):
            # No view ran (no such route, or not with this method): under an
            # adapter's URLs its client reads the error in its own shape. The
            # adapter's handler asks this one for farm's status and message,
            # hence the flag.
            from farm.api.adapters import routing_error_handler

            adapter = routing_error_handler(app, request.path)
            if adapter is not None:
                g.farm_native_error = True
                try:
                    return adapter(exc)
                finally:
                    g.farm_native_error = False
        status = exc.code or 500
        messages = {
            400: "malformed request: the body is not valid JSON" if "JSON" in (exc.description or "") else exc.description,
            404: "no such endpoint; see /api/v1/openapi.json",
            405: "method not allowed on this endpoint",
            413: "the request body is too large",
        }
        response, status = error_response(status, messages.get(status) or exc.description or exc.name)
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details", code="internal")
