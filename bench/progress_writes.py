"""What a render's progress write costs on Postgres now that jobs.updated_at is indexed (issue 23).

    .venv/bin/python bench/progress_writes.py [--jobs 100000] [--running 100] [--writes 20000]

A throwaway database gets ``--jobs`` job rows (a live farm's mix: most
finished, ``--running`` running, the rest queued) with every index the
migrations make, ``ix_jobs_updated_at`` among them. Then ``--writes``
progress writes go to the running jobs in turn, one transaction each, as
workers send them (every 0.25 s per render), two ways in the same run on the
same rows, alternating in rounds of 1,000 so that neither gets the warmer
cache:

- ``stamping``: the write sets ``updated_at`` too (what ``states.record_progress``
  did): the indexed column changes, so Postgres cannot update the row in
  place (no HOT update) and adds an index entry to every index of the table;
- ``progress_only``: the write leaves ``updated_at`` (what it does now: the
  kept queue and the janitor read state changes, not progress).

Per way: median and p99 ms per write, the share of HOT updates
(``pg_stat_user_tables``), and how much the jobs table's indexes grew.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text, update  # noqa: E402

from farm.db import upgrade_database  # noqa: E402
from farm.localcluster import temporary_postgres_database  # noqa: E402
from farm.models import Job, JobStatus, ModelEntry, User, utcnow  # noqa: E402
from farm.settings import Settings  # noqa: E402

ROUND = 1_000


def seed(engine, jobs: int, running: int) -> list[uuid.UUID]:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(User), [{"name": "bench", "password_hash": None}])
        user_id = conn.execute(text("SELECT id FROM users WHERE name = 'bench'")).scalar_one()
        conn.execute(insert(ModelEntry), [{"id": "m", "source": "/nonexistent/m", "family": "sd", "vram_gb": 2.0}])
        ids = [uuid.uuid4() for _ in range(jobs)]
        rows = []
        for n, job_id in enumerate(ids):
            status = JobStatus.running if n < running else JobStatus.queued if n % 10 == 0 else JobStatus.succeeded
            rows.append(dict(id=job_id, user_id=user_id, model_id="m", request={"prompt": "p"}, params={"prompt": "p"},
                             width=512, height=512, steps=30, seed=n, status=status.value, worker_id="w" if n < running else None,
                             created_at=now - dt.timedelta(seconds=jobs - n), updated_at=now - dt.timedelta(seconds=jobs - n)))
            if len(rows) == 5_000:
                conn.execute(insert(Job), rows)
                rows = []
        if rows:
            conn.execute(insert(Job), rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))
    return ids[:running]


def stats(engine) -> tuple[int, int, int]:
    """(updates, HOT updates, bytes of the jobs table's indexes)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        row = conn.execute(text("SELECT n_tup_upd, n_tup_hot_upd, pg_indexes_size('jobs') FROM pg_stat_user_tables "
                                "WHERE relname = 'jobs'")).one()
    return int(row[0]), int(row[1]), int(row[2])


def write(engine, job_id: uuid.UUID, step: int, stamp: bool) -> float:
    # Job.updated_at has onupdate=utcnow: leaving it unchanged takes saying so.
    values = dict(progress_step=step, progress_total=30, eta_s=1.0, updated_at=utcnow() if stamp else Job.updated_at)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id, Job.attempt == 1, Job.status == JobStatus.running.value)
                     .values(**values))
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--writes", type=int, default=20_000, help="per way")
    args = parser.parse_args()
    with temporary_postgres_database() as url:
        upgrade_database(Settings(database_url=url).resolved_database_url)
        engine = create_engine(url)
        running = seed(engine, args.jobs, args.running)
        times: dict[str, list[float]] = {"stamping": [], "progress_only": []}
        counts = {name: [0, 0, 0] for name in times}  # updates, HOT updates, index growth
        step = 0
        while len(times["progress_only"]) < args.writes:
            for name in times:
                before = stats(engine)
                for _ in range(ROUND):
                    step += 1
                    times[name].append(write(engine, running[step % len(running)], step % 30, name == "stamping"))
                after = stats(engine)
                for k in range(3):
                    counts[name][k] += after[k] - before[k]
        engine.dispose()
    result = {"jobs": args.jobs, "running": args.running, "writes_per_way": args.writes}
    for name, values in times.items():
        values.sort()
        updates, hot, grown = counts[name]
        result[name] = {"write_ms_p50": round(statistics.median(values), 3),
                        "write_ms_p99": round(values[int(len(values) * 0.99)], 3),
                        "hot_update_share": round(hot / updates, 3) if updates else None,
                        "index_growth_kb": round(grown / 1024, 1)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
