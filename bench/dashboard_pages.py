"""Dashboard server time for a farm holding one 100,000-job campaign against
one holding a 100-job campaign (issue 19: every page within 2x): the campaign
page, gallery first, last and filtered page, the X/Y grid, the live progress
fragment, the campaign list, and the jobs history (first page, a deep keyset
page, a search for a word in a tenth of the prompts, a search for a word in one
prompt), with the SQL statements each one runs.

Workload shape: a matrix campaign of 10 prompts x 10 guidance scales x N/100
seeds (the grid's two axes, the seeds on its pages), submitted through the
campaign service, 60 % of its jobs then marked succeeded with an output row each
(images are not drawn: the pages only link to thumbnails). Each size gets its
own throwaway Postgres database, so the history holds only that farm's jobs;
the Flask app runs in-process with a signed-in member session (the history is
filtered to the member's jobs, the index path members take), plus an admin
session for the unfiltered history. The two farms' requests are interleaved
(baseline, large, baseline, ...) so that load from other processes falls on
both alike; --explain PAGE ... prints EXPLAIN ANALYZE of those pages'
statements on the large farm to stderr.

    python bench/dashboard_pages.py [--jobs 100000] [--baseline-jobs 100] [--repeat 15] [--explain PAGE ...]
"""

from __future__ import annotations

import argparse
import contextlib
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

PROMPTS = ["a lighthouse at dusk", "a red fox in the snow", "a brass bell on a table", "a bowl of ramen, steam rising",
           "a paper boat on a pond", "an old tram in the rain", "a cactus in a clay pot", "a snowy mountain cabin",
           "a vintage camera on wood", "a hot air balloon over fields"]
GUIDANCE = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5]
RARE_WORD = "zebra"  # in exactly one prompt of the farm


def build_campaign(ctx, user, jobs: int) -> str:
    from sqlalchemy import insert, select, update

    from farm import tallies
    from farm.models import Job, Output, utcnow
    from farm.services import campaigns as service

    seeds = max(1, jobs // (len(PROMPTS) * len(GUIDANCE)))
    req = service.parse_campaign({"name": f"{jobs} jobs", "base": {"model": "m", "width": 512, "height": 512, "steps": 20},
                                  "matrix": {"prompt": PROMPTS, "guidance_scale": GUIDANCE, "seed": list(range(seeds))}})
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
        # The bulk update went around the state machine: rebuild the campaign's
        # tallies from its jobs, as farm.tallies.recount does after any repair.
        tallies.recount(session, [uuid.UUID(campaign_id)])
        oldest = session.get(Job, ids[0])
        oldest.params = {**oldest.params, "prompt": f"a {RARE_WORD} crossing"}
    # What autovacuum does within a minute of a bulk load: statistics for the
    # planner and the visibility map for index-only counts. (A plain ANALYZE in
    # a session that is rolled back keeps nothing.)
    with ctx.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    return campaign_id


def measure_pair(pair: dict, name: str, repeat: int) -> dict:
    """Median server time of one page on each farm, the two farms' requests interleaved so that
    load from other processes on the machine falls on both alike."""
    from sqlalchemy import event

    statements = {label: [] for label in pair}
    listeners = {label: (lambda *_args, label=label: statements[label].append(1)) for label in pair}
    for farm in pair.values():
        farm["pages"][name][0].get(farm["pages"][name][1])  # warm: templates compiled, connections open
    times = {label: [] for label in pair}
    sizes = {}
    for label, farm in pair.items():
        event.listen(farm["engine"], "before_cursor_execute", listeners[label])
    try:
        for _ in range(repeat):
            for label, farm in pair.items():
                client, path = farm["pages"][name]
                statements[label].clear()
                started = time.perf_counter()
                response = client.get(path)
                times[label].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:300])
                sizes[label] = len(response.data)
    finally:
        for label, farm in pair.items():
            event.remove(farm["engine"], "before_cursor_execute", listeners[label])
    result = {}
    for label, found in times.items():
        found.sort()
        result[label] = {"median_ms": round(statistics.median(found), 2), "p95_ms": round(found[int(0.95 * (len(found) - 1))], 2),
                         "sql_statements": len(statements[label]), "bytes": sizes[label]}
    return result


def explain(client, engine, path: str) -> list[str]:
    """EXPLAIN ANALYZE of every statement a page runs (with --explain: where the time goes)."""
    from sqlalchemy import event

    captured = []

    def keep(_conn, _cursor, statement, parameters, _context, _many):
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        client.get(path)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    plans = []
    with engine.connect() as connection:
        for statement, parameters in captured:
            if statement.lstrip().upper().startswith("SELECT"):
                rows = connection.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters).scalars()
                plans.append(statement[:200] + "\n" + "\n".join(rows))
    return plans


def signed_in(app, name: str):
    client = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    assert client.post("/login", data={"name": name, "password": f"{name} password", "csrf_token": csrf}).status_code == 302
    return client


def open_farm(stack, jobs: int) -> dict:
    """A farm in its own throwaway database with one campaign of ``jobs`` jobs, signed-in clients and its pages."""
    from farm.api import create_app
    from farm.auth import create_user
    from farm.context import build_context
    from farm.db import upgrade_database
    from farm.events import LocalEvents
    from farm.models import ModelEntry
    from farm.settings import Settings

    home = stack.enter_context(tempfile.TemporaryDirectory())
    url = stack.enter_context(temporary_postgres_database())
    settings = Settings(home=Path(home), database_url=url, max_request_bytes=100_000_000)
    upgrade_database(settings.resolved_database_url)
    ctx = build_context(settings, events=LocalEvents())
    stack.callback(ctx.db.dispose)
    with ctx.db.transaction() as session:
        session.add(ModelEntry(id="m", source="/models/m", family="sd", vram_gb=2.0))
        session.flush()
        user, _ = create_user(session, "bench", password="bench password")
        create_user(session, "admin", admin=True, password="admin password")
        session.expunge(user)
    started = time.perf_counter()
    campaign_id = build_campaign(ctx, user, jobs)
    build_s = time.perf_counter() - started
    app = create_app(settings, context=ctx)
    member, admin = signed_in(app, "bench"), signed_in(app, "admin")
    last_page = max(1, -(-jobs // 48))
    deep = member.get("/jobs?limit=20").get_data(as_text=True)
    for _ in range(3):  # the fourth page of 20, through the pages' own "Older" links
        deep = member.get(re.search(r'id="older" href="([^"]+)"', deep).group(1).replace("&amp;", "&")).get_data(as_text=True)
    fourth = re.search(r'id="older" href="([^"]+)"', deep).group(1).replace("&amp;", "&")
    pages = {
        "campaign_page": (member, f"/campaigns/{campaign_id}"),
        "gallery_first_page": (member, f"/campaigns/{campaign_id}/gallery?page=1"),
        "gallery_last_page": (member, f"/campaigns/{campaign_id}/gallery?page={last_page}"),
        "gallery_filtered_status": (member, f"/campaigns/{campaign_id}/gallery?status=succeeded&page={max(1, last_page // 2)}"),
        "grid_prompt_x_guidance": (member, f"/campaigns/{campaign_id}/grid?x=prompt&y=guidance_scale"),
        "progress_fragment": (member, f"/campaigns/{campaign_id}/progress"),
        "campaign_list": (member, "/campaigns"),
        "jobs_first_page": (member, "/jobs"),
        "jobs_fourth_page": (member, fourth),
        "jobs_search_tenth": (member, "/jobs?q=lighthouse"),
        "jobs_search_one": (member, f"/jobs?q={RARE_WORD}"),
        "jobs_admin_search_one": (admin, f"/jobs?q={RARE_WORD}"),
        "jobs_campaign_failed": (member, f"/jobs?campaign={campaign_id}&status=failed"),
    }
    if "dashboard.campaign_grid" not in app.view_functions:  # the grid view is another part of issue 19
        del pages["grid_prompt_x_guidance"]
    return {"jobs": jobs, "engine": ctx.db.engine, "pages": pages, "build_s": build_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--baseline-jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--explain", nargs="*", default=[], metavar="PAGE",
                        help="print EXPLAIN ANALYZE of these pages' statements on the large farm to stderr")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        pair = {"baseline": open_farm(stack, args.baseline_jobs), "large": open_farm(stack, args.jobs)}
        names = [name for name in pair["large"]["pages"] if name in pair["baseline"]["pages"]]
        measured = {name: measure_pair(pair, name, args.repeat) for name in names}
        for name in args.explain:
            client, path = pair["large"]["pages"][name]
            print(f"==== {name} ({args.jobs} jobs): {path}", *explain(client, pair["large"]["engine"], path), sep="\n", file=sys.stderr)
    results = {label: {"jobs": farm["jobs"], **{name: measured[name][label] for name in names}} for label, farm in pair.items()}
    ratio = {name: round(measured[name]["large"]["median_ms"] / measured[name]["baseline"]["median_ms"], 2) for name in names}
    print(json.dumps({"benchmark": "dashboard_pages", "repeat": args.repeat,
                      "setup_s": {label: round(farm["build_s"], 1) for label, farm in pair.items()}, "results": results,
                      "large_over_baseline_median": ratio, "worst_ratio": max(ratio.values())}, indent=2))


if __name__ == "__main__":
    main()
