"""The Flask app: REST API under /api/v1, dashboard pages, /metrics, /healthz (live, ready)."""

from __future__ import annotations

import logging

from flask import Flask

from farm.context import FarmContext, build_context
from farm.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, context: FarmContext | None = None) -> Flask:
    from dashboard import views as dashboard_views
    from farm.api.adapters import register_adapters
    from farm.api import (campaigns, describe, errors, events, health, jobs, library, openapi, outputs, throttle, tokens,
                          uploads, users, workers)

    settings = settings or (context.settings if context else get_settings())
    context = context or build_context(settings)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["SECRET_KEY"] = settings.secret_key or _local_secret(settings)
    app.config["JSON_SORT_KEYS"] = False
    # Dashboard sessions: signed cookie, not readable by scripts, not sent on cross-site posts.
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    # Behind HTTPS the cookie must never travel in clear; on plain http (farm
    # up, a loopback test) a Secure cookie would never be sent back at all.
    app.config["SESSION_COOKIE_SECURE"] = (settings.public_url or "").lower().startswith("https://")
    # The cookie lasts as long as the session row it names (farm/services/sessions.py).
    app.config["PERMANENT_SESSION_LIFETIME"] = settings.session_lifetime_s
    app.extensions["farm"] = context
    health.instrument_requests(app)  # first, so the clock starts before any other hook answers
    for module in (jobs, events, outputs, uploads, describe, workers, users, tokens, campaigns, library, openapi):
        app.register_blueprint(module.bp, url_prefix="/api/v1")
    register_adapters(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(dashboard_views.bp)
    errors.register_error_handlers(app)
    register_security_headers(app, settings)
    register_log_fields(app)
    throttle.init_throttling(app, settings)
    return app


def register_security_headers(app: Flask, settings: Settings) -> None:
    """nosniff on every answer; on dashboard pages also a Content-Security-Policy
    without inline script, no framing and a same-origin referrer."""
    from urllib.parse import urlsplit

    store = settings.s3_public_endpoint or settings.s3_endpoint
    store_origin = ""
    if store:
        parts = urlsplit(store if "://" in store else f"http://{store}")
        store_origin = f" {parts.scheme}://{parts.netloc}"
    # Style attributes carry progress-bar widths, hence 'unsafe-inline' for
    # styles only; images may come from the store through presigned URLs.
    policy = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
              f"img-src 'self' data:{store_origin}; connect-src 'self'; object-src 'none'; base-uri 'self'; "
              "form-action 'self'; frame-ancestors 'none'")

    @app.after_request
    def _headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", policy)
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def register_log_fields(app: Flask) -> None:
    """Each request starts with no log fields; authentication binds the user
    (farm.logs), so every line logged while handling the request names it."""
    from flask import g

    from farm import logs

    @app.before_request
    def _log_scope():
        g.log_fields = logs.scope_fields()

    @app.teardown_request
    def _end_log_scope(_exc):
        token = g.pop("log_fields", None)
        try:
            if token is not None:
                logs.reset_fields(token)
        except ValueError:
            pass  # a streamed response ended on another thread; that thread's next request starts clean


def _local_secret(settings: Settings) -> str:
    import secrets

    path = settings.home / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()
