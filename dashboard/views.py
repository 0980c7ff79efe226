"""Dashboard pages: sign-in with a session cookie, CSRF on every form, and a
status page. The full dashboard builds on these (issue 6)."""

from __future__ import annotations

import functools
import logging
import secrets

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for
from sqlalchemy import func, select

from farm.auth import check_password, user_for_token
from farm.models import Job, ModelEntry, User, Worker

logger = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/static/dashboard")

CSRF_FIELD = "csrf_token"


def _ctx():
    from farm.api.security import farm_context

    return farm_context()


def csrf_token() -> str:
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": csrf_token, "current_user": getattr(g, "dashboard_user", None)}


@bp.before_app_request
def _check_csrf():
    # Every form post to the dashboard carries the session's CSRF token; the
    # API (bearer tokens, no cookies) is not affected.
    if request.method == "POST" and request.blueprint == "dashboard":
        sent = request.form.get(CSRF_FIELD, "")
        if not sent or not secrets.compare_digest(sent, session.get(CSRF_FIELD, "")):
            abort(400, description="the form expired or did not come from this site (CSRF check failed); reload the page and try again")


def _load_user():
    user_id = session.get("user_id")
    if user_id is None:
        return None
    with _ctx().db.session() as db_session:
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
            return redirect(url_for("dashboard.login", next=request.path))
        return view(*args, **kwargs)

    return wrapper


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        password = request.form.get("password", "")
        token = request.form.get("token", "").strip()
        user = None
        with _ctx().db.session() as db_session:
            if token:
                found = user_for_token(db_session, token)
                user = found[0] if found else None
            elif name:
                candidate = db_session.execute(select(User).where(User.name == name)).scalar_one_or_none()
                if candidate is not None and candidate.disabled_at is None and check_password(password, candidate.password_hash):
                    user = candidate
        if user is None:
            error = "That name and password, or that API token, did not match a user."
        else:
            session.clear()  # a fresh session (and CSRF token) after signing in
            session["user_id"] = user.id
            session.permanent = True
            logger.info("dashboard sign-in: %s", user.name)
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/") and not target.startswith("//") else url_for("dashboard.index"))
    return render_template("login.html", error=error, name=request.form.get("name", "")), (401 if error else 200)


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@login_required
def index():
    ctx = _ctx()
    with ctx.db.session() as db_session:
        counts = dict(db_session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        workers = db_session.execute(select(Worker).order_by(Worker.id)).scalars().all()
        models = db_session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
    return render_template("index.html", counts=counts, workers=workers, models=models, store=ctx.storage.describe())
