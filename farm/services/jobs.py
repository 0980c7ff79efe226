"""Job services: submit, look up, list and cancel. Each call owns one transaction."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, true
from sqlalchemy.orm import Session

from farm import states
from farm.context import FarmContext
from farm.models import Job, JobStatus, Output, QueueForecast, User, WebhookDelivery, utcnow
from farm.costs import RenderTimes
from farm.generation.wildcards import single_image_params
from farm.loras import lora_infos
from farm.registry import model_infos
from farm.services import webhooks
from farm.services.quotas import Cost, reserve
from farm.spec import FieldProblem, RequestError, SourceImage, deadline_problem, parse_request, resolve_request

logger = logging.getLogger(__name__)


class NotFoundError(Exception):
    pass


class ConflictError(Exception):
    pass


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFoundError(f"no {what} {value!r}") from None


def find_output_source(session: Session, user: User, value: str, field: str) -> SourceImage:
    """An output this user can see, as a source image; else a RequestError naming ``field``."""
    try:
        output_id = uuid.UUID(str(value))
    except ValueError:
        raise RequestError([FieldProblem(field, f"{value!r} is not an output id")]) from None
    output = session.get(Output, output_id)
    if output is None or not can_see(session, user, output.user_id):
        raise RequestError([FieldProblem(field, f"no output {value} that you can see")])
    return SourceImage(object_key=output.object_key, width=output.width, height=output.height,
                       parent_output=str(output.id))


def _image_sources(ctx: FarmContext, session: Session, user: User, req) -> tuple[SourceImage | None, SourceImage | None]:
    """The source image and mask an image-to-image request names, looked up for this user."""
    from farm.services.uploads import find_upload

    source = mask = None
    if req.parent_output is not None:
        source = find_output_source(session, user, req.parent_output, "parent_output")
    elif req.image is not None:
        source = find_upload(ctx, user, req.image, "image")
    if req.mask is not None and req.image_mode == "inpaint":  # elsewhere the request check refuses the mask
        mask = find_upload(ctx, user, req.mask, "mask")
        if source is not None and (mask.width, mask.height) != (source.width, source.height):
            raise RequestError([FieldProblem("mask", f"the mask is {mask.width}x{mask.height} but the image is {source.width}x{source.height}; they must match")])
    return source, mask


def _stored_images(ctx: FarmContext, session: Session, user: User, items, field: str) -> list[SourceImage]:
    """Each of ``items`` (image prompts, references: farm.spec.StoredImageRequest)
    as a stored image this user may read. Another owner's upload or output
    answers exactly like a missing one."""
    from farm.services.uploads import find_upload

    found = []
    for i, item in enumerate(items):
        where = f"{field}.{i}"
        if (item.image is None) == (item.parent_output is None):
            raise RequestError([FieldProblem(where, "give image (an upload id) or parent_output (an output id), one of them")])
        if item.image is not None:
            found.append(find_upload(ctx, user, item.image, f"{where}.image"))
        else:
            found.append(find_output_source(session, user, item.parent_output, f"{where}.parent_output"))
    return found


def submit_job(ctx: FarmContext, user: User, payload: Any, interface: str = "api") -> Job:
    """Check, resolve, reserve and queue one job; ``interface`` says where it came
    from (farm.models.INTERFACES), for its lineage. A ``webhook`` in the payload
    (farm.spec.WebhookRequest; adapters pass their clients' webhook URL this
    way) announces the job's end; the job's webhook_secret is the secret to
    hand back once."""
    req = parse_request(payload)
    problem = deadline_problem(req.deadline, utcnow())
    if problem is not None:
        raise RequestError([problem])
    # The webhook's URL is checked (it resolves) before the transaction opens.
    webhook_url, webhook_secret = webhooks.accept(req.webhook, ctx.settings) if req.webhook else (None, None)
    with ctx.db.transaction() as session:
        infos = model_infos(session)
        source, mask = _image_sources(ctx, session, user, req) if req.image_mode else (None, None)
        resolved = resolve_request(req, infos, ctx.settings, source=source, mask=mask,
                                   loras=lora_infos(session) if req.loras or req.performance else None,
                                   image_prompts=_stored_images(ctx, session, user, req.image_prompts, "image_prompts")
                                   if req.image_prompts else None,
                                   references=_stored_images(ctx, session, user, req.references, "references")
                                   if req.references else None)
        estimate = RenderTimes.load(session).estimate(resolved.model_id, infos[resolved.model_id].family, resolved.width,
                                                      resolved.height, resolved.steps, resolved.num_images)
        job = Job(
            id=uuid.uuid4(),
            reserved_gpu_seconds=estimate,
            user_id=user.id,
            model_id=resolved.model_id,
            request=resolved.request,
            params=resolved.params,
            width=resolved.width,
            height=resolved.height,
            steps=resolved.steps,
            num_images=resolved.num_images,
            seed=resolved.seed,
            priority=resolved.priority,
            interface=interface,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            deadline=req.deadline,
            # Vary, upscale, inpaint, ... of a stored output: the image page lists what was made from it.
            parent_output=uuid.UUID(source.parent_output) if source is not None and source.parent_output else None,
        )
        # The reservation and the job commit together, or neither does.
        reserve(session, user, Cost(1, resolved.num_images, estimate, resolved.width * resolved.height, resolved.steps),
                job_id=job.id, model_id=resolved.model_id)
        session.add(job)
        if webhook_url:
            session.add(WebhookDelivery(job_id=job.id, state="waiting"))  # due once the job ends (farm.services.webhooks)
        session.flush()
    # Commit before enqueue: the scheduler reads the committed row.
    ctx.events.wake_scheduler()
    logger.info("job %s submitted by %s (%s)", job.id, user.name, job.model_id)
    return job


def can_see(session: Session, user: User, owner_id: int) -> bool:
    """Admins see everything; members their own and their team's."""
    if user.is_admin or owner_id == user.id:
        return True
    if user.team_id is None:
        return False
    return session.execute(select(User.team_id).where(User.id == owner_id)).scalar_one_or_none() == user.team_id


def visible_job(session: Session, user: User, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    # Anything a user may not see answers exactly like a missing job.
    if job is None or not can_see(session, user, job.user_id):
        raise NotFoundError(f"no job {job_id}")
    return job


def get_job(ctx: FarmContext, user: User, job_id: str, wait_s: float = 0.0) -> Job:
    job_uuid = parse_uuid(job_id, "job")
    with ctx.db.session() as session:
        job = visible_job(session, user, job_uuid)
    if wait_s > 0 and not states.is_final(job.status):
        latest = job

        def is_final() -> bool:
            nonlocal latest
            with ctx.db.session() as session:
                latest = visible_job(session, user, job_uuid)
            return states.is_final(latest.status)

        ctx.events.wait_job(job_uuid, is_final, wait_s)
        job = latest
    return job


@dataclass
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def queue_standing(ctx: FarmContext, job: Job) -> dict[str, Any] | None:
    """Where a queued job stands: its position and predicted start from the scheduler's last pass (one row read).

    None unless queued. ``at_risk``: the predicted start plus the job's own
    estimate passes its deadline (the view pops it into its own field).
    """
    if job.status != JobStatus.queued.value:
        return None
    with ctx.db.session() as session:
        row = session.get(QueueForecast, job.model_id)
    standing = {"position": None, "predicted_start": None, "computed_at": None, "at_risk": False}
    if row is None:
        return standing
    standing["computed_at"] = row.computed_at.isoformat()
    try:
        index = row.job_ids.index(str(job.id))
    except ValueError:
        return standing  # not in the last pass's snapshot
    standing["position"] = row.positions[index]
    if row.starts_s[index] is not None:
        start = row.computed_at + dt.timedelta(seconds=row.starts_s[index])
        standing["predicted_start"] = start.isoformat()
        standing["at_risk"] = job.deadline is not None and \
            start + dt.timedelta(seconds=job.reserved_gpu_seconds or 0.0) > job.deadline
    return standing


def encode_cursor(job: Job) -> str:
    created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=dt.timezone.utc)  # SQLite drops the zone
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{job.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """The (created_at, id) a page ends at; a cursor this API did not write is refused."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None:  # every cursor this API writes carries its zone
            raise ValueError("naive timestamp")
        return when, uuid.UUID(job_id)
    except Exception:
        raise RequestError([FieldProblem("cursor", "not a cursor returned by this API")], status=400) from None


def visible_jobs(user: User):
    """The jobs a user may list, as a where clause: all for admins, else their own or their team's (the rule of can_see)."""
    if user.is_admin:
        return true()
    if user.team_id is None:
        return Job.user_id == user.id
    return Job.user_id.in_(select(User.id).where(User.team_id == user.team_id))


def list_jobs(ctx: FarmContext, user: User, *, status: str | None = None, campaign: str | None = None,
              cursor: str | None = None, limit: int = 50, any_owner: bool = False) -> JobPage:
    if not 1 <= limit <= 200:
        raise RequestError([FieldProblem("limit", "must be between 1 and 200")], status=400)
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if not any_owner:
        query = query.where(visible_jobs(user))
    if status:
        names = status.split(",")
        unknown = [name for name in names if name not in JobStatus.__members__]
        if unknown:
            raise RequestError([FieldProblem("status", f"unknown status {unknown[0]!r}; use {', '.join(JobStatus.__members__)}")], status=400)
        query = query.where(Job.status.in_(names))
    if campaign:
        query = query.where(Job.campaign_id == parse_uuid(campaign, "campaign"))
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    with ctx.db.session() as session:
        jobs = list(session.execute(query).scalars())
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(jobs, encode_cursor(jobs[-1]) if more else None)


def cancel_job(ctx: FarmContext, user: User, job_id: str) -> Job:
    job_uuid = parse_uuid(job_id, "job")
    with ctx.db.transaction() as session:
        job = visible_job(session, user, job_uuid)
        try:
            states.cancel_job(session, job_uuid)
        except states.InvalidTransitionError:
            raise ConflictError(f"job {job_id} is already {job.status}; only queued, assigned or running jobs can be canceled") from None
    ctx.events.job_changed(job_uuid)
    ctx.events.wake_scheduler()
    with ctx.db.session() as session:
        return visible_job(session, user, job_uuid)


def rerender_output(ctx: FarmContext, user: User, output_id: str, interface: str = "api") -> Job:
    """A new job that renders one output again from its job's resolved parameters and its seed."""
    output = get_output(ctx, user, output_id)
    with ctx.db.transaction() as session:
        original = session.get(Job, output.job_id)
        owner = session.get(User, user.id)
        # Narrowed to this output's image: its own wildcard draws and prompts.
        params = {**single_image_params(original.params, output.index), "seed": output.seed, "num_images": 1}
        job = Job(
            id=uuid.uuid4(), user_id=user.id, model_id=original.model_id, request=original.request, params=params,
            width=original.width, height=original.height, steps=original.steps, num_images=1, seed=output.seed,
            priority=original.priority, rerender_of=output.id, interface=interface,
            reserved_gpu_seconds=original.reserved_gpu_seconds / max(original.num_images, 1),
        )
        reserve(session, owner, Cost(1, 1, job.reserved_gpu_seconds, job.width * job.height, job.steps),
                job_id=job.id, model_id=job.model_id)
        session.add(job)
    ctx.events.wake_scheduler()
    return job


def jobs_made_from(ctx: FarmContext, user: User, output_id: uuid.UUID, limit: int) -> list[Job]:
    """The newest jobs made from an output that this user may see: its rerenders
    and the image-to-image jobs (vary, upscale, inpaint, ...) starting from it
    (both columns indexed), outputs loaded."""
    query = (select(Job).where(or_(Job.rerender_of == output_id, Job.parent_output == output_id), visible_jobs(user))
             .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
    with ctx.db.session() as session:
        return list(session.execute(query).scalars())


def rerender_match(ctx: FarmContext, job: Job) -> bool | None:
    """For a finished rerender: does the new image hash like the original? None until both exist."""
    if job.rerender_of is None or job.status != JobStatus.succeeded.value or not job.outputs:
        return None
    with ctx.db.session() as session:
        original = session.execute(select(Output.content_sha256).where(Output.id == job.rerender_of)).scalar_one_or_none()
    return None if original is None else original == job.outputs[0].content_sha256


def get_output(ctx: FarmContext, user: User, output_id: str) -> Output:
    output_uuid = parse_uuid(output_id, "output")
    with ctx.db.session() as session:
        output = session.get(Output, output_uuid)
        if output is None or not can_see(session, user, output.user_id):
            raise NotFoundError(f"no output {output_id}")
        return output
