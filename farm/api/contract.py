"""Declared operations: each API route states who may call it and the pydantic
models of its path, query, body and answers. The same declaration checks
the request before the view runs and builds /api/v1/openapi.json, so the
document cannot drift from what the routes accept.

A route without a declaration is a defect: :func:`build_document` refuses to
build a document while one exists (and a test builds it).
"""

from __future__ import annotations

import functools
import logging
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from flask import Flask, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from farm.api.errors import ApiError
from farm.api.schemas import Error
from farm.spec import FieldProblem, RequestError, problems_from_validation

logger = logging.getLogger(__name__)

Auth = Literal["user", "admin", "public"]
# How a caller may present its API token: a bearer token everywhere; HTTP Basic
# (any user name, the token as password) and an x-key or X-API-KEY header only where a
# foreign interface's clients send them (farm/api/adapters).
Scheme = Literal["bearer", "basic", "x-key", "x-api-key"]
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (farm users create, farm tokens create)"},
    "basic": {"type": "http", "scheme": "basic", "description": "HTTP Basic: any user name, an API token as the password"},
    "x-key": {"type": "apiKey", "in": "header", "name": "x-key", "description": "An API token in the x-key header"},
    "x-api-key": {"type": "apiKey", "in": "header", "name": "X-API-KEY", "description": "An API token in the X-API-KEY header (Fooocus-API clients)"},
}
# The URL prefixes whose routes the document covers (and a test checks are all declared):
# farm's own API and the interfaces of other tools it speaks (farm/api/adapters).
DOCUMENTED_PREFIXES = ("/api/v1/", "/v1/", "/sdapi/v1/")
_REF = "#/components/schemas/{model}"
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "required": True,
                                "schema": {"type": "integer", "minimum": 0}}}
_ERROR_TEXT = {
    400: "A path or query parameter, or the JSON itself, needs fixing (details name it)",
    401: "Missing, invalid or revoked API token",
    403: "Not allowed: an admin-only operation, or a read-only token asking to write",
    404: "No such resource, or not visible to the caller",
    409: "The resource is not in a state that allows this",
    413: "The body is too large",
    415: "Wrong Content-Type",
    422: "A body field needs fixing (details name each field)",
    429: "A quota or a throttle refuses it now; Retry-After says when to try again",
    503: "The database or the object store is unavailable; Retry-After says when to try again",
    504: "The work took longer than the API waits for it; try again",
}


@dataclass(frozen=True)
class Answer:
    """One response: a JSON model, or other media types with their schemas."""

    model: type[BaseModel] | None = None
    description: str = "OK"
    media: dict[str, dict] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # required headers: name -> description
    # OpenAPI links, for clients and stateful fuzzing: name -> ("METHOD /path", {parameter: expression}).
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: dict[int, Answer]
    auth: Auth = "user"
    schemes: tuple[Scheme, ...] = ("bearer",)
    # The JSON shape of this operation's error answers (an adapter's own, e.g. OpenAI's).
    error_model: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # Non-JSON bodies the view reads itself: media type -> schema.
    body_media: dict[str, dict] = field(default_factory=dict)
    # The view parses the body itself (it also takes multipart); ``body`` documents it.
    parse_body: bool = True
    errors: tuple[int, ...] = ()
    description: str = ""
    # A POST that only reads (A1111's png-info): a read-only token may call it.
    reads: bool = False

    def error_statuses(self, method: str) -> list[int]:
        statuses = set(self.errors) | {503}
        if self.auth != "public":
            statuses |= {401, 429}  # 429: failed token checks are throttled per address
            if self.auth == "admin" or (method not in ("GET", "HEAD") and not self.reads):
                statuses.add(403)
        if self.path or self.query:
            statuses.add(400)
        if self.path:
            statuses.add(404)
        if self.body or self.body_media:
            statuses |= {400, 413, 415, 422}
        return sorted(statuses)


def declare(summary: str, answers: dict[int, Answer | type[BaseModel]], **options: Any) -> Callable:
    """Declare a route: checks the caller and the request, then calls the view with
    the path parameters (validated, by name), ``query=`` and ``body=`` models."""
    operation = Operation(summary, {status: a if isinstance(a, Answer) else Answer(a) for status, a in answers.items()},
                          **options)

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(**path_values):
            from farm.api.security import authenticate

            if operation.auth != "public":
                user = authenticate(operation.schemes, reads=operation.reads)
                if operation.auth == "admin" and not user.is_admin:
                    raise ApiError(403, "only admins may do this")
            kwargs: dict[str, Any] = {}
            if operation.path:
                kwargs.update(validate(operation.path, path_values, status=400).model_dump())
            if operation.query:
                kwargs["query"] = validate(operation.query, _query_values(operation.query), status=400)
            if operation.body and operation.parse_body:
                from farm.api.security import json_body

                kwargs["body"] = validate(operation.body, json_body(), status=422)
            return view(**kwargs)

        wrapper.operation = operation  # type: ignore[attr-defined]
        return wrapper

    return decorate


def validate(model: type[BaseModel], values: Any, status: int = 422) -> BaseModel:
    """``values`` as ``model``, or RequestError naming each field to fix."""
    if not isinstance(values, dict):
        raise RequestError([FieldProblem("body", "send a JSON object")], status=status)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestError(problems_from_validation(exc), status=status) from None


def _query_values(model: type[BaseModel]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name not in request.args:
            continue
        is_list = typing.get_origin(info.annotation) is list
        values[name] = request.args.getlist(name) if is_list else request.args.get(name)
    return values


# --------------------------------------------------------------------------- the document

def build_document(app: Flask, title: str, version: str) -> dict:
    """The OpenAPI 3.1 document of every route under DOCUMENTED_PREFIXES; raises if one is undeclared."""
    operations: list[tuple[str, str, Operation]] = []
    undeclared = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(DOCUMENTED_PREFIXES):
            continue
        operation = getattr(app.view_functions[rule.endpoint], "operation", None)
        if operation is None:
            undeclared.append(rule.rule)
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations.append((path, method, operation))
    if undeclared:
        raise RuntimeError(f"routes without a declared operation: {', '.join(undeclared)}")

    keys = {(model, mode) for _, _, op in operations for model, mode in _models(op)}
    schemes = {"bearer"} | {scheme for _, _, op in operations for scheme in op.schemes}
    refs, top = models_json_schema(sorted(keys, key=lambda k: (k[0].__name__, k[1])), ref_template=_REF)
    paths: dict[str, dict] = {}
    for path, method, operation in operations:
        paths.setdefault(path, {})[method.lower()] = _operation_object(path, method, operation, refs)
    known = {item["operationId"] for item in (op for methods in paths.values() for op in methods.values())}
    for methods in paths.values():
        for item in methods.values():
            for response in item["responses"].values():
                for name, link in response.get("links", {}).items():
                    if link["operationId"] not in known:
                        raise RuntimeError(f"link {name} names no operation: {link['operationId']}")
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "farm's REST API. Errors are {\"error\": {\"code\", \"message\", \"details\"}}; "
                                "details name each field to fix."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {name: SECURITY_SCHEMES[name] for name in sorted(schemes)},
            "schemas": top.get("$defs", {}),
        },
        "paths": paths,
    }


def _models(operation: Operation):
    yield operation.error_model or Error, "serialization"
    if operation.body:
        yield operation.body, "validation"
    for answer in operation.answers.values():
        if answer.model:
            yield answer.model, "serialization"


def _parameters(model: type[BaseModel], where: str) -> list[dict]:
    schema = model.model_json_schema(ref_template=_REF)
    if "$defs" in schema:
        raise RuntimeError(f"{model.__name__}: parameters must be plain values, not nested models")
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter = {"name": name, "in": where, "required": where == "path" or name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _content(model: type[BaseModel] | None, media: dict[str, dict], refs, mode: str) -> dict:
    content = {}
    if model is not None:
        content["application/json"] = {"schema": refs[(model, mode)]}
    for media_type, schema in media.items():
        content[media_type] = {"schema": schema}
    return content


def _tag(path: str) -> str:
    """``jobs`` for /api/v1/jobs/..., the interface's name for an adapter's routes."""
    if path.startswith("/api/v1/"):
        return path.split("/")[3]
    if path.startswith("/sdapi/"):
        return "a1111"
    if path.startswith("/v1/"):
        return {"images": "openai", "models": "openai", "generation": "fooocus", "engines": "fooocus"}.get(path.split("/")[2], "bfl")
    return "other"


def operation_id(method: str, path: str) -> str:
    """``get_api_v1_jobs_job_id`` for GET /api/v1/jobs/{job_id}."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{path}").strip("_")


def _operation_object(path: str, method: str, operation: Operation, refs) -> dict:
    parameters = []
    if operation.path:
        parameters += _parameters(operation.path, "path")
    if operation.query:
        parameters += _parameters(operation.query, "query")
    responses: dict[str, dict] = {}
    for status, answer in sorted(operation.answers.items()):
        response: dict[str, Any] = {"description": answer.description}
        content = _content(answer.model, answer.media, refs, "serialization")
        if content:
            response["content"] = content
        if answer.links:
            response["links"] = {name: {"operationId": operation_id(*target.split(" ", 1)), "parameters": parameters_}
                                 for name, (target, parameters_) in answer.links.items()}
        if answer.headers:
            response["headers"] = {name: {"description": text, "required": True, "schema": {"type": "string"}}
                                   for name, text in answer.headers.items()}
        responses[str(status)] = response
    for status in operation.error_statuses(method):
        error_schema = refs[(operation.error_model or Error, "serialization")]
        response = {"description": _ERROR_TEXT[status], "content": {"application/json": {"schema": error_schema}}}
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        responses.setdefault(str(status), response)
    result: dict[str, Any] = {"operationId": operation_id(method, path), "summary": operation.summary, "responses": responses}
    result["tags"] = [_tag(path)]
    if operation.description:
        result["description"] = operation.description
    if parameters:
        result["parameters"] = parameters
    if operation.auth == "public":
        result["security"] = []
    elif operation.schemes != ("bearer",):
        result["security"] = [{scheme: []} for scheme in operation.schemes]
    body = _content(operation.body, operation.body_media, refs, "validation")
    if body:
        result["requestBody"] = {"required": True, "content": body}
    return result
