"""/api/v1/styles, /api/v1/presets and /api/v1/wildcards: what a request may name."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from farm.api import schemas
from farm.api.contract import declare
from farm.api.security import farm_context
from farm.services.jobs import NotFoundError

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


@bp.get("/wildcards")
@declare("Wildcards (built-in and FARM_WILDCARDS_DIR): __name__ in a prompt picks one of a wildcard's lines by the image's seed",
         {200: schemas.WildcardList})
def list_wildcards():
    from farm.generation.resources import generation_resources

    return jsonify({"wildcards": generation_resources(farm_context().settings).wildcards.listing()})


@bp.get("/wildcards/<path:name>")
@declare("One wildcard and its lines", {200: schemas.WildcardView}, path=schemas.WildcardPath)
def get_wildcard(name: str):
    from farm.generation.resources import generation_resources
    from farm.generation.wildcards import WildcardError

    try:
        wildcard = generation_resources(farm_context().settings).wildcards.get(name)
    except WildcardError as exc:
        raise NotFoundError(str(exc)) from None
    return jsonify({"name": wildcard.name, "source": wildcard.source, "lines": list(wildcard.lines)})
