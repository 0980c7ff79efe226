"""Errors the way FastAPI services answer them, for the adapters of APIs built
on FastAPI (Fooocus-API, the BFL FLUX API): ``{"detail": "text"}``, and for
a request that fails validation ``{"detail": [{"loc", "msg", "type"}]}``.

farm's own handlers decide the status, the message and the headers
(farm.api.adapters.common.native_error); this module only reshapes their
answer and names each field the way the client spelled it: a view records
which farm field came from which of its client's fields
(:func:`remember_fields`), so "num_images: 9 images; one job makes at most 8"
reaches a Fooocus client as ``loc: ["body", "image_number"]``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, g, jsonify, request
from pydantic import BaseModel, Field

from farm.api.adapters.common import native_error

logger = logging.getLogger(__name__)


class ValidationItem(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is: 'body', 'query' or 'path', then the field's path")
    msg: str
    type: str


class FastApiError(BaseModel):
    """An error as FastAPI answers it: a text, or one item per field to fix."""

    detail: str | list[ValidationItem]


def remember_fields(names: dict[str, str]) -> None:
    """Farm field path (dotted, e.g. ``loras.0.name``) -> the client's field
    path it was translated from, for this request's error answers."""
    g.adapter_fields = {**getattr(g, "adapter_fields", {}), **names}


def client_field(name: str) -> str:
    """The client's name of a farm field: the longest remembered prefix of
    ``name`` replaced by what it came from; unremembered names are kept."""
    names: dict[str, str] = getattr(g, "adapter_fields", {})
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in names:
            return ".".join([names[prefix], *parts[cut:]])
    return name


def _loc(field: str) -> list[str | int]:
    # List indexes as numbers, as FastAPI gives them; ASCII only ('³'.isdigit() holds, int('³') fails).
    parts: list[str | int] = [int(part) if part.isascii() and part.isdigit() else part for part in client_field(field).split(".")]
    if parts == ["body"]:
        return ["body"]
    if field in (request.view_args or {}):
        return ["path", *parts]
    return ["query" if request.method == "GET" else "body", *parts]


def error_body(status: int, message: str, details: Any) -> dict[str, Any]:
    if status in (400, 422) and isinstance(details, list) and details and all(
            isinstance(item, dict) and "field" in item for item in details):
        return {"detail": [{"loc": _loc(item["field"]), "msg": item.get("message", ""), "type": "value_error"}
                           for item in details]}
    return {"detail": message}


def register_error_handlers(bp: Blueprint) -> None:
    """Answer every error of ``bp``'s views in FastAPI's shape, with the status
    and headers (Retry-After, Allow) farm's own handlers chose."""

    @bp.errorhandler(Exception)
    def _fastapi_error(exc: Exception):
        error = native_error(exc)
        return jsonify(error_body(error.status, error.message, error.details)), error.status, error.headers
