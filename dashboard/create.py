"""Create: one job or a campaign (matrix and/or uploaded rows) from one form,
with a dry run that shows the job count and quota use before anything is submitted."""

from __future__ import annotations

import logging

from flask import g, redirect, render_template, request, url_for
from sqlalchemy import select

from dashboard.core import bp, farm_ctx, field_errors, login_required, require_write, retry_after
from dashboard.forms import prefill_from_request, read_create_form
from farm.models import Job, ModelEntry
from farm.services import campaigns as campaign_service
from farm.services import jobs as job_service
from farm.services.quotas import QuotaExceededError, me_report
from farm.families import editing_names, is_refiner
from farm.spec import FAMILY_ASPECT_RATIOS, SAMPLERS, SIGMA_SCHEDULES, RequestError

logger = logging.getLogger(__name__)

PERFORMANCE_MODES = ("quality", "speed", "extreme_speed", "lightning")
STYLE_MATCHES = 200


def _library():
    from farm.generation.resources import generation_resources

    return generation_resources(farm_ctx().settings)


def _styles(query: str, chosen: list[str]) -> list:
    """Chosen styles first (so a search never drops them), then those matching the query by name, category or text."""
    query = query.strip().lower()
    found = [s for s in _library().styles.all() if s.name in chosen]
    for style in _library().styles.all():
        if style.name in chosen:
            continue
        if not query or query in style.name.lower() or query in style.category.lower() or query in style.positive.lower():
            found.append(style)
    return found[:len(chosen) + STYLE_MATCHES]


def aspect_ratio_choices(families) -> list[tuple[str, list[str]]]:
    """Each frame the registered ``families`` were trained near, once, with the
    families it suits (the page's script shows only those of the chosen models)."""
    choices: dict[str, list[str]] = {}
    for family in sorted(set(families)):
        for ratio in FAMILY_ASPECT_RATIOS.get(family, ()):
            choices.setdefault(ratio, []).append(family)
    return list(choices.items())


def _options():
    with farm_ctx().db.session() as session:
        models = session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
    renderers = [m for m in models if not is_refiner(m.family)]
    return {
        "models": renderers,
        "refiners": [m for m in models if is_refiner(m.family)],
        "presets": _library().presets.listing(), "wildcards": _library().wildcards.listing(),
        "performance_modes": PERFORMANCE_MODES,
        "aspect_ratios": aspect_ratio_choices(m.family for m in renderers),
        "samplers": SAMPLERS, "schedules": SIGMA_SCHEDULES,
    }


def first_editing_model(ctx) -> str | None:
    """The first registered model of a family that edits from instructions (the image page's Edit), or None."""
    with ctx.db.session() as session:
        return session.execute(select(ModelEntry.id).where(ModelEntry.family.in_(editing_names()))
                               .order_by(ModelEntry.id).limit(1)).scalar_one_or_none()


def _quota_summary():
    with farm_ctx().db.session() as session:
        return me_report(session, g.dashboard_user)


# Fields of the form that show their own error; problems with any other field are listed above the form.
FIELD_SLOTS = frozenset({"prompt", "negative_prompt", "model", "variant", "preset", "performance", "aspect_ratio", "styles",
                         "num_images", "seed", "seed_count", "steps", "guidance_scale", "width", "height", "sampler",
                         "scheduler", "output_format", "clip_skip", "detail_guidance", "sag_scale", "priority", "refiner",
                         "refiner_switch", "name", "rows", "budget_images", "quota", "deadline"})


def _render_form(values, errors=None, status=200, message=None):
    chosen = values.get("styles", [])
    errors = errors or {}
    other = {field: text for field, text in errors.items() if field not in FIELD_SLOTS}
    return render_template("create.html", values=values, errors=errors, other_errors=other, message=message, styles=_styles("", chosen),
                           chosen_styles=chosen, quota=_quota_summary(), **_options()), status


def _values_from_form() -> dict:
    values = request.form.to_dict()
    for name in ("model", "aspect_ratio", "styles"):
        values[name] = request.form.getlist(name)
    return values


@bp.get("/create")
@login_required
def create():
    require_write()  # the page is a form to submit with; a read-only session has nothing to do here
    values: dict = {"model": [], "aspect_ratio": [], "styles": [], "num_images": 1, "seed_count": 1}
    ctx, user = farm_ctx(), g.dashboard_user
    source = request.args.get("from")  # copy the parameters of an output's job
    if source:
        output = job_service.get_output(ctx, user, source)
        with ctx.db.session() as session:
            job = session.get(Job, output.job_id)
            values.update(prefill_from_request(job.request))
            values["seed"] = output.seed
    if request.args.get("image_prompt"):
        values["image_prompt"] = str(job_service.get_output(ctx, user, request.args["image_prompt"]).id)
    # References (multi-reference families): each one an output this user can see, in order.
    values["references"] = [str(job_service.get_output(ctx, user, ref).id) for ref in request.args.getlist("reference")]
    if request.args.get("prompt"):
        values["prompt"] = request.args["prompt"]  # an image's description (the image page's Describe button)
    if request.args.get("edit"):
        # Edit an image from an instruction (the image page's Edit): the prompt is the instruction, and an
        # editing model is chosen unless the request names one.
        values.update(image_mode="edit", parent_output=str(job_service.get_output(ctx, user, request.args["edit"]).id))
        if not values["model"]:
            values["model"] = [model_id for model_id in [first_editing_model(ctx)] if model_id]
    return _render_form(values)


@bp.get("/create/styles")
@login_required
def style_choices():
    chosen = request.args.getlist("styles")
    return render_template("partials/styles.html", styles=_styles(request.args.get("q", ""), chosen), chosen_styles=chosen)


@bp.post("/create/check")
@login_required
def check():
    """The dry run: job count, images, GPU seconds and what the quota has left, or what to fix."""
    try:
        submission = read_create_form(request.form, request.files)
        req = campaign_service.parse_campaign(submission.campaign_payload(dry_run=True), submission.rows_text, submission.rows_format)
        result = campaign_service.submit_campaign(farm_ctx(), g.dashboard_user, req)
    except RequestError as exc:
        return render_template("partials/check.html", errors=field_errors(exc)), 200
    except QuotaExceededError as exc:
        return render_template("partials/check.html", errors={"quota": str(exc)}), 200
    return render_template("partials/check.html", result=result, campaign=submission.is_campaign, quota=_quota_summary())


@bp.post("/create/rows-preview")
@login_required
def rows_preview():
    """The first rows of an uploaded CSV/JSONL file, as the campaign will read them."""
    upload = request.files.get("rows")
    if upload is None or not upload.filename:
        return render_template("partials/rows_preview.html", rows=[], total=0, error=None)
    fmt = campaign_service.rows_format(upload.filename)
    if fmt is None:
        return render_template("partials/rows_preview.html", rows=[], total=0, error="upload a .csv or .jsonl file")
    try:
        rows = campaign_service.parse_rows(upload.read().decode("utf-8-sig"), fmt)
    except UnicodeDecodeError:
        return render_template("partials/rows_preview.html", rows=[], total=0, error="the file must be UTF-8 text")
    except RequestError as exc:
        message = "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
        return render_template("partials/rows_preview.html", rows=[], total=0, error=message)
    columns = sorted({key for row in rows[:10] for key in row})
    return render_template("partials/rows_preview.html", rows=rows[:10], columns=columns, total=len(rows), error=None)


@bp.post("/create")
@login_required
def submit():
    ctx, user = farm_ctx(), g.dashboard_user
    values = _values_from_form()
    try:
        submission = read_create_form(request.form, request.files)
        if submission.is_campaign:
            req = campaign_service.parse_campaign(submission.campaign_payload(dry_run=False), submission.rows_text,
                                                  submission.rows_format)
            result = campaign_service.submit_campaign(ctx, user, req)
            return redirect(url_for("dashboard.campaign", campaign_id=result["id"]))
        job = job_service.submit_job(ctx, user, submission.job_request, interface="dashboard")
    except RequestError as exc:
        return _render_form(values, field_errors(exc), 422, "The request needs fixing: see the marked fields.")
    except QuotaExceededError as exc:
        return *_render_form(values, {"quota": str(exc)}, 429), retry_after(exc)
    return redirect(url_for("dashboard.job", job_id=job.id))


