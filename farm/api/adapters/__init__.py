"""Other tools' interfaces, spoken on top of farm's own job service (issue 20).

Each adapter is a Flask blueprint in this package that translates one foreign
API (OpenAI Images under /v1/images, AUTOMATIC1111 under /sdapi/v1,
Fooocus-API under /v1/generation, the BFL FLUX API under /v1/<model>) into
calls of farm.services: the same checks, quotas, isolation and lineage as the
native API, with ``interface=`` naming the adapter on every job it submits.
Every route is declared with farm.api.contract.declare (``schemes=`` for the
ways its clients send the token, ``error_model=`` for its error shape), so it
is in /api/v1/openapi.json; each blueprint registers its own error handlers
to answer in the interface's error shape.
"""

from __future__ import annotations

# The adapters' blueprint modules, registered by farm.api.create_app without a
# URL prefix (each blueprint carries its own).
ADAPTERS: tuple[str, ...] = ("openai_images", "a1111", "fooocus", "bfl")


# Which blueprint answers errors for a URL that matches no route (404) or not
# with this method (405), so a client of that interface reads them in its own
# shape: the longest matching prefix wins (BFL's /v1/<model> takes what is left under /v1/).
ERROR_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/v1/generation/", "fooocus"), ("/v1/engines/", "fooocus"), ("/v1/images/", "openai_images"),
    ("/v1/models", "openai_images"), ("/sdapi/v1/", "a1111"), ("/v1/", "bfl"),
)


def register_adapters(app) -> None:
    import importlib

    for name in ADAPTERS:
        module = importlib.import_module(f"farm.api.adapters.{name}")
        app.register_blueprint(module.bp)


def routing_error_handler(app, path: str):
    """The error handler of the adapter whose URLs ``path`` is under, for an
    error raised before any view ran (no route, wrong method); None elsewhere."""
    for prefix, blueprint in ERROR_PREFIXES:
        if path.startswith(prefix) and blueprint in app.blueprints:
            return app.error_handler_spec.get(blueprint, {}).get(None, {}).get(Exception)
    return None
