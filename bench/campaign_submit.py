"""Campaign submission rate (jobs/s) for 1k, 10k and 50k jobs.

Real Postgres (a throwaway database), the Flask app in-process, and the full
path: JSON parsing, expansion, per-job validation, quota reservation, one
bulk insert in one transaction. Baseline in the same run: the same kind of
job submitted one at a time through POST /api/v1/jobs (what a client does
without campaigns), measured over 1,000 jobs.

    python bench/campaign_submit.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.localcluster import temporary_postgres_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--baseline-jobs", type=int, default=1000)
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
            _, token = create_user(session, "bench")
        client = create_app(settings, context=ctx).test_client()
        headers = {"Authorization": f"Bearer {token}"}
        base = {"prompt": "a product shot", "width": 512, "height": 512, "steps": 20}

        started = time.perf_counter()
        for i in range(args.baseline_jobs):
            response = client.post("/api/v1/jobs", json={**base, "seed": i}, headers=headers)
            assert response.status_code == 202, response.get_data(as_text=True)
        single_s = time.perf_counter() - started

        results = {}
        for size in (int(s) for s in args.sizes.split(",")):
            body = {"name": f"bench {size}", "base": base, "rows": [{"seed": i, "prompt": f"product {i}"} for i in range(size)]}
            payload = json.dumps(body)
            started = time.perf_counter()
            response = client.post("/api/v1/campaigns", data=payload, headers={**headers, "Content-Type": "application/json"})
            elapsed = time.perf_counter() - started
            assert response.status_code == 201, response.get_data(as_text=True)[:300]
            results[str(size)] = {"seconds": round(elapsed, 3), "jobs_per_s": round(size / elapsed)}
        ctx.db.dispose()

    baseline_rate = args.baseline_jobs / single_s
    print(json.dumps({
        "benchmark": "campaign_submission",
        "baseline_single_post_jobs_per_s": round(baseline_rate),
        "campaigns": results,
        "speedup_vs_single_posts": {size: round(r["jobs_per_s"] / baseline_rate, 1) for size, r in results.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
