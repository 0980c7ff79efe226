"""Dashboard pages: sign-in with a session cookie and the status page; the
other pages live in a module each (create, campaigns, images, operations)."""

from __future__ import annotations

import logging

from flask import redirect, render_template, request, url_for
from sqlalchemy import func, select

from dashboard import campaigns, create, filters, history, images, live, operations  # noqa: F401  (their routes and filters join the blueprint)
from dashboard.core import bp, end_dashboard_session, farm_ctx, login_required, start_dashboard_session
from farm.auth import check_password, hash_password, password_needs_rehash, user_for_token
from farm.models import Job, ModelEntry, User, Worker

logger = logging.getLogger(__name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    from farm.api.throttle import ThrottledError, current_throttle

    error = None
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        password = request.form.get("password", "")
        token = request.form.get("token", "").strip()
        try:
            # Failures are counted per address and per name; once a count is full the
            # attempt is refused before any password or token is checked (issue 18).
            attempt = current_throttle().sign_in(None if token else name)
        except ThrottledError as exc:
            page = render_template("login.html", error=f"Too many failed sign-ins: try again in {exc.retry_after_s} s.",
                                   name=name)
            return page, 429, {"Retry-After": str(exc.retry_after_s)}
        user = api_token = None
        with farm_ctx().db.session() as db_session:
            if token:
                found = user_for_token(db_session, token)
                user, api_token = found if found else (None, None)
            elif name:
                candidate = db_session.execute(select(User).where(User.name == name)).scalar_one_or_none()
                # An unknown name is checked against a dummy hash: it costs as much as a known one.
                stored = candidate.password_hash if candidate is not None else None
                if check_password(password, stored) and candidate.disabled_at is None:
                    user = candidate
                    if password_needs_rehash(stored):
                        _upgrade_password(candidate.id, password)
        if user is None:
            attempt.failed()
            error = "That name and password, or that API token, did not match a user."
        else:
            start_dashboard_session(user, api_token)  # a fresh session (and CSRF token), with the token's scope
            logger.info("dashboard sign-in: %s", user.name)
            return redirect(same_origin_path(request.args.get("next", "")) or url_for("dashboard.index"))
    return render_template("login.html", error=error, name=request.form.get("name", "")), (401 if error else 200)


def _upgrade_password(user_id: int, password: str) -> None:
    """Re-hash a password stored with older parameters (scrypt) as argon2id."""
    with farm_ctx().db.transaction() as db_session:
        db_session.get(User, user_id).password_hash = hash_password(password)
    logger.info("password of user %s re-hashed with argon2id", user_id)


def same_origin_path(target: str) -> str | None:
    r"""``target`` if it is a path on this site, else None (an open redirect).

    Browsers drop tabs and newlines from URLs and read a backslash as a slash,
    so ``/<tab>/evil.example`` and ``/\evil.example`` lead off-site; such
    characters are refused rather than cleaned."""
    from urllib.parse import urlsplit

    if not target.startswith("/") or any(ord(c) < 0x21 or c in "\\\x7f" for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return None
    return target


@bp.post("/logout")
def logout():
    end_dashboard_session()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@login_required
def index():
    ctx = farm_ctx()
    with ctx.db.session() as db_session:
        counts = dict(db_session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        workers = db_session.execute(select(Worker).order_by(Worker.id)).scalars().all()
        models = db_session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
    return render_template("index.html", counts=counts, workers=workers, models=models, store=ctx.storage.describe())
