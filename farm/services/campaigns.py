"""Campaigns: a base request times a matrix and/or rows, submitted as one.

Expansion is a cross product of the matrix (field -> list of values), then
one job per row on top (each row overrides fields). Every expanded request
is checked like a single job; the jobs, the campaign and the quota
reservation are written in one transaction with a bulk insert, or nothing is.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import logging
import secrets
import uuid
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import Field, ValidationError
from sqlalchemy import insert, or_, select

from farm import states, tallies
from farm.csvsafe import SafeDictWriter
from farm.context import FarmContext
from farm.costs import RenderTimes
from farm.generation.wildcards import TOKEN, substitute, unknown_wildcard
from farm.models import INTEGER_MAX, Campaign, CampaignStatus, Job, JobStatus, Output, User, WebhookDelivery, utcnow
from farm.loras import lora_infos
from farm.registry import model_infos
from farm import safejson
from farm.safejson import CheckedModel
from farm.services.campaign_progress import progress, progress_stats
from farm.services.jobs import ConflictError, NotFoundError, parse_uuid
from farm.services.quotas import Cost, reserve
from farm.services import webhooks
from farm.spec import MAX_SEED, FieldProblem, GenerationRequest, RequestError, WebhookRequest, deadline_problem, parse_request, resolve_request

logger = logging.getLogger(__name__)

MAX_CAMPAIGN_JOBS = 100_000
# "seed_count": [N] draws N seeds; "wildcards": ["color", ...] makes an axis
# "__color__" of the wildcard's lines, each substituted where the prompts say __color__.
MATRIX_FIELDS = (set(GenerationRequest.model_fields) - {"priority", "webhook"}) | {"seed_count", "wildcards"}
# CSV cells are text: these fields are converted.
_INT_FIELDS = {"width", "height", "steps", "seed", "num_images"}
_FLOAT_FIELDS = {"guidance_scale"}
_LIST_FIELDS = {"styles"}


class WebhookSpec(WebhookRequest):
    """A job's webhook shape, announcing the campaign's end (and each job's, with per_job)."""

    per_job: bool = False  # also one POST per finished job


class CampaignRequest(CheckedModel):
    name: str = Field(min_length=1, max_length=200)
    base: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "Generation field -> values, expanded as a cross product. Also \"seed_count\": [N] (N random seeds), "
        "\"wildcards\": [\"color\", ...] (one job per line of each wildcard, the line put where the prompt or "
        "negative prompt says __color__) and \"__name__\": [\"a\", \"b\"] (your own lines for __name__)."))
    rows: list[dict[str, Any]] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-10, le=10)
    budget_images: int | None = Field(default=None, ge=1, le=INTEGER_MAX)
    deadline: dt.datetime | None = None
    webhook: WebhookSpec | None = None
    dry_run: bool = False


def parse_campaign(payload: Any, rows_text: str | None = None, rows_format: str | None = None) -> CampaignRequest:
    if not isinstance(payload, dict):
        raise RequestError([FieldProblem("body", "send a JSON object with name, base and a matrix and/or rows")])
    try:
        req = CampaignRequest.model_validate(payload)
    except ValidationError as exc:
        raise RequestError([FieldProblem(".".join(map(str, e["loc"])) or "body",
                                         "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
                            for e in exc.errors()]) from None
    if rows_text is not None:
        req.rows = req.rows + parse_rows(rows_text, rows_format or "csv")
    problems = []
    for key, values in req.matrix.items():
        if key not in MATRIX_FIELDS and not is_wildcard_axis(key):
            problems.append(FieldProblem(f"matrix.{key}", f"not a generation field; use one of {', '.join(sorted(MATRIX_FIELDS))}"))
        elif key == "seed_count":
            if len(values) != 1 or not isinstance(values[0], int) or not 1 <= values[0] <= MAX_CAMPAIGN_JOBS:
                problems.append(FieldProblem("matrix.seed_count", f"give one number of seeds, 1..{MAX_CAMPAIGN_JOBS}, as [N]"))
        elif not values:
            problems.append(FieldProblem(f"matrix.{key}", "needs at least one value"))
        elif key == "wildcards" or is_wildcard_axis(key):
            problems += _wildcard_axis_problems(key, values)
    if "seed_count" in req.matrix and "seed" in req.matrix:
        problems.append(FieldProblem("matrix.seed_count", "give seeds or seed_count, not both"))
    # Jobs of a campaign are announced through the campaign's webhook (per_job), never their own.
    hooked = (["base"] if "webhook" in req.base else []) + [f"rows.{i}" for i, row in enumerate(req.rows) if "webhook" in row]
    problems += [FieldProblem(f"{where}.webhook", "a campaign's jobs are announced by the campaign's webhook; give "
                              "webhook {url, per_job: true} on the campaign instead") for where in hooked]
    # Its jobs are due when the campaign is: none of their own.
    dated = (["base"] if "deadline" in req.base else []) + [f"rows.{i}" for i, row in enumerate(req.rows) if "deadline" in row]
    problems += [FieldProblem(f"{where}.deadline", "a campaign's jobs are due at the campaign's deadline; give "
                              "deadline on the campaign instead") for where in dated]
    problem = deadline_problem(req.deadline, utcnow())
    if problem is not None:
        problems.append(problem)
    if problems:
        raise RequestError(problems)
    return req


def is_wildcard_axis(key: str) -> bool:
    """Whether a matrix key is a wildcard's axis (``__color__``)."""
    return TOKEN.fullmatch(key) is not None


def _wildcard_axis_problems(key: str, values: list[Any]) -> list[FieldProblem]:
    if not all(isinstance(value, str) and value.strip() for value in values):
        what = "wildcard names like \"color\"" if key == "wildcards" else "lines of text"
        return [FieldProblem(f"matrix.{key}", f"must be a list of {what}")]
    if key == "wildcards" and len(set(values)) != len(values):
        return [FieldProblem("matrix.wildcards", "names a wildcard twice")]
    return []


def with_wildcard_axes(req: CampaignRequest, library) -> CampaignRequest:
    """``req`` with its matrix's "wildcards" turned into one axis per wildcard (``__color__``: its lines)."""
    names = req.matrix.get("wildcards")
    if not names:
        return req
    matrix = {key: values for key, values in req.matrix.items() if key != "wildcards"}
    problems = []
    for name in names:
        name = name.strip().lower()
        axis = f"__{name}__"
        if name not in library:
            problems.append(FieldProblem("matrix.wildcards", str(unknown_wildcard(name, library.names()))))
        elif axis in matrix:
            problems.append(FieldProblem("matrix.wildcards", f"{axis} is also a matrix key of its own; keep one"))
        else:
            matrix[axis] = list(library.get(name).lines)
    if problems:
        raise RequestError(problems)
    return req.model_copy(update={"matrix": matrix})


def rows_format(filename: str | None) -> str | None:
    """"jsonl" or "csv" from an uploaded rows file's name; None for any other name."""
    name = (filename or "").lower()
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv" if name.endswith(".csv") else None


def parse_rows(text: str, fmt: str) -> list[dict[str, Any]]:
    """Rows from an uploaded CSV (header line of field names) or JSONL file."""
    rows: list[dict[str, Any]] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = safejson.loads(line)
            except safejson.UnsafeJSONError as exc:
                raise RequestError([FieldProblem(f"rows line {number}", str(exc))]) from None
            if not isinstance(row, dict):
                raise RequestError([FieldProblem(f"rows line {number}", "each line must be a JSON object")])
            rows.append(row)
        return rows
    if fmt != "csv":
        raise RequestError([FieldProblem("rows", f"unknown format {fmt!r}; upload .csv or .jsonl")])
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise RequestError([FieldProblem("rows", "the CSV needs a header line of field names")])
    for number, record in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key is None or value is None or value == "":
                continue
            key = key.strip()
            try:
                if key in _INT_FIELDS:
                    row[key] = int(value)
                elif key in _FLOAT_FIELDS:
                    row[key] = float(value)
                elif key in _LIST_FIELDS:
                    row[key] = [part.strip() for part in value.split("|") if part.strip()]
                else:
                    row[key] = value
            except ValueError:
                raise RequestError([FieldProblem(f"rows line {number}", f"{key}={value!r} is not a number")]) from None
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Axis:
    """One dimension of a campaign's expansion: a matrix key, or "row" for its rows.

    values is None where the campaign row does not hold them (the seeds drawn for
    seed_count); each job then carries its own value in Job.campaign_axes."""

    name: str
    size: int
    values: list[Any] | None


def campaign_axes(matrix: dict[str, list[Any]] | None, row_count: int) -> list[Axis]:
    """The axes of an expansion in the order expand() walks them: matrix keys
    sorted by name (the last varies fastest), then rows."""
    axes = []
    for key, values in (matrix or {}).items():
        if key == "seed_count":
            axes.append(Axis("seed", int(values[0]), None))
        else:
            axes.append(Axis(key, len(values), list(values)))
    axes.sort(key=lambda axis: axis.name)
    if row_count:
        axes.append(Axis("row", row_count, list(range(1, row_count + 1))))
    return axes


def position(axes: list[Axis], picks: dict[str, int]) -> int:
    """The expansion index of the job at the given value index of each axis (mixed radix)."""
    index = 0
    for axis in axes:
        index = index * axis.size + picks[axis.name]
    return index


def _override(merged: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """merged with override's fields on top; the override wins on sizes too: an
    aspect_ratio drops the width and height below it, a width or height the
    aspect_ratio below it (issue 19: a matrix over aspect_ratio on a base with
    width/height was refused as giving both)."""
    out = dict(merged)
    if "aspect_ratio" in override:
        out.pop("width", None)
        out.pop("height", None)
    if "width" in override or "height" in override:
        out.pop("aspect_ratio", None)
    out.update(override)
    if isinstance(out.get("styles"), str):  # a plain style name is a list of one
        out["styles"] = [out["styles"]]
    return out


@dataclass(frozen=True)
class ExpandedJob:
    request: dict[str, Any]
    index: int  # place in the expansion, 0-based
    axes: dict[str, Any]  # matrix key -> this job's value, "row" -> row number (1-based)


def expand(req: CampaignRequest) -> list[ExpandedJob]:
    """The campaign's jobs: the cross product of the matrix (keys by name, the
    last varying fastest), each combination once per row; matrix values
    override the base and row fields override both."""
    matrix = dict(req.matrix)
    if "seed_count" in matrix:
        count = matrix.pop("seed_count")[0]
        rng = secrets.SystemRandom()
        matrix["seed"] = [rng.randrange(MAX_SEED + 1) for _ in range(count)]
    keys = sorted(matrix)
    combos = list(itertools.product(*(matrix[k] for k in keys))) if keys else [()]
    rows = req.rows or [{}]
    total = len(combos) * len(rows)
    if total > MAX_CAMPAIGN_JOBS:
        raise RequestError([FieldProblem("matrix", f"expands to {total} jobs; a campaign has at most {MAX_CAMPAIGN_JOBS}")], status=422)
    expanded = []
    used: set[str] = set()
    for combo in combos:
        values = dict(zip(keys, combo))
        lines = {key: value for key, value in values.items() if is_wildcard_axis(key)}
        combined = _override(req.base, {key: value for key, value in values.items() if key not in lines})
        for number, row in enumerate(rows, start=1):
            axes = {**values, "row": number} if req.rows else values
            request = _override(combined, row)
            for axis, line in lines.items():
                if _put_line(request, axis, line):
                    used.add(axis)
            expanded.append(ExpandedJob({**request, "priority": req.priority}, len(expanded), axes))
    unused = [key for key in keys if is_wildcard_axis(key) and key not in used]
    if unused:
        raise RequestError([FieldProblem(f"matrix.{key}", f"no prompt or negative_prompt of the campaign says {key}; "
                                                           f"write {key} where each line should go") for key in unused])
    return expanded


def _put_line(request: dict[str, Any], axis: str, line: str) -> bool:
    """Put a wildcard axis's line where the request's prompts say ``axis``; whether they did."""
    found = False
    for name in ("prompt", "negative_prompt"):
        if isinstance(request.get(name), str):
            request[name], here = substitute(request[name], axis[2:-2], line)
            found = found or here
    return found


def submit_campaign(ctx: FarmContext, user: User, req: CampaignRequest) -> dict[str, Any]:
    webhook_url, webhook_secret = webhooks.accept(req.webhook, ctx.settings) if req.webhook else (None, None)
    if req.matrix.get("wildcards"):
        from farm.generation.resources import generation_resources

        # Stored resolved, so the campaign's grid keeps its axes when a wildcard file changes.
        req = with_wildcard_axes(req, generation_resources(ctx.settings).wildcards)
    requests_ = expand(req)
    with ctx.db.transaction() as session:
        infos = model_infos(session)
        loras = lora_infos(session)
        render_times = RenderTimes.load(session)
        rows, images, gpu_s, largest, most_steps = [], 0, 0.0, 0, 0
        by_model: dict[str, tuple[int, float]] = {}
        for number, item in enumerate(requests_, start=1):
            try:
                resolved = resolve_request(parse_request(item.request), infos, ctx.settings, loras=loras)
            except RequestError as exc:
                where = f"job {number} of {len(requests_)}"
                raise RequestError([FieldProblem(f"{where}: {p.field}", p.message) for p in exc.problems]) from None
            estimate = render_times.estimate(resolved.model_id, infos[resolved.model_id].family, resolved.width,
                                             resolved.height, resolved.steps, resolved.num_images)
            images += resolved.num_images
            gpu_s += estimate
            model_images, model_gpu = by_model.get(resolved.model_id, (0, 0.0))
            by_model[resolved.model_id] = (model_images + resolved.num_images, model_gpu + estimate)
            largest = max(largest, resolved.width * resolved.height)
            most_steps = max(most_steps, resolved.steps)
            rows.append(dict(
                user_id=user.id, model_id=resolved.model_id, request=resolved.request, params=resolved.params,
                width=resolved.width, height=resolved.height, steps=resolved.steps, num_images=resolved.num_images,
                seed=resolved.seed, priority=resolved.priority, reserved_gpu_seconds=estimate,
                campaign_index=item.index, campaign_axes=item.axes,
            ))
        cost = Cost(len(rows), images, gpu_s, largest, most_steps)
        if req.budget_images is not None and images > req.budget_images:
            raise RequestError([FieldProblem("budget_images", f"the campaign makes {images} images; its budget is {req.budget_images}")])
        if req.dry_run:
            # Checked against the quota too, then rolled back: nothing is created.
            reserve(session, user, cost)
            session.rollback()
            return {"jobs": cost.jobs, "cost": cost.as_dict()}
        campaign = Campaign(
            id=uuid.uuid4(), user_id=user.id, team_id=user.team_id, name=req.name, priority=req.priority,
            base=req.base, matrix=req.matrix or None, row_count=len(req.rows), job_count=len(rows), image_count=images,
            budget_images=req.budget_images, deadline=req.deadline,
            webhook_url=webhook_url, webhook_secret=webhook_secret,
            webhook_per_job=bool(req.webhook and req.webhook.per_job),
        )
        session.add(campaign)
        session.flush()
        now = utcnow()
        for row in rows:
            row.update(id=uuid.uuid4(), campaign_id=campaign.id, interface="campaign", created_at=now, updated_at=now)
        reserve(session, user, cost, campaign_id=campaign.id, by_model=by_model)
        session.execute(insert(Job), rows)
        tallies.create_rows(session, campaign.id, ((row["num_images"], row["reserved_gpu_seconds"]) for row in rows))
    ctx.events.wake_scheduler()
    logger.info("campaign %s (%s) submitted by %s: %d jobs", campaign.id, req.name, user.name, len(rows))
    submitted = {"id": str(campaign.id), "jobs": cost.jobs, "cost": cost.as_dict()}
    if webhook_url:
        submitted["webhook"] = {"url": webhook_url, "secret": webhook_secret}  # the only time the secret is shown
    return submitted


def visible_campaign(session, user: User, campaign_id: str) -> Campaign:
    campaign = session.get(Campaign, parse_uuid(campaign_id, "campaign"))
    # Members see their own and their team's campaigns; anything else is missing.
    if campaign is None or not (user.is_admin or campaign.user_id == user.id
                                or (user.team_id is not None and campaign.team_id == user.team_id)):
        raise NotFoundError(f"no campaign {campaign_id}")
    return campaign


def campaign_view(ctx: FarmContext, user: User, campaign_id: str) -> dict[str, Any]:
    with ctx.db.transaction() as session:
        campaign = visible_campaign(session, user, campaign_id)
        now = utcnow()
        stats = progress_stats(session, [campaign.id], now)[campaign.id]
        unfinished = sum(stats[s].count for s in ("queued", "assigned", "running") if s in stats)
        if unfinished == 0 and campaign.status in (CampaignStatus.active.value, CampaignStatus.paused.value):
            campaign.complete(utcnow())
        webhook = webhook_status(session, campaign)
    return {
        "id": str(campaign.id), "name": campaign.name, "status": campaign.status, "priority": campaign.priority,
        "jobs": campaign.job_count, "images": campaign.image_count,
        **progress(campaign, stats, now),
        "budget_images": campaign.budget_images, "deadline": campaign.deadline.isoformat() if campaign.deadline else None,
        "at_risk": campaign.at_risk, "predicted_finish_at": _iso(campaign.predicted_finish_at),
        "deadline_missed": campaign.deadline_missed_s is not None, "deadline_missed_s": campaign.deadline_missed_s,
        "created_at": campaign.created_at.isoformat(), "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
        "webhook": webhook,
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def webhook_status(session, campaign: Campaign) -> dict[str, Any] | None:
    """Where the campaign's webhook deliveries stand, for its owner: the completion
    event's state and last error, and the latest per-job delivery (never the secret)."""
    if campaign.webhook_url is None:
        return None
    # Job deliveries only: a campaign.at_risk event shares the table.
    latest = session.execute(select(WebhookDelivery).where(WebhookDelivery.campaign_id == campaign.id,
                                                           or_(WebhookDelivery.event.is_(None), WebhookDelivery.event.like("job.%")))
                             .order_by(WebhookDelivery.updated_at.desc(), WebhookDelivery.id.desc()).limit(1)).scalar_one_or_none()
    return {
        "url": campaign.webhook_url,
        "per_job": campaign.webhook_per_job,
        "completion": {"state": campaign.webhook_state or "waiting", "attempts": campaign.webhook_attempts,
                       "last_error": campaign.webhook_last_error, "next_at": _iso(campaign.webhook_next_at)},
        "last_job_delivery": None if latest is None else {
            "job": str(latest.job_id), "event": latest.event, "state": latest.state, "attempts": latest.attempts,
            "last_error": latest.last_error, "at": _iso(latest.updated_at)},
    }


def set_paused(ctx: FarmContext, user: User, campaign_id: str, paused: bool) -> None:
    with ctx.db.transaction() as session:
        campaign = visible_campaign(session, user, campaign_id)
        wanted_from = CampaignStatus.active.value if paused else CampaignStatus.paused.value
        if campaign.status != wanted_from:
            raise ConflictError(f"campaign {campaign_id} is {campaign.status}; only {wanted_from} campaigns can be "
                                f"{'paused' if paused else 'resumed'}")
        campaign.status = CampaignStatus.paused.value if paused else CampaignStatus.active.value
        if paused:
            campaign.forget_prediction()
    ctx.events.wake_scheduler()
    ctx.events.campaign_changed(campaign.id)  # its event streams say so now


def cancel_campaign(ctx: FarmContext, user: User, campaign_id: str) -> int:
    with ctx.db.transaction() as session:
        campaign = visible_campaign(session, user, campaign_id)
        if campaign.status in (CampaignStatus.canceled.value, CampaignStatus.completed.value):
            raise ConflictError(f"campaign {campaign_id} is already {campaign.status}")
        canceled = states.cancel_campaign_jobs(session, campaign.id)
        campaign.status, campaign.finished_at = CampaignStatus.canceled.value, utcnow()
        campaign.forget_prediction()
    ctx.events.wake_scheduler()
    ctx.events.campaign_changed(campaign.id)
    return canceled


def retry_failed(ctx: FarmContext, user: User, campaign_id: str) -> int:
    """Queue the campaign's failed jobs again (a new attempt each), reserving their quota again."""
    with ctx.db.transaction() as session:
        campaign = visible_campaign(session, user, campaign_id)
        if campaign.status == CampaignStatus.canceled.value:
            raise ConflictError(f"campaign {campaign_id} is canceled")
        failed = session.execute(select(Job).where(Job.campaign_id == campaign.id, Job.status == JobStatus.failed.value)).scalars().all()
        if not failed:
            return 0
        owner = session.get(User, campaign.user_id)
        by_model: dict[str, tuple[int, float]] = {}
        for job in failed:
            model_images, model_gpu = by_model.get(job.model_id, (0, 0.0))
            by_model[job.model_id] = (model_images + job.num_images, model_gpu + job.reserved_gpu_seconds)
        reserve(session, owner, Cost(len(failed), sum(j.num_images for j in failed), sum(j.reserved_gpu_seconds for j in failed),
                                     max(j.width * j.height for j in failed), max(j.steps for j in failed)),
                campaign_id=campaign.id, by_model=by_model)
        states.retry_failed_jobs(session, [j.id for j in failed])
        campaign.status, campaign.finished_at = CampaignStatus.active.value, None
    ctx.events.wake_scheduler()
    ctx.events.campaign_changed(campaign.id)
    return len(failed)


MANIFEST_FIELDS = ("job_id", "status", "output_id", "index", "url", "lineage_url", "model", "prompt", "seed",
                   "width", "height", "steps", "object_key", "content_sha256", "byte_size")


def manifest_rows(ctx: FarmContext, user: User, campaign_id: str) -> Iterator[dict[str, Any]]:
    """Every job of the campaign with each of its outputs in expansion order, read in batches."""
    with ctx.db.session() as session:
        campaign = visible_campaign(session, user, campaign_id)
        query = (select(Job.id, Job.status, Job.model_id, Job.params, Output.id.label("output_id"), Output.index,
                        Output.object_key, Output.content_sha256, Output.byte_size, Output.lineage)
                 .outerjoin(Output, Output.job_id == Job.id).where(Job.campaign_id == campaign.id)
                 .order_by(Job.campaign_index, Job.id, Output.index).execution_options(yield_per=500))  # matrix order
        for row in session.execute(query):
            output = str(row.output_id) if row.output_id else None
            yield {
                "job_id": str(row.id), "status": row.status, "output_id": output, "index": row.index,
                "url": f"/api/v1/outputs/{output}/image" if output else None,
                "lineage_url": f"/api/v1/outputs/{output}" if output else None,
                "model": row.model_id, "prompt": row.params.get("final_prompt"), "seed": row.params.get("seed"),
                "width": row.params.get("width"), "height": row.params.get("height"), "steps": row.params.get("steps"),
                "object_key": row.object_key, "content_sha256": row.content_sha256, "byte_size": row.byte_size,
                "lineage": row.lineage,
            }


def manifest_csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def manifest_jsonl(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, default=str) + "\n"


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes are handed out as they are written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def export_zip(ctx: FarmContext, user: User, campaign_id: str) -> Iterator[bytes]:
    """The campaign's images and its manifest as a ZIP, streamed one image at a time."""
    rows = list(manifest_rows(ctx, user, campaign_id))  # metadata only; images are fetched one by one below
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for row in rows:
            if row["object_key"]:
                extension = row["object_key"].rsplit(".", 1)[-1]
                archive.writestr(f"images/{row['job_id']}-{row['index']}.{extension}", ctx.storage.get(row["object_key"]))
                yield sink.take()
        archive.writestr("manifest.jsonl", "".join(manifest_jsonl(iter(rows))))
        archive.writestr("manifest.csv", "".join(manifest_csv(iter(rows))))
    yield sink.take()
