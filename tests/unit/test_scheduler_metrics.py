"""The scheduler's metrics: queue gauges from the pass snapshot, placements,
re-queues, webhook results, the leader gauge and the health answers."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import requests
from prometheus_client import REGISTRY

from farm import states
from farm.context import build_context
from farm.localcluster import free_port
from farm.metrics_server import MetricsServer
from farm.models import Job, WebhookDelivery, Worker, utcnow
from farm.scheduler import gauges
from farm.scheduler.service import PassReport, Scheduler
from farm.services import webhooks
from farm.settings import Settings
from tests.support.factories import ensure_user, make_job


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, job_id, attempt, queue, evict=()) -> None:
        self.sent.append((job_id, attempt, queue, tuple(evict)))

    def send_preload(self, queue, model_id, evict=()) -> None:
        pass


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def add_worker(session, worker_id: str, **fields) -> None:
    values = dict(host="h", queue=f"q-{worker_id}", device="cpu", device_name="cpu", vram_total_gb=8, vram_free_gb=8,
                  max_pixels=1 << 22, families=["sd"])
    session.add(Worker(id=worker_id, **{**values, **fields}))


@pytest.fixture()
def farm(sqlite_settings):
    ctx = build_context(sqlite_settings)
    gauges.clear()
    yield ctx
    gauges.clear()
    ctx.db.dispose()


def test_a_pass_fills_the_queue_gauges_and_counts_placements(farm):
    ctx = farm
    with ctx.db.transaction() as session:
        ensure_user(session, "root", admin=True)
        add_worker(session, "w-online")
        add_worker(session, "w-draining", draining=True)
        add_worker(session, "w-gone", state="offline", last_heartbeat_at=utcnow() - dt.timedelta(hours=1))
        add_worker(session, "w-stopping", state="stopping")
    for user in ("alice", "alice", "root"):
        make_job(ctx, user=user, created_at=utcnow() - dt.timedelta(seconds=30))
    assigned_before = value("farm_scheduler_assignments_total", model="m-sd")
    waits_before = value("farm_queue_wait_seconds_count", model="m-sd")
    quick_waits_before = value("farm_queue_wait_seconds_bucket", model="m-sd", le="10.0")
    decisions_before = value("farm_scheduler_decision_seconds_count")
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(ctx, dispatcher)

    report = scheduler.run_pass()
    assert report.assigned == 1 and len(dispatcher.sent) == 1  # one worker takes work, one job at a time
    # The gauges show the snapshot the pass placed from.
    assert value("farm_queued_jobs", model="m-sd", user_class="member") == 2
    assert value("farm_queued_jobs", model="m-sd", user_class="admin") == 1
    assert {state: value("farm_workers", state=state) for state in ("online", "draining", "stopping", "offline")} == \
        {"online": 1, "draining": 1, "stopping": 1, "offline": 1}
    assert REGISTRY.get_sample_value("farm_worker_heartbeat_age_seconds", {"worker": "w-online"}) is not None
    assert REGISTRY.get_sample_value("farm_worker_heartbeat_age_seconds", {"worker": "w-gone"}) is None
    assert value("farm_scheduler_assignments_total", model="m-sd") == assigned_before + 1
    assert value("farm_queue_wait_seconds_count", model="m-sd") == waits_before + 1
    # Queued 30 s ago: the wait is counted above 10 s.
    assert value("farm_queue_wait_seconds_bucket", model="m-sd", le="10.0") == quick_waits_before
    assert value("farm_scheduler_decision_seconds_count") == decisions_before + 1

    scheduler._gauges_due = float("-inf")
    scheduler.run_pass()  # the worker is busy: nothing placed, the gauges move on
    assert value("farm_queued_jobs", model="m-sd", user_class="member") + \
        value("farm_queued_jobs", model="m-sd", user_class="admin") == 2
    assert value("farm_active_jobs", model="m-sd", status="assigned") == 1

    with ctx.db.transaction() as session:  # the queue empties, the placed job runs
        for job in session.query(Job).all():
            if job.status == "queued":
                states.cancel_job(session, job.id)
            else:
                states.start_job(session, job.id, job.attempt, job.worker_id, 30, instance_id="i")
    scheduler._gauges_due = float("-inf")
    scheduler.run_pass()
    assert value("farm_active_jobs", model="m-sd", status="running") == 1
    # Series that went away are gone, not left at their last value.
    assert REGISTRY.get_sample_value("farm_active_jobs", {"model": "m-sd", "status": "assigned"}) is None
    assert REGISTRY.get_sample_value("farm_queued_jobs", {"model": "m-sd", "user_class": "member"}) is None


def test_requeues_are_counted_by_reason(farm):
    ctx = farm
    long_ago = utcnow() - dt.timedelta(seconds=60)
    with ctx.db.transaction() as session:
        add_worker(session, "w-alive")
        add_worker(session, "w-lost", last_heartbeat_at=long_ago)
    expired, orphaned = make_job(ctx), make_job(ctx)
    with ctx.db.transaction() as session:
        states.assign_job(session, expired, 1, "w-alive", 30)
        states.assign_job(session, orphaned, 1, "w-lost", 30)
        session.get(Job, expired).lease_expires_at = long_ago
    before = {reason: value("farm_jobs_requeued_total", reason=reason) for reason in ("lease_expired", "worker_lost")}
    report = PassReport()
    Scheduler(ctx, RecordingDispatcher()).reap(report)
    assert report.requeued == 2
    assert value("farm_jobs_requeued_total", reason="lease_expired") == before["lease_expired"] + 1
    assert value("farm_jobs_requeued_total", reason="worker_lost") == before["worker_lost"] + 1


@pytest.mark.parametrize("error, attempts, result", [
    (None, 0, "delivered"),
    ("HTTP 500", 0, "retrying"),
    ("HTTP 500", 4, "gave_up"),
    (webhooks.REFUSED + "the address is a loopback address", 0, "refused"),
])
def test_webhook_deliveries_are_counted_by_result(error, attempts, result):
    from farm.metrics import register_component

    register_component("scheduler")  # the sender runs in the leading scheduler
    settings = Settings(webhook_max_attempts=5)
    delivery = WebhookDelivery(attempts=attempts, state="pending")
    before = value("farm_webhook_deliveries_total", result=result)
    webhooks._record(delivery, settings, error, "job x")
    assert value("farm_webhook_deliveries_total", result=result) == before + 1


def test_the_loop_leads_times_its_passes_and_answers_health(farm):
    ctx = farm
    scheduler = Scheduler(ctx, RecordingDispatcher())
    server = MetricsServer("127.0.0.1", 0, scheduler.liveness, scheduler.readiness).start()
    base = f"http://127.0.0.1:{server.port}"
    passes_before = value("farm_scheduler_pass_seconds_count")
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    assert requests.get(f"{base}/healthz/ready", timeout=5).status_code == 503  # not started yet
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while value("farm_scheduler_pass_seconds_count") < passes_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert value("farm_scheduler_pass_seconds_count") >= passes_before + 2
        assert value("farm_scheduler_leader") == 1
        ready = requests.get(f"{base}/healthz/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["detail"] == "leader"
        assert requests.get(f"{base}/healthz/live", timeout=5).status_code == 200
        scrape = requests.get(f"{base}/metrics", timeout=5)
        assert scrape.status_code == 200 and 'component="scheduler"' in scrape.text
        assert "farm_scheduler_leader 1.0" in scrape.text
        assert requests.get(f"{base}/nowhere", timeout=5).status_code == 404
    finally:
        stop.set()
        thread.join(timeout=30)
        server.stop()


def test_a_scheduler_that_cannot_reach_its_database_is_live_but_not_ready(tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/farm",
                        scheduler_poll_s=0.1)
    scheduler = Scheduler(build_context(settings), RecordingDispatcher())
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while scheduler.last_tick is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert scheduler.liveness()[0] is True
        assert scheduler.readiness() == (False, "database not reached")
        assert value("farm_scheduler_leader") == 0
    finally:
        stop.set()
        thread.join(timeout=30)


def test_metrics_server_keeps_the_metrics_token():
    server = MetricsServer("127.0.0.1", 0, lambda: (True, ""), lambda: (True, ""), token="scrape-0123").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        denied = requests.get(f"{base}/metrics", timeout=5)
        assert denied.status_code == 401 and "FARM_METRICS_TOKEN" in denied.json()["error"]["message"]
        assert requests.get(f"{base}/metrics", headers={"Authorization": "Bearer scrape-0123"}, timeout=5).status_code == 200
        assert requests.get(f"{base}/healthz/live", timeout=5).status_code == 200  # probes need no token
    finally:
        server.stop()


def test_evictions_are_counted_by_the_model_evicted(farm):
    ctx = farm
    with ctx.db.transaction() as session:
        add_worker(session, "w-full", vram_total_gb=4, vram_free_gb=0.5, loaded_models=[{"id": "m-old", "vram_gb": 3.5}])
    make_job(ctx, created_at=utcnow() - dt.timedelta(minutes=10))
    before = value("farm_scheduler_evictions_total", model="m-old")
    dispatcher = RecordingDispatcher()
    Scheduler(ctx, dispatcher).run_pass()
    [(_, _, _, evict)] = dispatcher.sent
    assert evict == ("m-old",)
    assert value("farm_scheduler_evictions_total", model="m-old") == before + 1
