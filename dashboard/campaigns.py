"""Campaigns: the list with progress, a campaign's live page and gallery, its X/Y grid, its controls and downloads."""

from __future__ import annotations

import logging

from flask import Response, abort, g, redirect, render_template, request, url_for

from dashboard import data
from dashboard.core import bp, farm_ctx, int_arg, login_required, page_arg
from dashboard.images import thumbnail_key
from farm.api.campaigns import manifest_download, zip_download
from farm.models import JobStatus
from farm.services import campaign_grids as grids
from farm.services import campaigns as service
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)

ACTIONS = {"pause", "resume", "cancel", "retry-failed"}


@bp.get("/campaigns")
@login_required
def campaigns():
    page = page_arg()
    with farm_ctx().db.session() as session:
        rows, total = data.campaign_summaries(session, g.dashboard_user, page)
    template = "partials/campaign_rows.html" if request.args.get("fragment") else "campaigns.html"
    return render_template(template, rows=rows, total=total, page=page, pages=max(1, -(-total // data.CAMPAIGN_PAGE)))


def _gallery_args() -> dict:
    status = request.args.get("status") or None
    if status is not None and status not in JobStatus.__members__:
        abort(400, description=f"unknown status {status!r}; use one of {', '.join(JobStatus.__members__)}")
    return {"status": status, "style": request.args.get("style") or None, "model": request.args.get("model") or None,
            "page": page_arg()}


def _filter_query(args: dict) -> dict:
    """The gallery's filters as query arguments (page apart), for its links and its poll."""
    return {k: v for k, v in args.items() if v and k != "page"}


@bp.app_template_filter("axis_label")
def axis_label(value) -> str:
    return grids.label(value)


def _varying(found) -> list[str]:
    """The campaign's axes with more than one value: what tells its tiles apart."""
    return [axis.name for axis in grids.grid_axes(found) if axis.size > 1]


@bp.get("/campaigns/<campaign_id>")
@login_required
def campaign(campaign_id: str):
    ctx, user = farm_ctx(), g.dashboard_user
    view = service.campaign_view(ctx, user, campaign_id)
    args = _gallery_args()
    with ctx.db.session() as session:
        found = service.visible_campaign(session, user, campaign_id)
        filters = data.campaign_filters(session, found)
        items, total = data.gallery_page(session, found.id, **args)
        varying = _varying(found)
    return render_template("campaign.html", view=view, items=items, total=total, filters=filters, args=args,
                           pages=max(1, -(-total // data.GALLERY_PAGE)), query=_filter_query(args), statuses=list(JobStatus.__members__),
                           varying=varying, has_grid=len(grids.grid_axes(found)) >= 2)


@bp.get("/campaigns/<campaign_id>/progress")
@login_required
def campaign_progress(campaign_id: str):
    view = service.campaign_view(farm_ctx(), g.dashboard_user, campaign_id)
    # The buttons follow the state too: swapped out of band into the page head.
    return (render_template("partials/campaign_progress.html", view=view)
            + render_template("partials/campaign_actions.html", view=view, oob=True))


def _grid(campaign_id: str) -> tuple[grids.Grid, dict]:
    """The grid page the query asks for (x, y, page) and the campaign's id and name: two queries."""
    with farm_ctx().db.session() as session:
        found = service.visible_campaign(session, g.dashboard_user, campaign_id)
        grid = grids.read_grid(session, found, x=request.args.get("x") or None, y=request.args.get("y") or None,
                               page=int_arg("page", 0, 0, service.MAX_CAMPAIGN_JOBS))
        return grid, {"id": str(found.id), "name": found.name}


@bp.get("/campaigns/<campaign_id>/grid")
@login_required
def campaign_grid(campaign_id: str):
    """Two axes of the campaign as columns and rows, the others as pages."""
    grid, view = _grid(campaign_id)
    return render_template("campaign_grid.html", view=view, grid=grid)


@bp.get("/campaigns/<campaign_id>/grid.png")
@login_required
def campaign_grid_png(campaign_id: str):
    """The grid page as one PNG contact sheet with its labels."""
    grid, view = _grid(campaign_id)
    storage = farm_ctx().storage

    def read_image(key: str) -> bytes | None:
        # A cell is at most images.THUMB_PX wide: the stored thumbnail is enough and far
        # cheaper to decode than the full image, which is the fallback.
        for candidate in (thumbnail_key(key), key):
            try:
                return storage.get(candidate)
            except ObjectNotFoundError:
                continue
        return None

    png = grids.contact_sheet(grid, view["name"], read_image)
    filename = f"grid-{grid.x.name}-{grid.y.name}-{grid.page}.png"
    return Response(png, mimetype="image/png", headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/campaigns/<campaign_id>/gallery")
@login_required
def campaign_gallery(campaign_id: str):
    ctx, user = farm_ctx(), g.dashboard_user
    args = _gallery_args()
    with ctx.db.session() as session:
        found = service.visible_campaign(session, user, campaign_id)
        items, total = data.gallery_page(session, found.id, **args)
        live = found.status in ("active", "paused")
        varying = _varying(found)
    return render_template("partials/gallery.html", view={"id": campaign_id, "status": found.status}, items=items,
                           total=total, args=args, pages=max(1, -(-total // data.GALLERY_PAGE)), live=live,
                           query=_filter_query(args), varying=varying)


@bp.post("/campaigns/<campaign_id>/<action>")
@login_required
def campaign_action(campaign_id: str, action: str):
    ctx, user = farm_ctx(), g.dashboard_user
    if action not in ACTIONS:
        abort(404, description=f"no campaign action {action!r}")
    if action in ("pause", "resume"):
        service.set_paused(ctx, user, campaign_id, action == "pause")
    elif action == "cancel":
        service.cancel_campaign(ctx, user, campaign_id)
    else:
        service.retry_failed(ctx, user, campaign_id)
    return redirect(url_for("dashboard.campaign", campaign_id=campaign_id))


@bp.get("/campaigns/<campaign_id>/manifest.<fmt>")
@login_required
def campaign_manifest(campaign_id: str, fmt: str):
    if fmt not in ("csv", "jsonl"):
        abort(404, description="the manifest comes as .csv or .jsonl")
    return manifest_download(farm_ctx(), g.dashboard_user, campaign_id, fmt)


@bp.get("/campaigns/<campaign_id>/export.zip")
@login_required
def campaign_zip(campaign_id: str):
    return zip_download(farm_ctx(), g.dashboard_user, campaign_id)
