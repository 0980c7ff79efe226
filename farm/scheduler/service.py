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
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from sqlalchemy import case, delete, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from farm import logs, metrics, states
from farm.context import FarmContext
from farm.costs import estimate_render_s
from farm.db import classify_database_error, describe_database_error
from farm.models import (Campaign, CampaignStatus, Job, JobStatus, ModelEntry, Quota, QueueForecast, Team, User, Worker,
                         utcnow)
from farm.scheduler import gauges
from farm.scheduler.forecast import forecast
from farm.scheduler.jobqueue import as_job_queue
from farm.scheduler.livequeue import LiveQueue, SyncReport
from farm.services import webhooks
from farm.scheduler.policy import Decisions, Share, Snapshot, WorkerState, place
from farm.scheduler.preemption import CLASS_GAP, RunningJob, choose_preemptions, job_resumable

logger = logging.getLogger(__name__)

# pg_advisory_lock key: "farm" in ASCII.
LEADER_LOCK_KEY = 0x6661726D


# Recent GPU use decays: full weight for 5 minutes, half to 15, a fifth to 30.
USAGE_BANDS_S = ((300, 1.0), (900, 0.5), (1800, 0.2))
PRELOAD_TIMEOUT_S = 600.0
SHARES_TTL_S = 1.0
# The queue forecast (positions, predicted starts, campaigns at risk) is
# written after a pass no more often than this: it costs a play of the whole
# snapshot onto the slots (docs/benchmarks.md).
FORECAST_EVERY_S = 2.0
# ... of at most this many jobs at the head of the queue (about 75 ms a play
# at 5,000, docs/benchmarks.md); a job behind them shows no position.
FORECAST_MAX_JOBS = 5000
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
        # Counts the times this process took the lock: another scheduler may
        # have placed work in between (the kept queue is read afresh).
        self.term = 0

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
        self.term += 1
        return True

    def release(self) -> None:
        if self._connection is not None:
            # Unlocked first, so that the lock is free when this returns (a
            # dropped connection's server process lets it go a little later:
            # a standby asking at once was refused). Closing would return the
            # connection to the pool: drop the DBAPI connection instead, which
            # also ends the lock if the unlock did not reach the server.
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK_KEY})
            except Exception:  # the connection may already be dead
                pass
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
    preempted: int = 0  # running renders asked to stop for a waiting job of a higher class


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
        self._forecast_due = float("-inf")
        # The whole queue, kept across passes and read by its changes (farm/scheduler/livequeue.py).
        self.live = LiveQueue()
        self.last_sync: SyncReport | None = None
        self._term = 0  # the leadership term the kept queue was read in
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
                # The next pass is the retry, reading the whole queue afresh.
                self.live.invalidate()
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
        if self.leadership.term != self._term:
            # Newly the leader: another scheduler may have placed work meanwhile.
            self._term = self.leadership.term
            self.live.invalidate()
        if time.monotonic() - self._last_reap >= self.reap_every_s:
            self.reap(report)
            self._last_reap = time.monotonic()
        snapshot, queues = self.load_snapshot()
        if not snapshot.jobs:
            return report
        with metrics.SCHEDULER_DECISION_SECONDS.time():
            decisions = self.policy(snapshot)
        with self.ctx.db.transaction() as session:
            # One UPDATE for the pass's assignments; it returns each job's campaign: no second query for it.
            assigned, why_not = states.assign_jobs(
                session, [(a.job_id, a.attempt, a.worker_id) for a in decisions.assignments], self.ctx.settings.lease_s)
            self._note_unplaceable(session, decisions)
        committed = [a for a in decisions.assignments if a.job_id in assigned]
        campaigns = {campaign_id for campaign_id in assigned.values() if campaign_id is not None}
        # Not queued at that attempt any more: the kept queue was behind.
        for assignment in decisions.assignments:
            if assignment.job_id in why_not:
                with _job_log_context(assignment):
                    logger.info("skipped an assignment: %s", why_not[assignment.job_id])
        # The job's and its campaign's event streams show the assignment (and
        # the worker) now, not at their next safety-net read.
        for assignment in committed:
            self.ctx.events.job_changed(assignment.job_id)
        for campaign_id in campaigns:
            self.ctx.events.campaign_changed(campaign_id)
        report.assigned = len(committed)
        report.unplaceable = len(decisions.unplaceable)
        if self.ctx.settings.preemption and len(decisions.assignments) < len(snapshot.jobs):
            report.preempted = self.preempt(snapshot, decisions)
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
        if time.monotonic() >= self._forecast_due:
            self._forecast_due = time.monotonic() + FORECAST_EVERY_S
            self.publish_forecast(snapshot, {a.job_id: a.worker_id for a in committed})
        # Out of the kept queue now; a refused job that still waits comes back
        # with its next change or the next full read.
        for job_id in (*assigned, *why_not):
            self.live.discard(job_id)
        return report

    def preempt(self, snapshot: Snapshot, decisions: Decisions) -> int:
        """Ask the running renders the preemption pass picks to stop at their
        next step (farm/scheduler/preemption.py); their workers checkpoint
        them and hand them back. Returns how many were asked."""
        settings = self.ctx.settings
        placed = {a.job_id for a in decisions.assignments}
        # The highest class left waiting (queue order: the first job not placed).
        top = next((job.priority for job in snapshot.jobs if job.id not in placed), None)
        if top is None:
            return 0
        speeds = {w.id: w.speed or 1.0 for w in snapshot.workers}
        with self.ctx.db.session() as session:
            # Most passes end here: no running render is far enough below what waits.
            below = session.execute(select(Job.id).where(Job.status == JobStatus.running.value,
                                                         Job.priority <= top - CLASS_GAP).limit(1)).first()
            if below is None:
                return 0
            rows = session.execute(
                select(Job.id, Job.attempt, Job.worker_id, Job.model_id, Job.priority, Job.params, Job.width, Job.height,
                       Job.steps, Job.num_images, Job.progress_step, Job.progress_total, Job.eta_s, Job.preemptions,
                       Job.preempt_requested, ModelEntry.family)
                .join(ModelEntry, ModelEntry.id == Job.model_id)
                .where(Job.status == JobStatus.running.value)
            ).all()
        running = []
        for r in rows:
            # The worker's own ETA (measured on this render) where it has
            # reported one; the reference estimate on its speed before that.
            remaining_s = r.eta_s
            if remaining_s is None:
                work_s = estimate_render_s(r.family, r.width, r.height, r.steps, r.num_images) / speeds.get(r.worker_id, 1.0)
                remaining_s = work_s * (1.0 - (r.progress_step / r.progress_total if r.progress_total else 0.0))
            running.append(RunningJob(id=r.id, attempt=r.attempt, worker_id=r.worker_id, model_id=r.model_id,
                                      priority=r.priority, remaining_s=remaining_s,
                                      resumable=job_resumable(r.family, r.params), preemptions=r.preemptions,
                                      stopping=r.preempt_requested))
        chosen = choose_preemptions(snapshot, decisions, running, wait_s=settings.preempt_wait_s,
                                    max_preemptions=settings.max_preemptions)
        if not chosen:
            return 0
        asked = 0
        with self.ctx.db.transaction() as session:
            for preemption in chosen:
                if states.request_preemption(session, preemption.job_id, preemption.attempt, settings.max_preemptions):
                    asked += 1
                    logger.info("asked job %s attempt %d on %s to stop at its next step for job %s", preemption.job_id,
                                preemption.attempt, preemption.worker_id, preemption.for_job)
        return asked

    def publish_forecast(self, snapshot: Snapshot, placed: dict) -> None:
        """Write each model's queue forecast and each deadline campaign's predicted finish (issue 23).

        One row per model replaces the last pass's (GET /jobs/{id} reads one);
        a campaign whose prediction passes its deadline turns at risk, and the
        turn queues one campaign.at_risk webhook event.
        """
        # The first FORECAST_MAX_JOBS of the kept queue: a play costs in the jobs played.
        jobs = list(itertools.islice(snapshot.jobs, FORECAST_MAX_JOBS + len(placed)))
        result = forecast(dataclasses.replace(snapshot, jobs=jobs), placed)
        now = dt.datetime.fromtimestamp(snapshot.now, dt.timezone.utc)
        turned = []
        with self.ctx.db.transaction() as session:
            session.execute(delete(QueueForecast))
            for model_id, model in result.models.items():
                session.add(QueueForecast(model_id=model_id, computed_at=now, job_ids=[str(i) for i in model.job_ids],
                                          positions=model.positions, starts_s=model.starts_s))
            if result.campaign_finish_s:
                campaigns = session.execute(
                    select(Campaign).where(Campaign.id.in_(list(result.campaign_finish_s)), Campaign.deadline.is_not(None),
                                           Campaign.status == CampaignStatus.active.value)).scalars().all()
                for campaign in campaigns:
                    finish = now + dt.timedelta(seconds=result.campaign_finish_s[campaign.id])
                    at_risk = finish > campaign.deadline
                    if at_risk and not campaign.at_risk:
                        turned.append(campaign.id)
                        webhooks.queue_at_risk_event(session, campaign)
                    campaign.predicted_finish_at, campaign.at_risk = finish, at_risk
        for campaign_id in turned:
            logger.warning("campaign %s is at risk of missing its deadline", campaign_id)
            self.ctx.events.campaign_changed(campaign_id)

    @staticmethod
    def _count_placements(snapshot: Snapshot, committed: list, preloads: list) -> None:
        """Assignments and queue waits by model, and the models evicted to make room."""
        jobs = as_job_queue(snapshot.jobs)  # the kept queue itself: no walk of it
        for assignment in committed:
            job = jobs.get(assignment.job_id)
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
                session.execute(update(Worker).where(Worker.id.in_(lost)).values(state="offline", loaded_models=[], host_models=[], updated_at=now))
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
            self.last_sync = self.live.sync(session, now)
            queue = self.live.queue
            # Most wake-ups after a completion find nothing to place: they
            # read no more, unless the gauges are due.
            if not queue and time.monotonic() < self._gauges_due:
                gauges.publish_queue(self.live.depth)
                return Snapshot(jobs=[], workers=[], now=now.timestamp()), {}
            # Every live worker: the placeable ones are picked below, the
            # others are counted by state for the gauges. Offline rows pile up
            # (a pod's name per worker under Kubernetes) and are only counted,
            # no more often than the gauges are due.
            every_worker = session.execute(
                select(Worker.id, Worker.queue, Worker.families, Worker.max_pixels, Worker.vram_total_gb,
                       Worker.vram_free_gb, Worker.loaded_models, Worker.serves_models, Worker.capacity, Worker.draining,
                       Worker.speed, Worker.load_gbps, Worker.host_models, Worker.h2d_gbps, Worker.ram_cache_gb,
                       Worker.state, Worker.last_heartbeat_at, Worker.device)
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
            gauges.publish_snapshot(self.live.depth, every_worker, active, now, self._offline_workers)
            self._gauges_due = time.monotonic() + GAUGES_EVERY_S
            if not queue:
                return Snapshot(jobs=[], workers=[], now=now.timestamp()), {}
            # Stopping and unhealthy workers are alive but take no work.
            workers = [w for w in every_worker if w.state == "online" and w.last_heartbeat_at >= fresh_since]
            shares, team_shares = self._shares(session, set(queue.users), set(self.live.teams), active, now)
            campaign_work = self._campaign_work(session, set(self.live.deadline_campaigns))
        in_use: dict[str, set[str]] = {}
        busy_by_worker: dict[str, int] = {}
        for row in active:
            in_use.setdefault(row.worker_id, set()).add(row.model_id)
            busy_by_worker[row.worker_id] = busy_by_worker.get(row.worker_id, 0) + 1
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
                host_models=frozenset(m["id"] for m in w.host_models), h2d_gbps=w.h2d_gbps, ram_cache_gb=w.ram_cache_gb,
                in_use=frozenset(in_use.get(w.id, ())), cuda=w.device == "cuda",
            ))
        # The kept queue itself: the policy never changes it (farm/scheduler/jobqueue.py).
        snapshot = Snapshot(jobs=queue, workers=views, now=now.timestamp(), shares=shares, team_shares=team_shares,
                            campaign_work_s=campaign_work)
        return snapshot, {w.id: w.queue for w in workers}

    @staticmethod
    def _campaign_work(session, campaign_ids: set) -> dict:
        """Queued work (seconds at speed 1) of each campaign with a deadline: one grouped count per shape.

        A campaign's jobs come in few shapes (model, size, steps), so this
        reads a handful of rows however long the campaign, and counts the jobs
        beyond the snapshot's limit too.
        """
        if not campaign_ids:
            return {}
        work: dict = {}
        for row in session.execute(
            select(Job.campaign_id, ModelEntry.family, Job.width, Job.height, Job.steps, func.count())
            .join(ModelEntry, ModelEntry.id == Job.model_id)
            .where(Job.campaign_id.in_(campaign_ids), Job.status == JobStatus.queued.value)
            .group_by(Job.campaign_id, ModelEntry.family, Job.width, Job.height, Job.steps)
        ).all():
            work[row[0]] = work.get(row[0], 0.0) + row[5] * estimate_render_s(row[1], row[2], row[3], row[4])
        return work

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
