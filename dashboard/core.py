"""What every dashboard page shares: the blueprint, the signed-in user and
their session's scope, CSRF on every form post, admin checks, bounded query
parameters and HTML error pages.

Pages call the same services as the API, so a member is refused here exactly
what the API refuses them: another team's campaign is missing (404), an admin
action is forbidden (403). A session signed in with a read-only token is
refused every POST but sign-out (403), as the API refuses the token.

Sessions live in the database (farm/services/sessions.py); the signed cookie
carries the session's secret and the CSRF token. The CSRF token stays in the
cookie: the sign-in form needs one before any session row exists, it grants
nothing alone (every POST also needs a live session), and it is renewed at
sign-in and dropped at sign-out.
"""

from __future__ import annotations

import functools
import logging
import secrets

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for

from farm import logs
from farm.api.errors import ApiError
from farm.api.security import READ_METHODS
from farm.api.security import farm_context as farm_ctx
from farm.models import INTEGER_MAX
from farm.services import sessions as session_service
from farm.services.jobs import ConflictError, NotFoundError
from farm.services.quotas import QuotaExceededError
from farm.services.tokens import ForbiddenError
from farm.spec import RequestError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/static/dashboard")

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"  # htmx sends the token as a header (set once in base.html)
SESSION_KEY = "sid"  # the cookie's name for the session's secret
POLL_S = 2  # live parts poll at most once a second; every two is enough to feel live
MAX_PAGE = 1_000_000  # far beyond any real listing; keeps OFFSET inside a 64-bit integer
READ_ONLY = "this session is read-only (signed in with a read-only API token): it may look, not change anything"


def csrf_token() -> str:
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def can_write() -> bool:
    """Whether this request's session may change things (a password or full-token sign-in)."""
    live = getattr(g, "dashboard_session", None)
    return live is not None and live.can_write


def require_write() -> None:
    if not can_write():
        abort(403, description=READ_ONLY)


@bp.app_context_processor
def _template_helpers():
    live = getattr(g, "dashboard_session", None)
    return {"csrf_token": csrf_token, "current_user": getattr(g, "dashboard_user", None), "poll_s": POLL_S,
            "can_write": can_write(), "current_session_id": live.id if live else None}


@bp.before_app_request
def _check_csrf():
    # Every form post to the dashboard carries the session's CSRF token; the
    # API (bearer tokens, no cookies) is not affected.
    if request.method == "POST" and request.blueprint == "dashboard":
        sent = request.form.get(CSRF_FIELD, "") or request.headers.get(CSRF_HEADER, "")
        if not sent or not secrets.compare_digest(sent, session.get(CSRF_FIELD, "")):
            abort(400, description="the form expired or did not come from this site (CSRF check failed); reload the page and try again")


@bp.before_request
def _refuse_hostile_input():
    # Postgres refuses NUL in text, so a NUL that reached a query was a 500;
    # it is a 400 naming where it came in, before any view runs.
    sources = (("query parameter", request.args), ("path segment", request.view_args or {}))
    if request.method == "POST":
        sources += (("form field", request.form),)
    for where, values in sources:
        items = values.items(multi=True) if hasattr(values, "getlist") else values.items()
        for name, value in items:
            if "\x00" in name or (isinstance(value, str) and "\x00" in value):
                abort(400, description=f"{where} {name.replace(chr(0), '')!r} must not contain a NUL character")
            # <int:…> segments name rows of INTEGER columns; a larger number overflowed the driver (a 500).
            if isinstance(value, int) and value > INTEGER_MAX:
                abort(400, description=f"{where} {name!r} must be a whole number up to {INTEGER_MAX}")


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; anything else is a 400 naming it."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    # ASCII digits of a sane length before int(): "²" is a digit to isdigit(),
    # and int() refuses strings of more than 4,300 digits with a ValueError.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(high))) or not low <= int(raw) <= high:
        abort(400, description=f"query parameter {name!r} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


def page_arg() -> int:
    return int_arg("page", 1, 1, MAX_PAGE)


def start_dashboard_session(user, token=None) -> None:
    """Sign the browser in: a fresh session row and cookie (and CSRF token)."""
    secret = session_service.start_session(farm_ctx(), user, token=token, client_address=request.remote_addr,
                                           user_agent=request.headers.get("User-Agent"))
    session.clear()
    session[SESSION_KEY] = secret
    session.permanent = True


def end_dashboard_session() -> None:
    """Sign the browser out: its session row is ended, not only the cookie dropped."""
    session_service.end_current_session(farm_ctx(), session.get(SESSION_KEY))
    session.clear()


def _load_session():
    live = session_service.current_session(farm_ctx(), session.get(SESSION_KEY))
    if live is None and SESSION_KEY in session:
        session.clear()
    return live


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.dashboard_session = _load_session()
        g.dashboard_user = g.dashboard_session.user if g.dashboard_session else None
        if g.dashboard_user is None:
            if is_htmx():  # a poll after the session ended: send the whole page to the sign-in form
                return "", 401, {"HX-Redirect": url_for("dashboard.login", next=request.path)}
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        logs.bind_fields(user=g.dashboard_user.id)  # until the request ends (farm.api.register_log_fields)
        if request.method not in READ_METHODS:
            require_write()
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
