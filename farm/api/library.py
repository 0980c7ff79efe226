"""/api/v1/styles and /api/v1/presets: what a request may name."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from farm.api import schemas
from farm.api.contract import declare
from farm.api.security import farm_context

logger = logging.getLogger(__name__)
bp = Blueprint("library", __name__)


@bp.get("/styles")
@declare("The style library (built-in and user styles) and its categories", {200: schemas.StyleList})
def list_styles():
    from farm.generation.resources import generation_resources
    from farm.generation.styles import style_listing

    library = generation_resources(farm_context().settings).styles
    return jsonify({"styles": style_listing(library), "categories": library.categories()})


@bp.get("/presets")
@declare("Presets: named bundles of model, styles, performance, sampler and size", {200: schemas.PresetList})
def list_presets():
    from farm.generation.resources import generation_resources

    return jsonify({"presets": generation_resources(farm_context().settings).presets.listing()})
