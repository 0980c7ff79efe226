"""What the event streams of a job or a campaign say (issue 19): the feeds
read the database (status, stored progress, outputs) and turn live messages
from workers (progress, previews; never stored) into events. A campaign's
stream also says each of its jobs' placement on a worker (``job`` events).

A feed is transport-neutral: it returns ``(event, data)`` pairs and keeps
what it has already said, so a stream sends only changes. Visibility is
checked once, when the feed is opened, with the rules of GET job/campaign
(others' answer 404). Event ids count the outputs already sent, so a client
reconnecting with ``Last-Event-ID`` is not sent them again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import and_, or_, select

from farm import states
from farm.context import FarmContext
from farm.models import Job, JobStatus, Output, User

logger = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]
# Outputs one database read of a campaign feed sends at most; the rest follow
# on the next read.
CAMPAIGN_OUTPUTS_PER_READ = 200


# A campaign stream's job events follow its jobs while they are on a worker.
PLACED = (JobStatus.assigned.value, JobStatus.running.value)


def job_event(job_id, status: str, worker: str | None, attempt: int) -> dict[str, Any]:
    """A campaign's job changed status: placed on a worker, started, or left its worker."""
    return {"job": str(job_id), "status": status, "worker": worker, "attempt": attempt}


def output_event(output: Output) -> dict[str, Any]:
    return {"id": str(output.id), "job": str(output.job_id), "index": output.index,
            "width": output.width, "height": output.height,
            "url": f"/api/v1/outputs/{output.id}/image", "lineage_url": f"/api/v1/outputs/{output.id}"}


class JobFeed:
    kind = "job"

    def __init__(self, ctx: FarmContext, user: User, job_id: str, after: int = 0) -> None:
        from farm.services.jobs import parse_uuid, visible_job

        self.ctx = ctx
        self.id = parse_uuid(job_id, "job")
        with ctx.db.session() as session:
            job = visible_job(session, user, self.id)  # 404 for others' jobs, before anything streams
            self.campaign_id = job.campaign_id
        self.sent_outputs = after
        self.status: str | None = None
        self.progress: tuple | None = None
        self.final = False

    @property
    def cursor(self) -> int:
        return self.sent_outputs

    def read(self) -> list[Event]:
        """What changed in the database since the last read."""
        with self.ctx.db.session() as session:
            job = session.get(Job, self.id)
            if job is None:  # deleted with its user
                self.final = True
                return [("end", {"reason": "gone"})]
            events: list[Event] = []
            if job.status != self.status:
                self.status = job.status
                events.append(("status", {"status": job.status, "attempt": job.attempt, "worker": job.worker_id,
                                          "error": job.error if job.status in ("failed", "canceled") else None}))
            total = job.progress_total or job.steps
            step = total if job.status == "succeeded" else job.progress_step
            progress = (step, total, job.eta_s)
            if progress != self.progress and (job.status in ("running", "succeeded") or self.progress is None):
                self.progress = progress
                events.append(("progress", {"step": step, "total": total, "eta_s": job.eta_s}))
            for output in job.outputs[self.sent_outputs:]:
                self.sent_outputs += 1
                events.append(("output", output_event(output)))
            if states.is_final(job.status):
                self.final = True
                events.append(("end", {"reason": "final", "status": job.status}))
        return events

    def live(self, message: dict[str, Any]) -> list[Event]:
        """Events from a worker's live message; ``changed`` means read the database."""
        return _live_events(message, previews=True)


class CampaignFeed:
    kind = "campaign"

    def __init__(self, ctx: FarmContext, user: User, campaign_id: str, after: int = 0) -> None:
        from farm.services.campaigns import visible_campaign

        self.ctx = ctx
        self.user = user
        with ctx.db.session() as session:
            self.id = visible_campaign(session, user, campaign_id).id
        self.sent_outputs = after
        self.last_output: tuple | None = None
        self.progress: dict | None = None
        self.status: str | None = None
        # The campaign's placed jobs (assigned or running) as last said: job id -> (status, worker, attempt).
        self.placed: dict = {}
        self.final = False

    @property
    def cursor(self) -> int:
        return self.sent_outputs

    def read(self) -> list[Event]:
        from farm.services.campaigns import campaign_view

        view = campaign_view(self.ctx, self.user, str(self.id))
        events: list[Event] = []
        if view["status"] != self.status:
            self.status = view["status"]
            events.append(("status", {"status": view["status"]}))
        progress = {key: view.get(key) for key in ("jobs", "images", "counts", "percent", "images_per_minute", "eta_s")}
        if progress != self.progress:
            self.progress = progress
            events.append(("progress", progress))
        events += self._job_changes()
        events += [("output", output_event(output)) for output in self._new_outputs()]
        unfinished = sum(view["counts"].get(s, 0) for s in ("queued", "assigned", "running"))
        if not unfinished and view["status"] in ("completed", "canceled"):
            self.final = True
            events.append(("end", {"reason": "final", "status": view["status"]}))
        return events

    def _job_changes(self) -> list[Event]:
        """A ``job`` event for each job placed on a worker, started, or gone from
        its worker (finished, canceled, re-queued) since the last read. Only the
        placed jobs are read (the campaign-and-status index): they are as many
        as the farm's workers run at once, however large the campaign. A job
        placed and finished between two reads shows as its output alone."""
        columns = (Job.id, Job.status, Job.worker_id, Job.attempt)
        with self.ctx.db.session() as session:
            placed = {row.id: (row.status, row.worker_id, row.attempt) for row in session.execute(
                select(*columns).where(Job.campaign_id == self.id, Job.status.in_(PLACED)))}
            left = [job_id for job_id in self.placed if job_id not in placed]
            gone = {row.id: (row.status, row.worker_id, row.attempt)
                    for row in session.execute(select(*columns).where(Job.id.in_(left)))} if left else {}
        events = [("job", job_event(job_id, *state)) for job_id, state in placed.items() if self.placed.get(job_id) != state]
        events += [("job", job_event(job_id, *state)) for job_id, state in gone.items()]
        self.placed = placed
        return events

    def _new_outputs(self) -> list[Output]:
        query = (select(Output).join(Job, Job.id == Output.job_id).where(Job.campaign_id == self.id)
                 .order_by(Output.created_at, Output.id))
        with self.ctx.db.session() as session:
            if self.last_output is None:
                # Until the first output is sent (or on a resume), skip what the client already has.
                query = query.offset(self.sent_outputs)
            else:
                at, last_id = self.last_output
                query = query.where(or_(Output.created_at > at, and_(Output.created_at == at, Output.id > last_id)))
            outputs = list(session.execute(query.limit(CAMPAIGN_OUTPUTS_PER_READ)).scalars())
        if outputs:
            self.last_output = (outputs[-1].created_at, outputs[-1].id)
        self.sent_outputs += len(outputs)
        return outputs

    def live(self, message: dict[str, Any]) -> list[Event]:
        return _live_events(message, previews=False)


def _live_events(message: dict[str, Any], previews: bool) -> list[Event]:
    kind = message.get("type")
    fields = {key: message.get(key) for key in ("step", "total", "eta_s")}
    if kind == "progress" or (kind == "preview" and not previews):
        return [("progress", fields | ({"job": message["job"]} if "job" in message else {}))]
    if kind == "preview" and message.get("jpeg"):
        return [("preview", {**fields, "mime": "image/jpeg", "data": message["jpeg"]})]
    return []


def open_feed(ctx: FarmContext, user: User, kind: str, key: str, after: int = 0) -> JobFeed | CampaignFeed:
    return (JobFeed if kind == "job" else CampaignFeed)(ctx, user, key, after)

