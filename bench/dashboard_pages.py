"""Dashboard server time for a 10,000-job campaign: the campaign page, one
gallery page (first, deep, filtered), the live progress fragment and the
campaign list, with the SQL statements each one runs.

Real Postgres (a throwaway database), the Flask app in-process with a signed-in
session. The campaign is submitted through the campaign service; 60 % of its
jobs are then marked succeeded with an output row each (images are not drawn:
the pages only link to thumbnails). Baseline in the same run: the same pages
for a 100-job campaign built the same way, so the figures show what the size
of a campaign costs (no per-job queries: the statement count does not grow).

    python bench/dashboard_pages.py [--jobs 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.localcluster import temporary_postgres_database  # noqa: E402


def build_campaign(ctx, user, jobs: int, name: str) -> str:
    from sqlalchemy import insert, select, update

    from farm.models import Job, Output, utcnow
    from farm.services import campaigns as service

    req = service.parse_campaign({"name": name, "base": {"prompt": "a product shot", "model": "m", "width": 512,
                                                         "height": 512, "steps": 20, "styles": ["3d-low-poly"]},
                                  "matrix": {"seed_count": [jobs]}})
    campaign_id = service.submit_campaign(ctx, user, req)["id"]
    with ctx.db.transaction() as session:
        ids = session.execute(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id))
                              .order_by(Job.created_at, Job.id)).scalars().all()
        done = ids[: int(len(ids) * 0.6)]
        now = utcnow()
        session.execute(update(Job).where(Job.id.in_(done)).values(status="succeeded", finished_at=now, gpu_seconds=1.0))
        session.execute(insert(Output), [dict(
            id=uuid.uuid4(), job_id=job_id, user_id=user.id, attempt=1, index=0, object_key=f"outputs/{job_id}/0.png",
            sidecar_key=f"outputs/{job_id}/0.json", width=512, height=512, seed=i, content_type="image/png",
            content_sha256="0" * 64, byte_size=1000, lineage={}, created_at=now, updated_at=now)
            for i, job_id in enumerate(done)])
    return campaign_id


def measure(client, engine, path: str, repeat: int) -> dict:
    from sqlalchemy import event

    statements = []

    def count(*_args):
        statements.append(1)

    client.get(path)  # warm: templates compiled, connections open
    times = []
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(repeat):
            statements.clear()
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "sql_statements": len(statements), "bytes": len(response.data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--baseline-jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from farm.api import create_app
    from farm.auth import create_user
    from farm.context import build_context
    from farm.db import upgrade_database
    from farm.events import LocalEvents
    from farm.models import ModelEntry
    from farm.settings import Settings

    with tempfile.TemporaryDirectory() as home, temporary_postgres_database() as url:
        settings = Settings(home=Path(home), database_url=url, max_request_bytes=100_000_000)
        upgrade_database(settings.resolved_database_url)
        ctx = build_context(settings, events=LocalEvents())
        with ctx.db.transaction() as session:
            session.add(ModelEntry(id="m", source="/models/m", family="sd", vram_gb=2.0))
            session.flush()
            user, _ = create_user(session, "bench", password="bench password")
            session.expunge(user)
        started = time.perf_counter()
        campaigns = {"large": build_campaign(ctx, user, args.jobs, "large"),
                     "baseline": build_campaign(ctx, user, args.baseline_jobs, "baseline")}
        build_s = time.perf_counter() - started
        client = create_app(settings, context=ctx).test_client()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"name": "bench", "password": "bench password", "csrf_token": csrf}).status_code == 302

        results = {}
        for label, campaign_id in campaigns.items():
            jobs = args.jobs if label == "large" else args.baseline_jobs
            last_page = max(1, -(-jobs // 48))
            pages = {
                "campaign_page": f"/campaigns/{campaign_id}",
                "gallery_first_page": f"/campaigns/{campaign_id}/gallery?page=1",
                "gallery_last_page": f"/campaigns/{campaign_id}/gallery?page={last_page}",
                "gallery_filtered_style_status": f"/campaigns/{campaign_id}/gallery?status=succeeded&style=3d-low-poly&page={max(1, last_page // 2)}",
                "progress_fragment": f"/campaigns/{campaign_id}/progress",
                "campaign_list": "/campaigns",
            }
            results[label] = {"jobs": jobs, **{name: measure(client, ctx.db.engine, path, args.repeat) for name, path in pages.items()}}
        ratio = {name: round(results["large"][name]["median_ms"] / results["baseline"][name]["median_ms"], 2)
                 for name in results["large"] if name != "jobs"}
        print(json.dumps({"benchmark": "dashboard_pages", "repeat": args.repeat, "setup_s": round(build_s, 1),
                          "results": results, "large_over_baseline_median": ratio}, indent=2))


if __name__ == "__main__":
    main()
