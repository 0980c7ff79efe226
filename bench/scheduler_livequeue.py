"""The live scheduler's pass on Postgres, reading the queue afresh every pass
against keeping it across passes (issue 23, farm/scheduler/livequeue.py).

    .venv/bin/python bench/scheduler_livequeue.py [--shapes 100x10000,1000x100000] [--passes 5]

For each shape (workers x queued jobs; 20 models at 100 workers, 50 at
1,000) a throwaway Postgres database gets that many online worker rows (each
holding one model, one slot, all idle) and queued job rows (10 users, the
models Zipf-like). Then three schedulers run ``--passes`` passes each, in the
same run, on the same rows, in turn:

- ``reread_capped``: as the scheduler was before: every pass reads the first
  5,000 queued jobs afresh and indexes them;
- ``reread_all``: every pass reads the whole queue afresh and indexes it;
- ``kept``: the queue kept across passes, each pass reading the rows changed
  since the previous one (the live scheduler now).

Between two passes the farm moves as it would: the jobs the pass placed
finish (their workers are free again, so every pass places on every worker)
and as many new jobs arrive. A pass is ``Scheduler.run_pass`` with a dispatcher
that sends nothing, its queue forecast off (written every 2 s, apart). Timed
per pass: the snapshot (database reads and index), the policy's decision,
and the whole pass (with the assignments' commit); medians and the rows the
jobs table's SELECTs returned. The first pass of ``kept`` is its full read
and is reported apart (``first_pass_ms``), as is one more pass of ``kept``
with its safety net due (``safety_net_pass_ms``: every queued job's id and
``updated_at`` compared). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert, update  # noqa: E402

from farm.context import build_context  # noqa: E402
from farm.events import LocalEvents  # noqa: E402
from farm.localcluster import temporary_postgres_database  # noqa: E402
from farm.models import Job, JobStatus, ModelEntry, User, Worker, utcnow  # noqa: E402
from farm.scheduler import livequeue  # noqa: E402
from farm.scheduler.service import Scheduler  # noqa: E402
from farm.settings import Settings  # noqa: E402

CAPPED = 5_000


class NoDispatch:
    def send(self, job_id, attempt, queue, evict=()) -> None:
        pass

    def send_preload(self, queue, model_id, evict=()) -> None:
        pass


class Rereading(livequeue.LiveQueue):
    """Reads the queue afresh every pass (at most ``limit`` jobs), as the scheduler did before."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.limit = limit

    def sync(self, session, now):
        rows = session.execute(livequeue.queued_rows_query(self.limit)).all()
        refiner_gb: dict = {}
        self._replace([(row, self._job(row, refiner_gb)) for row in rows])
        return livequeue.SyncReport(full=True, rows=len(rows))


def job_rows(rng: random.Random, users: list[int], models: list[str], count: int, when: dt.datetime) -> list[dict]:
    weights = [1 / (i + 1) for i in range(len(models))]
    return [dict(id=uuid.uuid4(), user_id=rng.choice(users), model_id=rng.choices(models, weights)[0],
                 request={"prompt": "p"}, params={"prompt": "p"}, width=512, height=512, steps=20, seed=i,
                 created_at=when, updated_at=when) for i in range(count)]


def populate(ctx, workers: int, models: int, queued: int, rng: random.Random) -> tuple[list[int], list[str]]:
    model_ids = [f"m-{i:02d}" for i in range(models)]
    with ctx.db.transaction() as session:
        session.execute(insert(ModelEntry), [dict(id=m, source=f"/nonexistent/{m}", family="sd", vram_gb=4.0)
                                             for m in model_ids])
        session.execute(insert(User), [dict(name=f"user-{i}", role="member") for i in range(10)])
        users = [u for (u,) in session.query(User.id)]
        session.execute(insert(Worker), [dict(
            id=f"w-{i:04d}", host="h", queue=f"q-{i:04d}", device="cuda", device_name="gpu", vram_total_gb=24.0,
            vram_free_gb=20.0, max_pixels=1 << 22, families=["sd"], loaded_models=[{"id": model_ids[i % models],
                                                                                      "vram_gb": 4.0}])
            for i in range(workers)])
        earlier = utcnow() - dt.timedelta(minutes=10)
        for start in range(0, queued, 10_000):
            session.execute(insert(Job), job_rows(rng, users, model_ids, min(10_000, queued - start), earlier))
    return users, model_ids


def settle(ctx, rng: random.Random, users: list[int], models: list[str], placed: int) -> None:
    """The placed jobs finish; as many new ones arrive; every worker looks alive."""
    now = utcnow()
    with ctx.db.transaction() as session:
        session.execute(update(Job).where(Job.status == JobStatus.assigned.value)
                        .values(status=JobStatus.succeeded.value, previous_status=JobStatus.assigned.value,
                                finished_at=now, updated_at=now, lease_expires_at=None))
        session.execute(update(Worker).values(last_heartbeat_at=now))
        if placed:
            session.execute(insert(Job), job_rows(rng, users, models, placed, now))


def run_variant(ctx, queue: livequeue.LiveQueue, passes: int, rng, users, models) -> dict:
    scheduler = Scheduler(ctx, NoDispatch())
    scheduler.live = queue
    scheduler._forecast_due = float("inf")
    rows_read = [0]

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement and cursor.rowcount > 0:
            rows_read[0] += cursor.rowcount

    event.listen(ctx.db.engine, "after_cursor_execute", count)
    load, policy = scheduler.load_snapshot, scheduler.policy
    timings: dict[str, list[float]] = {"snapshot_ms": [], "decision_ms": [], "pass_ms": [], "job_rows_read": [],
                                       "assigned": [], "shown": []}

    def timed_load():
        start = time.perf_counter()
        result = load()
        timings["snapshot_ms"].append((time.perf_counter() - start) * 1000)
        timings["shown"].append(len(result[0].jobs))
        return result

    def timed_policy(snapshot):
        start = time.perf_counter()
        result = policy(snapshot)
        timings["decision_ms"].append((time.perf_counter() - start) * 1000)
        return result

    scheduler.load_snapshot, scheduler.policy = timed_load, timed_policy
    try:
        for _ in range(passes + 1):  # the first pass of each variant is a full read: reported apart
            rows_read[0] = 0
            start = time.perf_counter()
            report = scheduler.run_pass()
            timings["pass_ms"].append((time.perf_counter() - start) * 1000)
            timings["job_rows_read"].append(rows_read[0])
            timings["assigned"].append(report.assigned)
            settle(ctx, rng, users, models, report.assigned)
        safety_net_ms = None
        if type(queue) is livequeue.LiveQueue:  # one more pass with the safety net due
            queue._resync_due = float("-inf")
            start = time.perf_counter()
            report = scheduler.run_pass()
            safety_net_ms = round((time.perf_counter() - start) * 1000, 1)
            settle(ctx, rng, users, models, report.assigned)
    finally:
        event.remove(ctx.db.engine, "after_cursor_execute", count)
    result = {"first_pass_ms": round(timings["pass_ms"][0], 1)}
    if safety_net_ms is not None:
        result["safety_net_pass_ms"] = safety_net_ms
    for key, values in timings.items():
        result[key] = round(statistics.median(values[1:]), 2)
    return result


def shape(workers: int, queued: int, passes: int) -> dict:
    models = 20 if workers <= 100 else 50
    rng = random.Random(workers * 7 + queued)
    with temporary_postgres_database() as url, tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url=url, broker_url=None, heartbeat_timeout_s=3600)
        from farm.db import upgrade_database

        upgrade_database(settings.resolved_database_url)
        ctx = build_context(settings, events=LocalEvents())
        try:
            start = time.perf_counter()
            users, model_ids = populate(ctx, workers, models, queued, rng)
            out = {"workers": workers, "models": models, "queued": queued, "passes": passes,
                   "populate_s": round(time.perf_counter() - start, 1)}
            for name, queue in (("reread_capped", Rereading(CAPPED)), ("reread_all", Rereading(None)),
                                ("kept", livequeue.LiveQueue())):
                out[name] = run_variant(ctx, queue, passes, rng, users, model_ids)
            for base in ("reread_capped", "reread_all"):
                for key in ("snapshot_ms", "decision_ms", "pass_ms"):
                    out[f"{key}_{base}_over_kept"] = round(out[base][key] / max(out["kept"][key], 1e-9), 1)
            return out
        finally:
            ctx.db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="100x10000,1000x100000", help="workers x queued, comma separated")
    parser.add_argument("--passes", type=int, default=5, help="timed passes per variant (after its first)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    print(json.dumps({"shapes": [shape(w, q, args.passes) for w, q in shapes]}, indent=2))


if __name__ == "__main__":
    main()
