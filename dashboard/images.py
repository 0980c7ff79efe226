"""Jobs and images: the job page (prompt, images, parameters, live status, cancel), thumbnails served small
from the store, the image page (the image large, the jobs made from it rendering live, its lineage grouped,
what changed from its parent)."""

from __future__ import annotations

import datetime as dt
import io
import logging

from flask import Response, abort, g, redirect, render_template, request, url_for
from sqlalchemy import select

from dashboard.core import bp, farm_ctx, login_required, require_write
from farm.api.outputs import image_response
from farm.models import Campaign, Job
from farm.services import jobs as job_service
from farm.storage import ObjectNotFoundError

logger = logging.getLogger(__name__)

THUMB_PX = 256
IMAGE_ACTIONS = {"vary_subtle": "Vary (subtle)", "vary_strong": "Vary (strong)", "upscale_1.5x": "Upscale 1.5×", "upscale_2x": "Upscale 2×"}


ACTIVE = ("queued", "assigned", "running")  # the states a job can still be canceled in
JOB_PAGE_SHOWN = ("prompt", "model")  # the title and the header already say these


def is_empty(value) -> bool:
    """Nothing worth a row: None, "", an empty list or mapping, or False (an option left off)."""
    return value is None or value is False or value == "" or value == [] or value == {}


# Parameters in the order people read them; the rest follow by name (JSONB keeps keys by length, not as written).
READING_ORDER = ("final_prompt", "prompt", "negative_prompt", "final_negative_prompt", "styles", "preset", "seed",
                 "num_images", "width", "height", "steps", "guidance_scale", "sampler", "scheduler", "output_format")


def _reading_key(key: str) -> tuple[int, str]:
    return (READING_ORDER.index(key) if key in READING_ORDER else len(READING_ORDER), key)


def _shown(field: str, value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if field.endswith("_at") and isinstance(value, str):  # lineage times are ISO strings with microseconds
        try:
            return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            pass
    return str(value)


def flat_rows(value, prefix: str = "") -> list[tuple[str, str]]:
    """A nested record as (field, value) rows in reading order: dotted names, lists of plain values joined,
    times as UTC seconds, empty fields left out."""
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key in sorted(value, key=_reading_key):
            rows.extend(flat_rows(value[key], f"{prefix}{key}."))
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for i, item in enumerate(value):
            rows.extend(flat_rows(item, f"{prefix}{i}."))
    elif not is_empty(value):
        rows.append((prefix.rstrip("."), _shown(prefix.rstrip("."), value)))
    return rows


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str):
    ctx = farm_ctx()
    found = job_service.get_job(ctx, g.dashboard_user, job_id)
    queue = job_service.queue_standing(ctx, found)
    if request.args.get("fragment"):
        return render_template("partials/job_status.html", job=found, active=ACTIVE, queue=queue)
    campaign_name = None
    if found.campaign_id:
        with ctx.db.session() as session:
            campaign_name = session.execute(select(Campaign.name).where(Campaign.id == found.campaign_id)).scalar_one_or_none()
    return render_template("job.html", job=found, active=ACTIVE, campaign_name=campaign_name, queue=queue,
                           parameters=flat_rows({k: v for k, v in found.params.items() if k not in JOB_PAGE_SHOWN}))


@bp.post("/jobs/<job_id>/cancel")
@login_required
def cancel(job_id: str):
    """Cancel a queued or running job (the API's rule: a finished one is a 409)."""
    job_service.cancel_job(farm_ctx(), g.dashboard_user, job_id)
    return redirect(url_for("dashboard.job", job_id=job_id))


def thumbnail_key(object_key: str) -> str:
    return f"thumbs/{object_key}.webp"


@bp.get("/thumbs/<output_id>.webp")
@login_required
def thumbnail(output_id: str):
    """A 256 px WebP of an output, made once and kept in the store beside the image."""
    ctx = farm_ctx()
    output = job_service.get_output(ctx, g.dashboard_user, output_id)
    key = thumbnail_key(output.object_key)
    try:
        data = ctx.storage.get(key)
    except ObjectNotFoundError:
        from PIL import Image

        try:
            original = ctx.storage.get(output.object_key)
        except ObjectNotFoundError:
            return Response("the image is missing from the store", status=404, mimetype="text/plain")
        image = Image.open(io.BytesIO(original))
        image.thumbnail((THUMB_PX, THUMB_PX))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="WEBP", quality=80)
        data = buffer.getvalue()
        ctx.storage.put(key, data, "image/webp")
    return Response(data, mimetype="image/webp", headers={"Cache-Control": "private, max-age=86400"})


@bp.get("/images/<output_id>/full")
@login_required
def full_image(output_id: str):
    ctx = farm_ctx()
    return image_response(ctx, job_service.get_output(ctx, g.dashboard_user, output_id))


# The image page's lineage, grouped (issue 19): each group names the record's
# parts it shows, as (group, part of the record, keys of that part or None for all).
LINEAGE_GROUPS = (
    ("Prompt", "params", ("prompt", "final_prompt", "negative_prompt", "final_negative_prompt", "wildcards", "styles",
                          "preset", "prompt_expansion", "prompt_expansion_engine", "prompt_expansion_model")),
    ("Settings", "params", None),  # every other parameter
    ("Model", "model", None),
    ("Worker", "worker", None),
    ("Software", "software", None),
    ("Timings", "timings", None),
)
FILE_FIELDS = ("object_key", "sidecar_key", "content_type", "content_sha256", "byte_size")


def lineage_groups(record: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The lineage record as titled groups of (field, value) rows; empty fields and empty groups left out."""
    groups, shown = [], set()
    for title, part, keys in LINEAGE_GROUPS:
        section = record.get(part) or {}
        if not isinstance(section, dict):
            continue
        chosen = {k: v for k, v in section.items() if (k in keys if keys else (part, k) not in shown)}
        shown |= {(part, k) for k in chosen}
        rows = flat_rows(chosen)
        if rows:
            groups.append((title, rows))
    if record.get("interface"):
        groups.append(("Submitted through", [("interface", str(record["interface"]))]))
    files = flat_rows({k: record.get(k) for k in FILE_FIELDS})
    if files:
        groups.append(("Files", files))
    return groups


def lineage_changes(record: dict, parent: dict) -> list[tuple[str, str, str]]:
    """What differs from the parent image: (field, parent's value, this image's value) over parameters and model."""
    mine = dict(flat_rows({"params": record.get("params") or {}, "model": {"id": (record.get("model") or {}).get("id")}}))
    theirs = dict(flat_rows({"params": parent.get("params") or {}, "model": {"id": (parent.get("model") or {}).get("id")}}))
    return [(field.split(".", 1)[1], theirs.get(field, "–"), mine.get(field, "–"))
            for field in sorted(set(mine) | set(theirs)) if mine.get(field) != theirs.get(field)]


def parent_id(record: dict) -> str | None:
    """The output this image was made from: varied or upscaled from, or rendered again."""
    return record.get("parent_output") or record.get("rerender_of")


# The image page's "Made from this image" strip: the newest jobs made from it.
MADE_FROM_SHOWN = 6


def made_from(ctx, user, output) -> list[dict]:
    """The jobs made from an output, newest first, each with what made it (Rerender, Vary (subtle), ...)
    and how far it got, for the image page's strip."""
    shown = []
    for found in job_service.jobs_made_from(ctx, user, output.id, MADE_FROM_SHOWN):
        mode = (found.request or {}).get("image_mode")
        total = found.progress_total or found.steps
        percent = 100 if found.status == "succeeded" else (round(100 * found.progress_step / total, 1) if total else 0)
        shown.append({"job": found, "label": "Rerender" if found.rerender_of else IMAGE_ACTIONS.get(mode, (mode or "").capitalize()),
                      "percent": percent, "output": found.outputs[0] if found.outputs else None})
    return shown


@bp.get("/images/<output_id>")
@login_required
def image(output_id: str):
    ctx, user = farm_ctx(), g.dashboard_user
    output = job_service.get_output(ctx, user, output_id)
    derived = made_from(ctx, user, output)
    if request.args.get("fragment"):
        return render_template("partials/made_from.html", output=output, derived=derived, active=ACTIVE)
    record = output.lineage or {}
    parent, changes = None, []
    if parent_id(record):
        try:
            parent = job_service.get_output(ctx, user, parent_id(record))
        except job_service.NotFoundError:  # deleted, or someone else's: the id is still shown, unlinked
            parent = None
        if parent is not None:
            changes = lineage_changes(record, parent.lineage or {})
    from dashboard.create import first_editing_model
    from farm.services.describe import describe_workers

    return render_template("image.html", output=output, record=record, groups=lineage_groups(record), parent=parent,
                           parent_id=parent_id(record), changes=changes, image_modes=IMAGE_ACTIONS, derived=derived,
                           active=ACTIVE, can_describe=bool(describe_workers(ctx)),
                           can_edit=first_editing_model(ctx) is not None)  # Edit once an editing model is registered


def back_to_strip(output_id: str):
    """After Rerender, Vary or Upscale: back to the image page, where the new job heads the strip
    and renders live, so several can be started and compared without leaving the image."""
    return redirect(url_for("dashboard.image", output_id=output_id, _anchor="made-from"))


@bp.post("/images/<output_id>/rerender")
@login_required
def rerender(output_id: str):
    job_service.rerender_output(farm_ctx(), g.dashboard_user, output_id, interface="dashboard")
    return back_to_strip(output_id)


@bp.post("/images/<output_id>/describe")
@login_required
def describe(output_id: str):
    """Describe the image with a worker's image-to-text model and open the create form with the text as its prompt."""
    from farm.api.describe import describe_output_for_page

    require_write()
    prompt = describe_output_for_page(output_id)
    return redirect(url_for("dashboard.create", prompt=prompt))


@bp.post("/images/<output_id>/<mode>")
@login_required
def image_task(output_id: str, mode: str):
    """Vary or upscale an image: a new image-to-image job from it, with its job's prompt and model."""
    if mode not in IMAGE_ACTIONS:
        abort(404, description=f"no image action {mode!r}")
    ctx, user = farm_ctx(), g.dashboard_user
    output = job_service.get_output(ctx, user, output_id)
    with ctx.db.session() as session:
        original = session.get(Job, output.job_id).request
    payload = {"prompt": original["prompt"], "model": original.get("model"), "negative_prompt": original.get("negative_prompt", ""),
               "styles": original.get("styles", []), "image_mode": mode, "parent_output": str(output.id)}
    job_service.submit_job(ctx, user, {k: v for k, v in payload.items() if v is not None}, interface="dashboard")
    return back_to_strip(output_id)
