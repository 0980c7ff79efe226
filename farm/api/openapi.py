"""The OpenAPI document at /api/v1/openapi.json."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

import farm
from farm.spec import GenerationRequest

logger = logging.getLogger(__name__)
bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(summary: str, ok: str = "200", body: str | None = None, errors=(401, 404)) -> dict:
    operation = {"summary": summary, "responses": {ok: {"description": "OK"}}}
    for status in errors:
        operation["responses"][str(status)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    return operation


def build_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "farm", "version": farm.__version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "GenerationRequest": GenerationRequest.model_json_schema(),
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}},
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/jobs": {
                "post": _op("Submit a generation job", "202", "GenerationRequest", (400, 401, 413, 415, 422)),
                "get": _op("List jobs (cursor paginated; status, campaign filters)", errors=(400, 401)),
            },
            "/api/v1/jobs/{job_id}": {"get": _op("A job with progress and outputs; ?wait=N long-polls until it is final")},
            "/api/v1/jobs/{job_id}/cancel": {"post": _op("Cancel a queued, assigned or running job", errors=(401, 404, 409))},
            "/api/v1/outputs/{output_id}": {"get": _op("The lineage record of one image")},
            "/api/v1/outputs/{output_id}/rerender": {"post": _op("Render again from the lineage; the job reports rerender_matches", "202", errors=(401, 404, 429))},
            "/api/v1/outputs/{output_id}/image": {"get": _op("The image (a redirect to a presigned URL on S3)")},
            "/api/v1/loras": {"get": _op("Registered LoRAs: id, family, weights sha256")},
            "/api/v1/uploads": {"post": _op("Upload a source image or mask (raw body or multipart field 'file'); 201 {id, width, height, byte_size}", "201", errors=(400, 401, 413, 422))},
            "/api/v1/workers": {"get": _op("Workers with VRAM and models held", errors=(401,))},
            "/api/v1/workers/{worker_id}/drain": {"post": _op("Drain a worker: finish current work, take no more (admin)", errors=(401, 403, 404, 409))},
            "/api/v1/workers/{worker_id}/resume": {"post": _op("Resume a drained worker (admin)", errors=(401, 403, 404, 409))},
            "/api/v1/models": {"get": _op("Registered models and which workers hold them", errors=(401,))},
            "/api/v1/users": {"post": _op("Create a user (admin); returns its first token", "201", None, (401, 403, 409, 422))},
            "/api/v1/styles": {"get": _op("The style library (built-in and user styles)", errors=(401,))},
            "/api/v1/presets": {"get": _op("Presets: named bundles of model, styles, performance, sampler, size", errors=(401,))},
            "/api/v1/me": {"get": _op("Who the token belongs to, with quota limits, usage and what remains", errors=(401,))},
            "/api/v1/users/{user_id}/quota": {"put": _op("Set a user's quota (admin)", errors=(401, 403, 404, 422))},
            "/api/v1/teams/{team_id}/quota": {"put": _op("Set a team's quota (admin)", errors=(401, 403, 404, 422))},
            "/api/v1/usage": {"get": _op("Usage per user/team/model/day (admin); ?format=csv", errors=(400, 401, 403))},
            "/api/v1/campaigns": {"post": _op("Submit a campaign (JSON, or multipart with a rows file); dry_run for count and cost", "201", None, (400, 401, 413, 422, 429))},
            "/api/v1/campaigns/{campaign_id}": {"get": _op("Counts, percent, images/min, ETA")},
            "/api/v1/campaigns/{campaign_id}/jobs": {"get": _op("The campaign's jobs (cursor paginated)")},
            "/api/v1/campaigns/{campaign_id}/pause": {"post": _op("Pause: queued jobs stay queued and are not placed", errors=(401, 404, 409))},
            "/api/v1/campaigns/{campaign_id}/resume": {"post": _op("Resume a paused campaign", errors=(401, 404, 409))},
            "/api/v1/campaigns/{campaign_id}/cancel": {"post": _op("Cancel queued jobs and stop running ones", errors=(401, 404, 409))},
            "/api/v1/campaigns/{campaign_id}/retry-failed": {"post": _op("Queue the failed jobs again", errors=(401, 404, 409, 429))},
            "/api/v1/campaigns/{campaign_id}/manifest": {"get": _op("Every output with URL and lineage; ?format=csv|jsonl")},
            "/api/v1/campaigns/{campaign_id}/export.zip": {"get": _op("Images and manifest as a streamed ZIP")},
            "/api/v1/tokens": {
                "post": {**_op("Create an API token for yourself (admins: for any user); the token is shown once", "201", None,
                               (401, 403, 404, 409, 415, 422)),
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "additionalProperties": False, "properties": {
                                 "name": {"type": "string", "minLength": 1, "maxLength": 64, "default": "default"},
                                 "scope": {"enum": ["full", "read"], "default": "full"},
                                 "user": {"type": "integer", "description": "user id (admins only; default: yourself)"}}}}}}},
                "get": _op("Your tokens, revoked ones included (admins: ?user=ID); never the token or its hash", errors=(400, 401, 404)),
            },
            "/api/v1/tokens/{token_id}": {"delete": _op("Revoke a token (your own; admins: any)", errors=(401, 403, 404, 409))},
        },
    }


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(build_document())
