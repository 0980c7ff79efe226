"""The live scheduler: leadership, reaping lost work, snapshot, place, dispatch.

One pass: re-queue the jobs of lost workers and expired leases, read a
snapshot, call the pure policy, commit the assignments (each a conditional
update, so a job is never assigned twice even if two schedulers race), then
send one Celery task per assignment to the worker's own queue. A task lost in
transit leaves its job assigned until the lease expires and it is re-queued.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from sqlalchemy import case, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from farm import logs, metrics, states
from farm.context import FarmContext
from farm.costs import estimate_render_s
from farm.db import classify_database_error, describe_database_error
from farm.models import Campaign, CampaignStatus, Job, JobStatus, ModelEntry, Quota, Team, User, Worker, utcnow
from farm.scheduler import gauges
from farm.scheduler.policy import Decisions, QueuedJob, Share, Snapshot, WorkerState, place
from farm.families import refiner_names

logger = logging.getLogger(__name__)

# pg_advisory_lock key: "farm" in ASCII.
LEADER_LOCK_KEY = 0x6661726D
MAX_JOBS_PER_SNAPSHOT = 5000


# Recent GPU use decays: full weight for 5 minutes, half to 15, a fifth to 30.
USAGE_BANDS_S = ((300, 1.0), (900, 0.5), (1800, 0.2))
PRELOAD_TIMEOUT_S = 600.0
SHARES_TTL_S = 1.0
# With nothing queued a pass reads no more than the queue; the worker and
# placed-job gauges are then refreshed from a full snapshot read this often.
GAUGES_EVERY_S = 1.0
# /healthz/live: the loop must have turned within this many polls (at least LIVE_MIN_S).
LIVE_POLLS = 30
LIVE_MIN_S = 60.0


class Dispatcher(Protocol):
    def send(self, job_id, attempt: int, queue: str, evict: tuple[str, ...] = ()) -> None: ...

    def send_preload(self, queue: str, model_id: str, evict: tuple[str, ...] = ()) -> None: ...


class CeleryDispatcher:
    def __init__(self, celery_app) -> None:
        self.celery_app = celery_app

    def send(self, job_id, attempt: int, queue: str, evict: tuple[str, ...] = ()) -> None:
        from farm.workers.tasks import RENDER_TASK

        kwargs = {"evict": list(evict)} if evict else {}
        self.celery_app.send_task(RENDER_TASK, args=[str(job_id), attempt], kwargs=kwargs, queue=queue, routing_key=queue)

    def send_preload(self, queue: str, model_id: str, evict: tuple[str, ...] = ()) -> None:
        from farm.workers.tasks import PRELOAD_TASK

        self.celery_app.send_task(PRELOAD_TASK, args=[model_id], kwargs={"evict": list(evict)}, queue=queue, routing_key=queue)


class Leadership:
    """Exactly one scheduler places work: a session-level advisory lock on
    Postgres, held on a dedicated connection; SQLite (embedded) has one."""

    def __init__(self, ctx: FarmContext) -> None:
        self.ctx = ctx
        self._connection = None
        # Whether the last acquire() reached the database (leader or not).
        self.reached_database = True

    def acquire(self) -> bool:
        if not self.ctx.db.is_postgres:
            return True
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                return True
            except DBAPIError:
                logger.warning("lost the database connection that held leadership")
                self.release()
        try:
            connection = self.ctx.db.engine.connect()
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK_KEY}).scalar()
            connection.commit()
        except DBAPIError as exc:
            logger.warning("cannot reach the database to take leadership: %s", describe_database_error(exc))
            self.reached_database = False
            return False
        self.reached_database = True
        if not got:
            connection.close()
            return False
        logger.info("this scheduler is now the leader")
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is not None:
            # Closing would return the connection, lock and all, to the pool:
            # drop the DBAPI connection instead, which ends the lock with it.
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # the connection may already be dead
                pass
            self._connection = None

    @property
    def held(self) -> bool:
        return self._connection is not None or not self.ctx.db.is_postgres


@dataclass
class PassReport:
    requeued: int = 0
    lost_workers: list[str] = field(default_factory=list)
    assigned: int = 0
    dispatched: int = 0
    unplaceable: int = 0


class Scheduler:
    def __init__(self, ctx: FarmContext, dispatcher: Dispatcher, policy: Callable[[Snapshot], Decisions] = place) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.policy = policy
        self.leadership = Leadership(ctx)
        # Reaping scans for lost workers and expired leases; it need not run on
        # every wake-up (those come with each submission and completion).
        self.reap_every_s = min(1.0, ctx.settings.heartbeat_s)
        self._last_reap = float("-inf")
        # Since when (time.monotonic()) this process has reached the database
        # without a break; None while it cannot. Silence that overlaps our own
        # outage is not a worker's: a worker's heartbeats and lease renewals
        # failed too. Calls outside run() (tests, tools) reap at once.
        self.database_since: float | None = float("-inf")
        # worker id -> (model id, deadline): a worker loading a model the
        # scheduler asked for counts as busy until its heartbeat shows it held.
        self.preloading: dict[str, tuple[str, float]] = {}
        self._shares_cache: tuple[float, dict[int, Share], dict[int, Share]] | None = None
        self._gauges_due = float("-inf")
        self._offline_workers = 0  # counted when the gauges are due
        metrics.register_component("scheduler")
        # time.monotonic() of the loop's latest turn (None before run()): /healthz/live.
        self.last_tick: float | None = None

    def liveness(self) -> tuple[bool, str]:
        """Live: the loop turned recently (a pass stuck for minutes is not)."""
        if self.last_tick is None:
            return True, "starting"
        age = time.monotonic() - self.last_tick
        limit = max(LIVE_MIN_S, LIVE_POLLS * self.ctx.settings.scheduler_poll_s)
        return age <= limit, f"loop turned {age:.1f}s ago (limit {limit:.0f}s)"

    def readiness(self) -> tuple[bool, str]:
        """Ready: the last pass (or a standby's leadership check) reached the database."""
        if self.last_tick is None or self.database_since is None:
            return False, "database not reached"
        return True, "leader" if self.leadership.held else "standby"

    def run(self, stop: threading.Event) -> None:
        from farm.janitor import Janitor

        wait = self.ctx.events.scheduler_waiter()
        poll_s = self.ctx.settings.scheduler_poll_s
        logger.info("scheduler started (poll %.2fs)", poll_s)
        from farm.services.webhooks import WebhookSender

        leading = lambda: self.leadership.held  # noqa: E731
        # The leader also sweeps objects of attempts that did not complete, and
        # sends webhooks from its own thread (a slow receiver never delays
        # placement; a standby sending too would post some deliveries twice).
        threading.Thread(target=Janitor(self.ctx).run, args=(stop, leading), name="farm-janitor", daemon=True).start()
        threading.Thread(target=WebhookSender(self.ctx).run, args=(stop, leading), name="farm-webhooks", daemon=True).start()
        metrics.note_build_info("scheduler")
        self.database_since = None
        was_leader = False
        while not stop.is_set():
            self.last_tick = time.monotonic()
            leader = self.leadership.acquire()
            self._note_database(self.leadership.reached_database)
            metrics.SCHEDULER_LEADER.set(1 if leader else 0)
            if not leader:
                if was_leader:
                    gauges.clear()
                was_leader = False
                stop.wait(poll_s)
                continue
            was_leader = True
            try:
                with metrics.SCHEDULER_PASS_SECONDS.time():
                    self.run_pass()
            except Exception as exc:
                # The next pass is the retry: a pass reads everything afresh.
                if classify_database_error(exc) is None:
                    logger.exception("scheduler pass failed")
                else:
                    self._note_database(False)
                    logger.warning("database unavailable during a pass: %s", describe_database_error(exc))
                stop.wait(poll_s)
            wait(poll_s)
        self.leadership.release()

    def run_pass(self) -> PassReport:
        report = PassReport()
        if time.monotonic() - self._last_reap >= self.reap_every_s:
            self.reap(report)
            self._last_reap = time.monotonic()
        snapshot, queues = self.load_snapshot()
        if not snapshot.jobs:
            return report
        with metrics.SCHEDULER_DECISION_SECONDS.time():
            decisions = self.policy(snapshot)
        committed = []
        campaigns = set()
        with self.ctx.db.transaction() as session:
            for assignment in decisions.assignments:
                with _job_log_context(assignment):
                    try:
                        # The assignment's UPDATE returns the job's campaign: no second query for it.
                        campaign_id = states.assign_job(session, assignment.job_id, assignment.attempt, assignment.worker_id,
                                                        self.ctx.settings.lease_s)
                    except states.JobStateError as exc:
                        logger.info("skipped an assignment: %s", exc)
                        continue
                committed.append(assignment)
                if campaign_id is not None:
                    campaigns.add(campaign_id)
            self._note_unplaceable(session, decisions)
        # The job's and its campaign's event streams show the assignment (and
        # the worker) now, not at their next safety-net read.
        for assignment in committed:
            self.ctx.events.job_changed(assignment.job_id)
        for campaign_id in campaigns:
            self.ctx.events.campaign_changed(campaign_id)
        report.assigned = len(committed)
        report.unplaceable = len(decisions.unplaceable)
        self._count_placements(snapshot, committed, decisions.preloads)
        for assignment in committed:
            with _job_log_context(assignment):
                try:
                    self.dispatcher.send(assignment.job_id, assignment.attempt, queues[assignment.worker_id], assignment.evict)
                    report.dispatched += 1
                    logger.info("sent job %s attempt %d to worker %s", assignment.job_id, assignment.attempt, assignment.worker_id)
                except Exception as exc:
                    # The lease expires and the job is re-queued; nothing is lost.
                    logger.warning("could not send job %s to %s: %s", assignment.job_id, assignment.worker_id, exc)
        for preload in decisions.preloads:
            try:
                self.dispatcher.send_preload(queues[preload.worker_id], preload.model_id, preload.evict)
                self.preloading[preload.worker_id] = (preload.model_id, time.monotonic() + PRELOAD_TIMEOUT_S)
                logger.info("worker %s preloads %s", preload.worker_id, preload.model_id)
            except Exception as exc:
                logger.warning("could not ask %s to preload %s: %s", preload.worker_id, preload.model_id, exc)
        if committed:
            logger.info("assigned %d job(s)", len(committed))
        return report

    @staticmethod
    def _count_placements(snapshot: Snapshot, committed: list, preloads: list) -> None:
        """Assignments and queue waits by model, and the models evicted to make room."""
        jobs = {job.id: job for job in snapshot.jobs}
        for assignment in committed:
            job = jobs[assignment.job_id]
            metrics.SCHEDULER_ASSIGNMENTS.labels(model=job.model_id).inc()
            metrics.QUEUE_WAIT_SECONDS.labels(model=job.model_id).observe(max(0.0, snapshot.now - job.queued_at))
        for placed in (*committed, *preloads):
            for model_id in placed.evict:
                metrics.SCHEDULER_EVICTIONS.labels(model=model_id).inc()

    def _note_database(self, reached: bool) -> None:
        if not reached:
            self.database_since = None
        elif self.database_since is None:
            self.database_since = time.monotonic()

    def reap(self, report: PassReport) -> None:
        settings = self.ctx.settings
        if self.database_since is None or time.monotonic() - self.database_since < settings.heartbeat_timeout_s:
            # Back from a database outage (or just started): give workers a
            # heartbeat timeout to report and renew before judging them, so
            # their finished renders are not thrown away.
            return
        now = utcnow()
        silent_since = now - dt.timedelta(seconds=settings.heartbeat_timeout_s)
        with self.ctx.db.transaction() as session:
            lost = session.execute(
                select(Worker.id).where(Worker.state != "offline", Worker.last_heartbeat_at < silent_since)
            ).scalars().all()
            if lost:
                session.execute(update(Worker).where(Worker.id.in_(lost)).values(state="offline", loaded_models=[], updated_at=now))
                report.lost_workers = list(lost)
                logger.warning("workers lost (no heartbeat for %.0fs): %s", settings.heartbeat_timeout_s, ", ".join(lost))
            stranded = session.execute(
                select(Job.id, Job.attempt, Job.worker_id, Job.lease_expires_at, Job.campaign_id).where(
                    Job.status.in_([JobStatus.assigned.value, JobStatus.running.value]),
                    or_(Job.lease_expires_at < now, *([Job.worker_id.in_(lost)] if lost else [])),
                )
            ).all()
            requeued: list[str] = []
            for row in stranded:
                worker_lost = row.worker_id in lost
                reason = f"worker {row.worker_id} was lost" if worker_lost else f"lease on worker {row.worker_id} expired"
                with logs.log_context(job_id=row.id, attempt=row.attempt, worker=row.worker_id, campaign=row.campaign_id):
                    try:
                        if states.requeue_job(session, row.id, row.attempt, reason, settings.max_attempts) == JobStatus.queued:
                            requeued.append("worker_lost" if worker_lost else "lease_expired")
                        report.requeued += 1
                    except states.JobStateError as exc:
                        logger.info("not re-queued: %s", exc)
        for reason in requeued:  # counted once the transaction committed
            metrics.JOBS_REQUEUED.labels(reason=reason).inc()
        for row in stranded:
            self.ctx.events.job_changed(row.id)
        for campaign_id in {row.campaign_id for row in stranded if row.campaign_id is not None}:
            self.ctx.events.campaign_changed(campaign_id)

    def load_snapshot(self) -> tuple[Snapshot, dict[str, str]]:
        settings = self.ctx.settings
        now = utcnow()
        fresh_since = now - dt.timedelta(seconds=settings.heartbeat_timeout_s)
        with self.ctx.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.attempt, Job.user_id, Job.model_id, Job.width, Job.height, Job.steps, Job.priority,
                       Job.created_at, Job.excluded_workers, ModelEntry.family, ModelEntry.vram_gb, User.team_id, User.role,
                       Job.params["refiner"]["model"].as_string().label("refiner_id"))
                .join(ModelEntry, ModelEntry.id == Job.model_id)
                .join(User, User.id == Job.user_id)
                .outerjoin(Campaign, Campaign.id == Job.campaign_id)
                .where(Job.status == JobStatus.queued.value,
                       or_(Job.campaign_id.is_(None), Campaign.status != CampaignStatus.paused.value))
                .order_by(Job.priority.desc(), Job.created_at)
                .limit(MAX_JOBS_PER_SNAPSHOT)
            ).all()
            # Most wake-ups after a completion find nothing to place: they
            # read no more, unless the gauges are due.
            if not rows and time.monotonic() < self._gauges_due:
                gauges.publish_queue(rows)
                return Snapshot(jobs=[], workers=[], now=now.timestamp()), {}
            # Every live worker: the placeable ones are picked below, the
            # others are counted by state for the gauges. Offline rows pile up
            # (a pod's name per worker under Kubernetes) and are only counted,
            # no more often than the gauges are due.
            every_worker = session.execute(
                select(Worker.id, Worker.queue, Worker.families, Worker.max_pixels, Worker.vram_total_gb,
                       Worker.vram_free_gb, Worker.loaded_models, Worker.serves_models, Worker.capacity, Worker.draining,
                       Worker.speed, Worker.load_gbps, Worker.state, Worker.last_heartbeat_at)
                .where(Worker.state != "offline")
            ).all()
            if time.monotonic() >= self._gauges_due:
                self._offline_workers = session.execute(
                    select(func.count()).select_from(Worker).where(Worker.state == "offline")).scalar_one()
            active = session.execute(
                select(Job.worker_id, Job.model_id, Job.user_id, User.team_id, Job.status)
                .join(User, User.id == Job.user_id)
                .where(Job.status.in_([JobStatus.assigned.value, JobStatus.running.value]))
            ).all()
            gauges.publish_snapshot(rows, every_worker, active, now, self._offline_workers)
            self._gauges_due = time.monotonic() + GAUGES_EVERY_S
            if not rows:
                return Snapshot(jobs=[], workers=[], now=now.timestamp()), {}
            # Stopping and unhealthy workers are alive but take no work.
            workers = [w for w in every_worker if w.state == "online" and w.last_heartbeat_at >= fresh_since]
            # A job with an SDXL refiner needs room for both models.
            refiner_gb = dict(session.execute(select(ModelEntry.id, ModelEntry.vram_gb)
                                              .where(ModelEntry.family.in_(refiner_names()))).all())
            shares, team_shares = self._shares(session, {r.user_id for r in rows},
                                               {r.team_id for r in rows if r.team_id is not None}, active, now)
        in_use: dict[str, set[str]] = {}
        busy_by_worker: dict[str, int] = {}
        for row in active:
            in_use.setdefault(row.worker_id, set()).add(row.model_id)
            busy_by_worker[row.worker_id] = busy_by_worker.get(row.worker_id, 0) + 1
        jobs = [
            QueuedJob(
                id=r.id, attempt=r.attempt, user_id=r.user_id, model_id=r.model_id, family=r.family,
                model_gb=r.vram_gb + (refiner_gb.get(r.refiner_id, 0.0) if r.refiner_id else 0.0),
                width=r.width, height=r.height, priority=r.priority, queued_at=r.created_at.timestamp(),
                excluded_workers=frozenset(r.excluded_workers or ()), team_id=r.team_id,
                est_seconds=estimate_render_s(r.family, r.width, r.height, r.steps),
            )
            for r in rows
        ]
        views = []
        for w in workers:
            loaded = {m["id"]: m["vram_gb"] for m in w.loaded_models}
            busy = busy_by_worker.get(w.id, 0)
            if self._still_preloading(w.id, loaded):
                busy = w.capacity
            views.append(WorkerState(
                id=w.id, families=frozenset(w.families), max_pixels=w.max_pixels, vram_total_gb=w.vram_total_gb,
                vram_free_gb=w.vram_free_gb, loaded_models=loaded,
                serves_models=frozenset(w.serves_models) if w.serves_models is not None else None,
                busy=busy, capacity=w.capacity, draining=w.draining, speed=w.speed, load_gbps=w.load_gbps,
                in_use=frozenset(in_use.get(w.id, ())),
            ))
        snapshot = Snapshot(jobs=jobs, workers=views, now=now.timestamp(), shares=shares, team_shares=team_shares)
        return snapshot, {w.id: w.queue for w in workers}

    def _still_preloading(self, worker_id: str, loaded: dict[str, float]) -> bool:
        pending = self.preloading.get(worker_id)
        if pending is None:
            return False
        model_id, deadline = pending
        if model_id in loaded or time.monotonic() > deadline:
            del self.preloading[worker_id]
            return False
        return True

    @staticmethod
    def _decayed_usage(now: dt.datetime):
        """Recent GPU seconds, each job weighted by how long ago it finished."""
        return case(
            *[(Job.finished_at >= now - dt.timedelta(seconds=age), Job.gpu_seconds * factor) for age, factor in USAGE_BANDS_S],
            else_=0.0,
        )

    @staticmethod
    def _concurrency_limits(session, owner, ids: set[int]) -> dict[int, int]:
        """max_concurrent_jobs by owner id, where set; ``owner`` is Quota.user_id or Quota.team_id."""
        return dict(session.execute(
            select(owner, Quota.max_concurrent_jobs).where(owner.in_(ids), Quota.max_concurrent_jobs.is_not(None))
        ).all())

    def _load_team_shares(self, session, team_ids: set[int], now: dt.datetime) -> dict[int, Share]:
        if not team_ids:
            return {}
        oldest = now - dt.timedelta(seconds=USAGE_BANDS_S[-1][0])
        usage = dict(session.execute(
            select(User.team_id, func.sum(self._decayed_usage(now)))
            .join(User, User.id == Job.user_id)
            .where(User.team_id.in_(team_ids), Job.finished_at >= oldest, Job.gpu_seconds.is_not(None))
            .group_by(User.team_id)
        ).all())
        weights = dict(session.execute(select(Team.id, Team.share_weight).where(Team.id.in_(team_ids))).all())
        limits = self._concurrency_limits(session, Quota.team_id, team_ids)
        return {team_id: Share(weight=weights.get(team_id, 1.0), usage_s=float(usage.get(team_id) or 0.0),
                               max_running=limits.get(team_id))
                for team_id in team_ids}

    def _shares(self, session, user_ids: set[int], team_ids: set[int], active, now: dt.datetime):
        """Users' and teams' shares. Weights, limits and decayed use move on a
        scale of minutes, so they are read at most every SHARES_TTL_S for the
        same waiting users; running counts are always this pass's."""
        cached = self._shares_cache
        if cached is None or time.monotonic() > cached[0] or not (user_ids <= cached[1].keys() and team_ids <= cached[2].keys()):
            cached = (time.monotonic() + SHARES_TTL_S, self._load_shares(session, user_ids, now),
                      self._load_team_shares(session, team_ids, now))
            self._shares_cache = cached
        running: dict[int, int] = {}
        team_running: dict[int, int] = {}
        for row in active:
            running[row.user_id] = running.get(row.user_id, 0) + 1
            if row.team_id is not None:
                team_running[row.team_id] = team_running.get(row.team_id, 0) + 1
        shares = {u: dataclasses.replace(cached[1][u], running=running.get(u, 0)) for u in user_ids}
        return shares, {t: dataclasses.replace(cached[2][t], running=team_running.get(t, 0)) for t in team_ids}

    def _load_shares(self, session, user_ids: set[int], now: dt.datetime) -> dict[int, Share]:
        """Each waiting user's weight, concurrency limit and recent GPU use, decayed by age."""
        if not user_ids:
            return {}
        usage_expr = self._decayed_usage(now)
        oldest = now - dt.timedelta(seconds=USAGE_BANDS_S[-1][0])
        usage = dict(session.execute(
            select(Job.user_id, func.sum(usage_expr))
            .where(Job.user_id.in_(user_ids), Job.finished_at >= oldest, Job.gpu_seconds.is_not(None))
            .group_by(Job.user_id)
        ).all())
        weights = dict(session.execute(select(User.id, User.share_weight).where(User.id.in_(user_ids))).all())
        limits = self._concurrency_limits(session, Quota.user_id, user_ids)
        return {
            user_id: Share(weight=weights.get(user_id, 1.0), usage_s=float(usage.get(user_id) or 0.0),
                           max_running=limits.get(user_id))
            for user_id in user_ids
        }

    def _note_unplaceable(self, session, decisions: Decisions) -> None:
        """Say on each unplaceable job why it waits (GET /jobs/{id} shows it).

        One UPDATE per distinct reason, not per job: a backlog of thousands of
        jobs for a model nobody can hold is noted every pass.
        """
        by_note: dict[str, list] = {}
        for job_id, reason in decisions.unplaceable.items():
            by_note.setdefault(f"waiting: no worker can run this job ({reason})"[:4000], []).append(job_id)
        for note, job_ids in by_note.items():
            for start in range(0, len(job_ids), 1000):
                session.execute(
                    update(Job)
                    .where(Job.id.in_(job_ids[start:start + 1000]), Job.status == JobStatus.queued.value,
                           or_(Job.error.is_(None), Job.error != note))
                    .values(error=note)
                    .execution_options(synchronize_session=False)
                )


def _job_log_context(assignment):
    return logs.log_context(job_id=assignment.job_id, attempt=assignment.attempt, worker=assignment.worker_id)


def run_scheduler(ctx: FarmContext, stop: threading.Event | None = None) -> None:
    from farm.metrics_server import start_metrics_server
    from farm.workers.celery_app import create_celery

    stop = stop or threading.Event()
    scheduler = Scheduler(ctx, CeleryDispatcher(create_celery(ctx.settings)))
    server = start_metrics_server(ctx.settings, scheduler.liveness, scheduler.readiness)
    try:
        scheduler.run(stop)
    finally:
        if server is not None:
            server.stop()
