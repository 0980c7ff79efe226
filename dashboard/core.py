"""What every dashboard page shares: the blueprint, the signed-in user,
CSRF on every form post, admin checks and HTML error pages.

Pages call the same services as the API, so a member is refused here exactly
what the API refuses them: another team's campaign is missing (404), an admin
action is forbidden (403).
"""

from __future__ import annotations

import functools
import logging
import secrets

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for

from farm.api.errors import ApiError
from farm.api.security import farm_context as farm_ctx
from farm.services.jobs import ConflictError, NotFoundError
from farm.services.quotas import QuotaExceededError
from farm.services.tokens import ForbiddenError
from farm.spec import RequestError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/static/dashboard")

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"  # htmx sends the token as a header (set once in base.html)
POLL_S = 2  # live parts poll at most once a second; every two is enough to feel live


def csrf_token() -> str:
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": csrf_token, "current_user": getattr(g, "dashboard_user", None), "poll_s": POLL_S}


@bp.before_app_request
def _check_csrf():
    # Every form post to the dashboard carries the session's CSRF token; the
    # API (bearer tokens, no cookies) is not affected.
    if request.method == "POST" and request.blueprint == "dashboard":
        sent = request.form.get(CSRF_FIELD, "") or request.headers.get(CSRF_HEADER, "")
        if not sent or not secrets.compare_digest(sent, session.get(CSRF_FIELD, "")):
            abort(400, description="the form expired or did not come from this site (CSRF check failed); reload the page and try again")


def _load_user():
    from farm.models import User

    user_id = session.get("user_id")
    if user_id is None:
        return None
    with farm_ctx().db.session() as db_session:
        user = db_session.get(User, user_id)
    if user is None or user.disabled_at is not None:
        session.clear()
        return None
    return user


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.dashboard_user = _load_user()
        if g.dashboard_user is None:
            if is_htmx():  # a poll after the session ended: send the whole page to the sign-in form
                return "", 401, {"HX-Redirect": url_for("dashboard.login", next=request.path)}
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper


def admin_required(view):
    @functools.wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not g.dashboard_user.is_admin:
            abort(403, description="only admins may see this page or do this")
        return view(*args, **kwargs)

    return wrapper


def field_errors(exc: RequestError) -> dict[str, str]:
    """Problems keyed by the form field they belong to (the last part of the API's field path)."""
    errors: dict[str, str] = {}
    for problem in exc.problems:
        where = problem.field.split(": ")[-1]  # campaign problems read "job 3 of 10: width"
        key = where.split(".")[-1] if where.split(".")[0] in ("base", "matrix") else where.split(".")[0]
        message = problem.message if where == problem.field else f"{problem.field.split(': ')[0]}: {problem.message}"
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    return errors


def retry_after(exc: Exception) -> dict[str, str]:
    """A quota refusal's Retry-After header (farm/services/quotas.py chooses the value); none for other errors."""
    return {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QuotaExceededError) else {}


def _error_page(status: int, message: str, headers: dict[str, str]):
    if is_htmx():
        return render_template("partials/error.html", message=message), status, headers
    return render_template("error.html", status=status, message=message), status, headers


# The services' errors as HTML pages (the API answers the same errors in JSON, farm/api/errors.py).
_ERROR_PAGES = (
    (NotFoundError, lambda exc: 404), (ConflictError, lambda exc: 409), (ForbiddenError, lambda exc: 403),
    (QuotaExceededError, lambda exc: 429), (ApiError, lambda exc: exc.status), (RequestError, lambda exc: exc.status),
    (HTTPException, lambda exc: exc.code or 500),
)


def _message(exc: Exception) -> str:
    if isinstance(exc, RequestError):
        return "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
    if isinstance(exc, HTTPException):
        return exc.description or exc.name
    return str(exc)


for _kind, _status in _ERROR_PAGES:
    bp.register_error_handler(_kind, lambda exc, status=_status: _error_page(status(exc), _message(exc), retry_after(exc)))
