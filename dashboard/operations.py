"""Workers (live, drain/resume for admins), usage and quotas (a user's own;
for admins every user and team, editable limits, usage charts, CSV, tokens,
and the live dashboard sessions, each of which an admin can end)."""

from __future__ import annotations

import datetime as dt
import logging

from flask import abort, g, redirect, render_template, request, url_for

from dashboard import data
from dashboard.core import admin_required, bp, farm_ctx, field_errors, login_required
from farm.api.users import usage_csv as usage_csv_response
from farm.models import utcnow
from farm.services import sessions as session_service
from farm.services import tokens as token_service
from farm.services.quotas import LIMIT_FIELDS, USAGE_GROUPS, me_report, set_quota, usage_report
from farm.services.workers import set_draining
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

USAGE_DAYS = 30


@bp.get("/workers")
@login_required
def workers():
    with farm_ctx().db.session() as session:
        overview = data.worker_overview(session, utcnow())
    template = "partials/workers_body.html" if request.args.get("fragment") else "workers.html"
    return render_template(template, **overview, timeout_s=farm_ctx().settings.heartbeat_timeout_s)


@bp.post("/workers/<worker_id>/<action>")
@admin_required
def worker_action(worker_id: str, action: str):
    if action not in ("drain", "resume"):
        abort(404, description=f"no worker action {action!r}")
    set_draining(farm_ctx(), worker_id, action == "drain")
    return redirect(url_for("dashboard.workers"))


@bp.get("/usage")
@login_required
def usage():
    user = g.dashboard_user
    with farm_ctx().db.session() as session:
        report = me_report(session, user)
        days = data.usage_per_day(session, utcnow() - dt.timedelta(days=USAGE_DAYS - 1), user_id=user.id)
    return render_template("usage.html", report=report, days=days, limit_fields=LIMIT_FIELDS)


def _window() -> tuple[dt.datetime, dt.datetime]:
    now = utcnow()
    return now - dt.timedelta(days=USAGE_DAYS), now + dt.timedelta(seconds=1)


def _group_by() -> list[str]:
    """?group_by=user,day or repeated checkboxes (?group_by=user&group_by=day); user by default."""
    parts = [p for value in request.args.getlist("group_by") for p in value.split(",") if p]
    return parts or ["user"]


@bp.get("/admin")
@admin_required
def admin(errors: dict | None = None, status: int = 200, new_token: str | None = None):
    ctx = farm_ctx()
    group_by = _group_by()
    with ctx.db.session() as session:
        people = data.people(session)
        days = data.usage_per_day(session, utcnow() - dt.timedelta(days=USAGE_DAYS - 1))
    rows = usage_report(ctx, group_by, *_window())
    tokens = token_service.list_tokens(ctx, g.dashboard_user, all_users=True)
    return render_template("admin.html", **people, days=days, rows=rows, group_by=group_by, groups=USAGE_GROUPS,
                           limit_fields=LIMIT_FIELDS, tokens=tokens, errors=errors or {}, new_token=new_token), status


@bp.get("/admin/usage.csv")
@admin_required
def usage_csv():
    group_by = _group_by()
    return usage_csv_response(usage_report(farm_ctx(), group_by, *_window()), group_by)


@bp.post("/admin/quota/<owner>/<int:owner_id>")
@admin_required
def edit_quota(owner: str, owner_id: int):
    if owner not in ("user", "team"):
        abort(404, description="quotas belong to a user or a team")
    payload: dict = {}
    problems = []
    for name in LIMIT_FIELDS:
        raw = request.form.get(name, "").strip()
        if raw:
            try:
                payload[name] = float(raw) if name == "gpu_seconds_per_month" else int(raw)
            except ValueError:
                problems.append(FieldProblem(name, f"{raw!r} is not a number; leave it empty for unlimited"))
    try:
        if problems:
            raise RequestError(problems)
        set_quota(farm_ctx(), owner, owner_id, payload)
    except RequestError as exc:
        return admin(errors={f"{owner}-{owner_id}-{k}": v for k, v in field_errors(exc).items()}, status=422)
    return redirect(url_for("dashboard.admin") + f"#{owner}-{owner_id}")


@bp.post("/admin/tokens")
@admin_required
def create_token():
    try:
        user_id = int(request.form.get("user_id", ""))
    except ValueError:
        return admin(errors={"token-user": "choose a user"}, status=422)
    try:
        _, token = token_service.create_token(farm_ctx(), g.dashboard_user, user_id=user_id,
                                              name=request.form.get("name", "").strip() or "dashboard",
                                              scope=request.form.get("scope", "full"))
    except RequestError as exc:
        return admin(errors={f"token-{k}": v for k, v in field_errors(exc).items()}, status=422)
    return admin(new_token=token)


@bp.post("/admin/tokens/<int:token_id>/revoke")
@admin_required
def revoke_token(token_id: int):
    token_service.revoke_token(farm_ctx(), g.dashboard_user, token_id)
    return redirect(url_for("dashboard.admin") + "#tokens")


@bp.get("/admin/sessions")
@admin_required
def sessions():
    infos = session_service.list_sessions(farm_ctx(), g.dashboard_user)
    return render_template("sessions.html", sessions=infos, limit=session_service.LIST_LIMIT)


@bp.post("/admin/sessions/<int:session_id>/end")
@admin_required
def end_session(session_id: int):
    session_service.end_session(farm_ctx(), g.dashboard_user, session_id)
    return redirect(url_for("dashboard.sessions"))
