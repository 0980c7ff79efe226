"""The OpenAPI 3.1 document at /api/v1/openapi.json, built from the routes' declarations."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify

import farm
from farm.api import schemas
from farm.api.contract import build_document, declare

logger = logging.getLogger(__name__)
bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
@declare("This document", {200: schemas.Document}, auth="public")
def openapi_document():
    document = current_app.extensions.get("farm.openapi")
    if document is None:
        document = current_app.extensions["farm.openapi"] = build_document(current_app, "farm", farm.__version__)
    return jsonify(document)
