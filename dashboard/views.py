"""Dashboard pages. For now a status page: the full dashboard is its own work item."""

from __future__ import annotations

import logging

from flask import Blueprint, render_template
from sqlalchemy import func, select

from farm.models import Job, ModelEntry, Worker

logger = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/static/dashboard")


@bp.get("/")
def index():
    from farm.api.security import farm_context

    ctx = farm_context()
    with ctx.db.session() as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        workers = session.execute(select(Worker).order_by(Worker.id)).scalars().all()
        models = session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
    return render_template("index.html", counts=counts, workers=workers, models=models, store=ctx.storage.describe())
