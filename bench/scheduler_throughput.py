"""Scheduler assignments per second with 200 registered workers, against a
plain Celery task round trip on the same broker and consumer (issue 21).

What runs (all on this machine, nothing mocked):

- a real farm scheduler (``farm.scheduler.service.Scheduler`` with the real
  ``CeleryDispatcher``, the webhook sender and the janitor, as ``farm
  scheduler`` runs them) in its own process, timed pass by pass;
- PostgreSQL (a throwaway database) and Redis (a namespace of its own);
- 200 worker rows, registered and heartbeating, served by stand-in workers
  (``bench/standin_workers.py``): one consumer process (``--consumers``) on
  all 200 queues that takes each render message through the job state
  machine (fenced start, fenced completion with an output row) without
  rendering, so every job finishes at once. Workers: half 24 GB, half 80 GB,
  each starting with one of the three models held.

Workload shapes:

- burst: ``--burst`` jobs submitted at once as four users' campaigns (one
  user with 40 % of the jobs, then 30, 20, 10 %; three models, 512x512)
  through the campaign service one after the other, timed from the first
  campaign's commit (placing starts then) until the last job was assigned
  (assignments/s) and succeeded (jobs/s);
- steady: single jobs through the job service (what POST /api/v1/jobs does)
  arriving at ``--rate`` per second for ``--steady-s`` seconds, from the four
  users in turn across the three models, each handed at its due time to one
  of eight submitting threads.

Baseline, measured in the same run, interleaved with the farm rounds (order
alternating), on the same Redis broker and the same consumer process: a
no-op Celery task (``bench.noop``) that pushes its token onto a Redis list
the sender pops. Burst: the same number of tasks with one in flight per
worker queue (200, as the farm has at most one job per worker), the next
sent to a queue as soon as its previous one is back. Steady: tasks sent at
the same rate, round trip latency.

    python bench/scheduler_throughput.py [--workers 200] [--burst 5000] [--rounds 3] [--rate 20] [--steady-s 20]

Prints one JSON object (medians over rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchenv import farm_env, stop_process  # noqa: E402
from cpu import CpuMeter  # noqa: E402
from farm.localcluster import DEFAULT_REDIS_URL, temporary_postgres_database, wait_until  # noqa: E402

# (id, family, VRAM GB); workers start holding one each, round robin.
MODELS = (("sd15", "sd", 2.5), ("sdxl", "sdxl", 7.0), ("flux", "flux", 16.0))
# (name, role, share of the burst)
USERS = (("ada", "member", 0.4), ("ben", "member", 0.3), ("cy", "member", 0.2), ("dee", "admin", 0.1))
WORKER_VRAM_GB = (24.0, 80.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# ---------------------------------------------------------------------- the scheduler process


def serve_scheduler(record_path: Path) -> None:
    """`farm scheduler` (its run() starts the janitor and the webhook sender),
    with each pass timed; the passes go to ``record_path`` at SIGTERM."""
    from farm.context import build_context
    from farm.scheduler.policy import place
    from farm.scheduler.service import CeleryDispatcher, Scheduler
    from farm.workers.celery_app import create_celery

    passes: list[dict] = []
    policy_calls: list[tuple[float, int]] = []

    def timed_place(snapshot):
        started = time.perf_counter()
        decisions = place(snapshot)
        policy_calls.append((time.perf_counter() - started, len(snapshot.jobs)))
        return decisions

    class TimedDispatcher(CeleryDispatcher):
        sending_s = 0.0

        def send(self, *args, **kwargs) -> None:
            started = time.perf_counter()
            super().send(*args, **kwargs)
            self.sending_s += time.perf_counter() - started

    class TimedScheduler(Scheduler):
        snapshot_s = 0.0

        def load_snapshot(self):
            started = time.perf_counter()
            try:
                return super().load_snapshot()
            finally:
                self.snapshot_s = time.perf_counter() - started

        def run_pass(self):
            calls = len(policy_calls)
            dispatcher.sending_s = 0.0
            started = time.perf_counter()
            report = super().run_pass()
            elapsed = time.perf_counter() - started
            if len(policy_calls) > calls:  # a pass that had queued jobs to place
                policy_s, queued = policy_calls[-1]
                passes.append({"at": time.time(), "s": elapsed, "snapshot_s": self.snapshot_s, "policy_s": policy_s,
                               "send_s": dispatcher.sending_s, "queued": queued, "assigned": report.assigned})
            return report

    ctx = build_context()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dispatcher = TimedDispatcher(create_celery(ctx.settings))
    TimedScheduler(ctx, dispatcher, policy=timed_place).run(stop)
    record_path.write_text(json.dumps(passes))


# ---------------------------------------------------------------------- the farm's side


def set_up_farm(ctx, workers: int) -> dict[str, object]:
    """Models, users and ``workers`` registered stand-in worker rows; returns the users."""
    from sqlalchemy import insert

    from farm.auth import create_user
    from farm.models import ModelEntry, Worker
    from farm.families import renderer_names
    from standin_workers import worker_row

    with ctx.db.transaction() as session:
        for model_id, family, vram_gb in MODELS:
            session.add(ModelEntry(id=model_id, source=f"/models/{model_id}", family=family, vram_gb=vram_gb))
        session.flush()
        for name, role, _ in USERS:
            create_user(session, name, admin=role == "admin")
        families = list(renderer_names())
        session.execute(insert(Worker), [
            worker_row(name, WORKER_VRAM_GB[i % 2], {MODELS[i % 3][0]: MODELS[i % 3][2]}, families)
            for i, name in enumerate(worker_names(workers))])
    return users_by_name(ctx)


def users_by_name(ctx) -> dict[str, object]:
    from sqlalchemy import select

    from farm.models import User

    with ctx.db.session() as session:
        users = session.execute(select(User)).scalars().all()
        for user in users:
            session.expunge(user)
    return {user.name: user for user in users}


def worker_names(count: int) -> list[str]:
    return [f"w{i:03d}" for i in range(count)]


def submit_burst(ctx, users, total: int, round_no: int) -> tuple[list[str], float]:
    """Four users' campaigns (40/30/20/10 % of ``total``) across the three
    models; the campaigns' ids and when the first was committed (the scheduler
    starts placing then)."""
    from farm.services.campaigns import parse_campaign, submit_campaign

    ids, first_committed = [], None
    for name, _, share in USERS:
        # The matrix is models x seeds: the user's share, rounded to whole seeds.
        seeds = list(range(max(1, round(total * share / len(MODELS)))))
        req = parse_campaign({"name": f"{name} burst {round_no}", "base": {"prompt": f"{name}'s product shot", "width": 512,
                                                                            "height": 512, "steps": 20},
                              "matrix": {"model": [m for m, _, _ in MODELS], "seed": seeds}})
        ids.append(submit_campaign(ctx, users[name], req)["id"])
        first_committed = first_committed or time.time()
    return ids, first_committed


def campaign_jobs(ctx, campaign_ids: list[str]):
    from sqlalchemy import select

    from farm.models import Job

    with ctx.db.session() as session:
        return session.execute(select(Job.status, Job.created_at, Job.assigned_at, Job.started_at, Job.finished_at)
                               .where(Job.campaign_id.in_([uuid.UUID(c) for c in campaign_ids]))).all()


def unfinished(ctx, campaign_ids: list[str] | None = None, job_ids: list[uuid.UUID] | None = None) -> int:
    from sqlalchemy import func, select

    from farm.models import Job

    where = Job.campaign_id.in_([uuid.UUID(c) for c in campaign_ids]) if campaign_ids else Job.id.in_(job_ids)
    with ctx.db.session() as session:
        return session.execute(select(func.count()).select_from(Job)
                               .where(where, Job.status.in_(["queued", "assigned", "running"]))).scalar_one()


def farm_burst(ctx, users, total: int, round_no: int, timeout_s: float) -> dict:
    started = time.time()
    campaign_ids, first_committed = submit_burst(ctx, users, total, round_no)
    committed = time.time()
    wait_until(lambda: unfinished(ctx, campaign_ids) == 0, timeout_s, interval=0.25, what="the burst to finish")
    rows = campaign_jobs(ctx, campaign_ids)
    if any(row.status != "succeeded" for row in rows):
        raise RuntimeError(f"burst round {round_no}: {sum(r.status != 'succeeded' for r in rows)} job(s) did not succeed")
    last_assigned = max(row.assigned_at.timestamp() for row in rows)
    last_finished = max(row.finished_at.timestamp() for row in rows)
    waits = [(row.assigned_at - row.created_at).total_seconds() for row in rows]
    # Assigned -> started: the Celery delivery and the consumer's backlog (a
    # stand-in that could not keep up would show here); started -> finished:
    # the stand-in's completion transaction.
    delivery = [(row.started_at - row.assigned_at).total_seconds() for row in rows]
    completion = [(row.finished_at - row.started_at).total_seconds() for row in rows]
    return {"jobs": len(rows), "submit_s": committed - started, "window": (started, last_finished),
            "assigned_to_started_p50_s": percentile(delivery, 50), "assigned_to_started_p99_s": percentile(delivery, 99),
            "started_to_finished_p50_s": percentile(completion, 50),
            "assignments_per_s": len(rows) / (last_assigned - first_committed),
            "jobs_per_s": len(rows) / (last_finished - first_committed),
            "queue_wait_p50_s": percentile(waits, 50), "queue_wait_p99_s": percentile(waits, 99)}


def farm_steady(ctx, users, rate: float, seconds: float, timeout_s: float, submitters: int = 8) -> dict:
    """Single jobs through the job service at ``rate`` per second; each is
    handed at its due time to one of ``submitters`` threads (as concurrent
    API requests would be), so a slow submission does not hold back the next."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from farm.models import Job
    from farm.services.jobs import submit_job

    names = [name for name, _, _ in USERS]

    def submit(i: int) -> uuid.UUID:
        return submit_job(ctx, users[names[i % len(names)]], {
            "prompt": "a steady arrival", "model": MODELS[i % len(MODELS)][0], "width": 512, "height": 512, "steps": 20}).id

    count = int(rate * seconds)
    started = time.monotonic()
    with ThreadPoolExecutor(submitters, thread_name_prefix="bench-submit") as pool:
        futures = []
        for i in range(count):
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(submit, i))
        job_ids = [future.result() for future in futures]
    wait_until(lambda: unfinished(ctx, job_ids=job_ids) == 0, timeout_s, interval=0.25, what="the steady jobs to finish")
    with ctx.db.session() as session:
        rows = session.execute(select(Job.status, Job.created_at, Job.assigned_at, Job.finished_at)
                               .where(Job.id.in_(job_ids))).all()
    if any(row.status != "succeeded" for row in rows):
        raise RuntimeError("steady round: some jobs did not succeed")
    created = sorted(row.created_at.timestamp() for row in rows)
    waits = [(row.assigned_at - row.created_at).total_seconds() for row in rows]
    e2e = [(row.finished_at - row.created_at).total_seconds() for row in rows]
    return {"jobs": len(rows), "offered_per_s": rate, "submitted_per_s": (len(rows) - 1) / (created[-1] - created[0]),
            "window": (created[0], max(r.finished_at.timestamp() for r in rows)),
            "queue_wait_p50_s": percentile(waits, 50), "queue_wait_p99_s": percentile(waits, 99),
            "created_to_succeeded_p50_s": percentile(e2e, 50), "created_to_succeeded_p99_s": percentile(e2e, 99)}


# ---------------------------------------------------------------------- the baseline


class NoopSender:
    """Plain Celery round trips to the stand-in consumer on the same broker."""

    def __init__(self, settings, queues: list[str]) -> None:
        import redis

        from farm.workers.celery_app import create_celery
        from standin_workers import NOOP_DONE_LIST, NOOP_TASK

        self.app = create_celery(settings)
        self.task = NOOP_TASK
        self.queues = queues
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.done = settings.redis_namespace + NOOP_DONE_LIST
        self.redis.delete(self.done)

    def send(self, queue: str, token: str) -> None:
        self.app.send_task(self.task, args=[token], queue=queue, routing_key=queue)

    def pop(self, timeout_s: float = 30) -> str:
        item = self.redis.blpop([self.done], timeout=timeout_s)
        if item is None:
            raise TimeoutError("a no-op task did not come back within 30 s")
        return item[1].decode()

    def burst(self, total: int) -> dict:
        """``total`` round trips, one in flight per queue; round trips per second."""
        started = time.time()
        sent = 0
        for queue in self.queues[:total]:
            self.send(queue, queue)
            sent += 1
        for _ in range(total):
            queue = self.pop()
            if sent < total:
                self.send(queue, queue)
                sent += 1
        elapsed = time.time() - started
        return {"tasks": total, "window": (started, started + elapsed), "round_trips_per_s": total / elapsed}

    def steady(self, rate: float, seconds: float) -> dict:
        """Tasks at ``rate`` per second across the queues; each round trip's latency."""
        count = int(rate * seconds)
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        start = time.monotonic()
        first = time.time()

        def collect() -> None:
            for _ in range(count):
                token = self.pop()
                latencies.append(time.monotonic() - sent_at[token])

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        for i in range(count):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            token = str(i)
            sent_at[token] = time.monotonic()
            self.send(self.queues[i % len(self.queues)], token)
        sent_per_s = (count - 1) / (time.monotonic() - start) if count > 1 else None
        collector.join(timeout=60)
        return {"tasks": count, "window": (first, time.time()), "sent_per_s": sent_per_s,
                "round_trip_p50_s": percentile(latencies, 50),
                "round_trip_p99_s": percentile(latencies, 99)}


# ---------------------------------------------------------------------- the run


def pass_stats(passes: list[dict], window: tuple[float, float]) -> dict:
    inside = [p for p in passes if window[0] <= p["at"] <= window[1] + 0.5]
    assigning = [p for p in inside if p["assigned"]]
    first = assigning[0] if assigning else None
    return {"first_pass_assigned": first["assigned"] if first else None, "first_pass_s": first["s"] if first else None,
            "passes": len(inside), "pass_p50_s": percentile([p["s"] for p in inside], 50),
            "pass_p99_s": percentile([p["s"] for p in inside], 99),
            "snapshot_p50_s": percentile([p["snapshot_s"] for p in inside], 50),
            "policy_p50_s": percentile([p["policy_s"] for p in inside], 50),
            "send_p50_s": percentile([p["send_s"] for p in inside], 50),
            "assigned_per_pass_p50": percentile([p["assigned"] for p in assigning], 50),
            "queued_per_pass_max": max((p["queued"] for p in inside), default=0)}


@contextlib.contextmanager
def processes(env: dict[str, str], home: Path, names: list[str], consumers: int, concurrency: int):
    """The stand-in consumer(s) and the scheduler; yields the scheduler's pass-record path."""
    record = home / "passes.json"
    started: list[subprocess.Popen] = []
    logs = []
    try:
        for index in range(consumers):
            log = open(home / f"standin-{index}.log", "wb")
            logs.append(log)
            command = [sys.executable, str(ROOT / "bench" / "standin_workers.py"), "--workers", ",".join(names),
                       "--concurrency", str(concurrency)] + (["--heartbeat"] if index == 0 else [])
            started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        log = open(home / "scheduler.log", "wb")
        logs.append(log)
        scheduler = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-scheduler", str(record)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(scheduler)
        yield record, scheduler, [process.pid for process in started[:consumers]]
    finally:
        for process in reversed(started):
            stop_process(process)
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--burst", type=int, default=5000, help="jobs per burst (and no-op tasks per baseline burst)")
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds (each with its baseline)")
    parser.add_argument("--rate", type=float, default=20.0, help="steady arrivals per second")
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--steady-rounds", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=1, help="stand-in consumer processes")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per stand-in consumer")
    parser.add_argument("--redis", default=os.environ.get("FARM_TEST_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one round")
    parser.add_argument("--serve-scheduler", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_scheduler:
        serve_scheduler(args.serve_scheduler)
        return

    from farm.context import build_context
    from farm.workers.celery_app import worker_queue

    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, temporary_postgres_database() as database_url:
        home = Path(tmp)
        env, settings = farm_env(home, database_url, args.redis)
        ctx = build_context(settings)
        users = set_up_farm(ctx, args.workers)
        names = worker_names(args.workers)
        sender = NoopSender(settings, [worker_queue(name) for name in names])
        with processes(env, home, names, args.consumers, args.concurrency) as (record, scheduler, consumer_pids):
            # Warm-up: every queue answers, and a small burst goes through the farm.
            sender.burst(len(names))
            farm_burst(ctx, users, min(400, args.burst), 0, args.timeout)
            meter = CpuMeter({"scheduler": scheduler.pid, "bench (sender, submitter)": os.getpid(),
                              **{f"stand-in {i + 1}": pid for i, pid in enumerate(consumer_pids)}})
            rounds = []
            for round_no in range(1, args.rounds + 1):
                order = ("baseline", "farm") if round_no % 2 else ("farm", "baseline")
                result = {}
                for kind in order:
                    before = meter.read()
                    if kind == "baseline":
                        result[kind] = sender.burst(args.burst)
                    else:
                        result[kind] = farm_burst(ctx, users, args.burst, round_no, args.timeout)
                    result[kind]["cores"] = CpuMeter.cores(before, meter.read())
                print(f"burst round {round_no}: farm {result['farm']['jobs_per_s']:.1f} jobs/s, "
                      f"baseline {result['baseline']['round_trips_per_s']:.1f} round trips/s", file=sys.stderr)
                rounds.append(result)
            steady = []
            for round_no in range(args.steady_rounds):
                order = ("baseline", "farm") if round_no % 2 == 0 else ("farm", "baseline")
                result = {}
                for kind in order:
                    before = meter.read()
                    if kind == "baseline":
                        result[kind] = sender.steady(args.rate, args.steady_s)
                    else:
                        result[kind] = farm_steady(ctx, users, args.rate, args.steady_s, args.timeout)
                    result[kind]["cores"] = CpuMeter.cores(before, meter.read())
                steady.append(result)
            scheduler.terminate()
            scheduler.wait(30)
            passes = json.loads(record.read_text()) if record.exists() else []
        ctx.db.dispose()

    def median(values):
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    burst_passes = [pass_stats(passes, r["farm"]["window"]) for r in rounds]
    steady_passes = [pass_stats(passes, r["farm"]["window"]) for r in steady]
    farm_rate = median([r["farm"]["jobs_per_s"] for r in rounds])
    baseline_rate = median([r["baseline"]["round_trips_per_s"] for r in rounds])
    result = {
        "benchmark": "scheduler_throughput_200_workers",
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "standin_consumers": args.consumers,
        "standin_threads_each": args.concurrency,
        "burst": {
            "jobs": median([r["farm"]["jobs"] for r in rounds]),
            "baseline_tasks": args.burst,
            "rounds": len(rounds),
            "shape": "4 users' campaigns at once (40/30/20/10 %), 3 models, 512x512",
            "assignments_per_s": round(median([r["farm"]["assignments_per_s"] for r in rounds]), 1),
            "jobs_per_s": round(farm_rate, 1),
            "baseline_celery_round_trips_per_s": round(baseline_rate, 1),
            "farm_over_baseline": round(farm_rate / baseline_rate, 3),
            "queue_wait_p50_ms": ms(median([r["farm"]["queue_wait_p50_s"] for r in rounds])),
            "queue_wait_p99_ms": ms(median([r["farm"]["queue_wait_p99_s"] for r in rounds])),
            "submit_ms": ms(median([r["farm"]["submit_s"] for r in rounds])),
            "assigned_to_started_p50_ms": ms(median([r["farm"]["assigned_to_started_p50_s"] for r in rounds])),
            "assigned_to_started_p99_ms": ms(median([r["farm"]["assigned_to_started_p99_s"] for r in rounds])),
            "started_to_finished_p50_ms": ms(median([r["farm"]["started_to_finished_p50_s"] for r in rounds])),
            "scheduler_pass_p50_ms": ms(median([p["pass_p50_s"] for p in burst_passes])),
            "scheduler_pass_p99_ms": ms(median([p["pass_p99_s"] for p in burst_passes])),
            "pass_parts_p50_ms": {
                "snapshot (reads: queued jobs, workers, active jobs, shares)": ms(median([p["snapshot_p50_s"] for p in burst_passes])),
                "policy (farm.scheduler.policy.place)": ms(median([p["policy_p50_s"] for p in burst_passes])),
                "celery sends": ms(median([p["send_p50_s"] for p in burst_passes])),
            },
            "assigned_per_pass_p50": median([p["assigned_per_pass_p50"] for p in burst_passes]),
            # The burst's first pass finds every worker free: the most one pass places.
            "first_pass": {"assigned": median([p["first_pass_assigned"] for p in burst_passes]),
                           "ms": ms(median([p["first_pass_s"] for p in burst_passes]))},
            "passes_per_round": [p["passes"] for p in burst_passes],
            "per_round": [{"farm_jobs_per_s": round(r["farm"]["jobs_per_s"], 1),
                           "baseline_round_trips_per_s": round(r["baseline"]["round_trips_per_s"], 1),
                           "farm_cores": r["farm"]["cores"], "baseline_cores": r["baseline"]["cores"]} for r in rounds],
        },
        "steady": {
            "offered_jobs_per_s": args.rate,
            "seconds": args.steady_s,
            "rounds": len(steady),
            "submitted_jobs_per_s": round(median([r["farm"]["submitted_per_s"] for r in steady]), 1),
            "queue_wait_p50_ms": ms(median([r["farm"]["queue_wait_p50_s"] for r in steady])),
            "queue_wait_p99_ms": ms(median([r["farm"]["queue_wait_p99_s"] for r in steady])),
            "created_to_succeeded_p50_ms": ms(median([r["farm"]["created_to_succeeded_p50_s"] for r in steady])),
            "created_to_succeeded_p99_ms": ms(median([r["farm"]["created_to_succeeded_p99_s"] for r in steady])),
            "baseline_sent_per_s": round(median([r["baseline"]["sent_per_s"] for r in steady]), 1),
            "baseline_round_trip_p50_ms": ms(median([r["baseline"]["round_trip_p50_s"] for r in steady])),
            "baseline_round_trip_p99_ms": ms(median([r["baseline"]["round_trip_p99_s"] for r in steady])),
            "scheduler_pass_p50_ms": ms(median([p["pass_p50_s"] for p in steady_passes])),
            "scheduler_pass_p99_ms": ms(median([p["pass_p99_s"] for p in steady_passes])),
            "per_round_cores": [{"farm": r["farm"]["cores"], "baseline": r["baseline"]["cores"]} for r in steady],
        } if steady else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
