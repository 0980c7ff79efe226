"""/api/v1/styles and /api/v1/presets: what a request may name."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from farm.api.security import farm_context, require_user

logger = logging.getLogger(__name__)
bp = Blueprint("library", __name__)


@bp.get("/styles")
@require_user
def list_styles():
    from farm.generation.resources import generation_resources
    from farm.generation.styles import style_listing

    library = generation_resources(farm_context().settings).styles
    return jsonify({"styles": style_listing(library), "categories": library.categories()})


@bp.get("/presets")
@require_user
def list_presets():
    from farm.generation.resources import generation_resources

    return jsonify({"presets": generation_resources(farm_context().settings).presets.listing()})
