"""How right a campaign's numbers are (issue 19): ETA, images/min, GPU-second estimates.

Workload: `farm up` (the embedded farm: SQLite, one CPU worker, the offline
tiny demo model) started cold, as a new user starts it; one campaign of 40
jobs (a seed matrix, 64 x 64, 4 steps by default) submitted at once, so the queue is
40 deep when the first job starts and the first job carries the farm's
start-up. The API's campaign view is polled every 0.1 s; at the first poll
showing at least 25 %, 50 % and 75 % of the jobs done, the ETA it gives is
compared with the time the campaign actually took from then to its end.

Baseline, same run and same polls: the formula the farm used before issue 19
(unfinished jobs / (images of the last 5 minutes / 5) per minute), computed
from the same polls' counts and the jobs' finish times. Also printed: images/min
of the finished campaign against its measured rate (images / first job's
start to last job's finish) and the old 5-minute figure, and the dry run's
GPU-second estimate before the campaign (nothing measured: the documented
default) and after it (the farm's measured times) against the GPU seconds
the campaign was charged.

    .venv/bin/python bench/eta_accuracy.py [--jobs 40] [--repeat 1] [--side 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.localcluster import free_port  # noqa: E402

MARKS = (25, 50, 75)


def start_farm(home: Path, port: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(home)
    process = subprocess.Popen([sys.executable, "-m", "farm", "up", "--port", str(port)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.lstrip().startswith("try:"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300):
        process.kill()
        raise SystemExit("farm up did not start:\n" + "".join(lines[-40:]))
    token = re.search(r"admin API token: (\S+)", "".join(lines)).group(1)
    deadline = time.monotonic() + 120
    while True:  # the banner can come before the api listens
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return process, token
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("farm up does not answer:\n" + "".join(lines[-40:]))
        time.sleep(0.2)


def legacy_eta(view: dict, at: dt.datetime, finishes: list[dt.datetime]) -> float | None:
    """The pre-issue-19 formula at time ``at``: unfinished jobs / (images of
    the 5 minutes before ``at`` / 5) per minute (one image per job here)."""
    counts = view["counts"]
    unfinished = counts["queued"] + counts["assigned"] + counts["running"]
    per_minute = sum(1 for f in finishes if at - dt.timedelta(minutes=5) <= f <= at) / 5
    jobs_per_minute = per_minute / max(view["images"] / max(view["jobs"], 1), 1)
    if not unfinished:
        return 0.0
    return unfinished / jobs_per_minute * 60 if jobs_per_minute > 0 else None


def error(estimate: float | None, actual: float) -> float | None:
    return None if estimate is None else round((estimate - actual) / actual, 3)


def run_campaign(api: str, session: requests.Session, jobs: int, side: int, steps: int, label: str) -> dict:
    body = {"name": f"eta {label}", "base": {"prompt": "a lighthouse at dawn", "width": side, "height": side, "steps": steps},
            "matrix": {"seed": list(range(jobs))}}
    before = session.get(f"{api}/me", timeout=30).json()["usage"]["gpu_seconds_this_month"]
    estimate = session.post(f"{api}/campaigns", json={**body, "dry_run": True}, timeout=60).json()["cost"]["gpu_seconds"]
    created = session.post(f"{api}/campaigns", json=body, timeout=60)
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    submitted = time.monotonic()
    polls: list[tuple[float, dict]] = []
    while True:
        view = session.get(f"{api}/campaigns/{campaign_id}", timeout=30).json()
        polls.append((time.monotonic(), dt.datetime.now(dt.timezone.utc), view))
        if view["counts"]["queued"] + view["counts"]["assigned"] + view["counts"]["running"] == 0:
            break
        time.sleep(0.1)
    ended = polls[-1][0]
    final = polls[-1][2]
    assert final["counts"]["succeeded"] == jobs, final["counts"]
    listing = session.get(f"{api}/campaigns/{campaign_id}/jobs", params={"limit": 200}, timeout=30).json()["jobs"]
    starts = [dt.datetime.fromisoformat(j["started_at"]) for j in listing]
    finishes = [dt.datetime.fromisoformat(j["finished_at"]) for j in listing]
    marks = {}
    for mark in MARKS:
        at, wall, view = next(p for p in polls if 100 * (jobs - sum(p[2]["counts"][s] for s in ("queued", "assigned", "running"))) >= mark * jobs)
        actual = ended - at
        legacy = legacy_eta(view, wall, finishes)
        marks[f"{mark}%"] = {"done": view["percent"], "actual_remaining_s": round(actual, 2),
                             "eta_s": view["eta_s"], "error": error(view["eta_s"], actual),
                             "legacy_eta_s": None if legacy is None else round(legacy, 1), "legacy_error": error(legacy, actual)}
    known_after = next((round(t - submitted, 2) for t, _, v in polls if v["eta_s"] is not None), None)
    measured_rate = jobs * 60 / (max(finishes) - min(starts)).total_seconds()
    # How steady the farm was: mean seconds between finishes in each quarter of
    # the run (on a shared machine the rate can change under the campaign).
    ordered = sorted(finishes)
    quarter = len(ordered) // 4
    pace = [round((ordered[(q + 1) * quarter - 1] - (ordered[q * quarter - 1] if q else min(starts))).total_seconds() / quarter, 2)
            for q in range(4)]
    charged = session.get(f"{api}/me", timeout=30).json()["usage"]["gpu_seconds_this_month"] - before
    after = session.post(f"{api}/campaigns", json={**body, "dry_run": True}, timeout=60).json()["cost"]["gpu_seconds"]
    return {
        "campaign_s": round(ended - submitted, 2),
        "eta_marks": marks,
        "eta_known_after_s": known_after,
        "seconds_per_job_by_quarter": pace,
        "images_per_minute": {"api": final["images_per_minute"], "measured": round(measured_rate, 2),
                              "legacy_5min_window": round(sum(1 for f in finishes if f >= max(finishes) - dt.timedelta(minutes=5)) / 5, 2)},
        "gpu_seconds": {"charged": round(charged, 2), "dry_run_before": round(estimate, 2), "dry_run_after": round(after, 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="campaigns run one after another on the same farm")
    parser.add_argument("--side", type=int, default=64, help="image width and height")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        process, token = start_farm(Path(home) / "home", port)
        try:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            api = f"http://127.0.0.1:{port}/api/v1"
            runs = [run_campaign(api, session, args.jobs, args.side, args.steps, f"{number + 1}{' (cold farm)' if number == 0 else ''}")
                    for number in range(args.repeat)]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    worst = max(abs(m["error"]) for run in runs for m in run["eta_marks"].values() if m["error"] is not None)
    legacy = [abs(m["legacy_error"]) for run in runs for m in run["eta_marks"].values() if m["legacy_error"] is not None]
    print(json.dumps({
        "workload": f"farm up (SQLite, 1 CPU worker, tiny demo model); {args.jobs}-job campaign, {args.side} px, {args.steps} steps, queued at once",
        "runs": runs,
        "worst_eta_error": worst,
        "worst_legacy_eta_error": max(legacy) if legacy else None,
        "within_30_percent": worst <= 0.3,
    }, indent=2))


if __name__ == "__main__":
    main()
