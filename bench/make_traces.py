"""Write the scheduler benchmark's workload files (seeded, reproducible).

    python bench/make_traces.py                 # bench/traces/*.jsonl, bench/workers/*.json
    python bench/make_traces.py --out /tmp/w --scale 10   # ten times the jobs, for speed checks

Workers: bench/workers/mixed.json (10 GPUs from 8 to 80 GB, only three can
hold a FLUX model) and bench/workers/big.json (100 GPUs of the same classes).
Traces, all against the mixed cluster:

- mixed.jsonl: light users submitting single images all along, a few users
  with small batches, busy spells, and one heavy user's campaign of several
  hundred images arriving in under a minute.
- bursty.jsonl: quiet spells and bursts well above the farm's capacity, some
  bursts from one team on one model.
- heavy_user.jsonl: one user's very large campaign beside a steady stream of
  light users' single images (the fairness case).
- deadlines.jsonl: five campaigns of 100-300 images from five users, three
  with deadlines from tight to loose and two without, beside light users
  whose single images sometimes carry a deadline of a few minutes (rows
  carry ``deadline_s`` and ``campaign``; issue 23). Drawn from its own
  seeded generator, so the other traces do not change with it.
- preempt_campaign.jsonl: a campaign of long, large renders (2048x2048 FLUX
  and SDXL, priority 0) that saturates the GPUs able to run them for most
  of an hour, and interactive single images (priority 5) on the same models
  arriving all along: the case preemption at step boundaries is for
  (bench/scheduler_preemption.py). Drawn from its own seeded generator too.

All-at-once workloads (``write_at_once``, their own seed, so the traces above
do not change): every job arrives at t=0, the shape a farm meets when
campaigns are submitted together and the live scheduler meets with its
deepest queue. bench/traces/at_once/jobs-10k.jsonl holds 10,000 jobs from
13 users over 20 models for bench/workers/at_once.json: 100 GPUs, 40 x 24 GB
without FLUX, 40 x 48 GB and 20 x 80 GB. The 1,000-GPU shape (the same
classes ten times over, 50 models, 100,000 jobs) is too big to commit:
``at_once_workload(workers=1000, models=50, jobs=100_000)`` builds it in
memory at bench time (bench/scheduler_scale.py).

Model popularity is Zipf-like (the k-th most popular model is asked for about
k^-1.1 as often as the first). step_s grows with the image size a little
faster than the pixel count (attention is superlinear in the latent size).
Each trace is sized so the farm is loaded but drains: the expected work over
the trace's span is about 55-65% of what the cluster can render.
Formats: docs/scheduler-bench.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
SEED = 20261201

# A user with fewer jobs than this in a trace is a light user: the users
# here who send single images and small batches, where campaigns and heavy
# users send hundreds. The benches that report light users' waits apart
# (scheduler_sweep.py, scheduler_forecast.py) count them by it.
LIGHT_JOBS = 60

# model id -> (family, GB of weights, typical steps). Sizes: SD 1.5 fp16 with
# its text encoder and VAE ~2.2 GB, SDXL ~7 GB, FLUX.1 ~24 GB.
MODELS = {
    "sdxl-base": ("sdxl", 6.9, 30),
    "sd15-base": ("sd", 2.2, 25),
    "flux-schnell": ("flux", 23.8, 4),
    "sdxl-juggernaut": ("sdxl", 7.1, 30),
    "sd15-dreamshaper": ("sd", 2.2, 25),
    "sdxl-turbo": ("sdxl", 6.9, 4),
    "flux-dev": ("flux", 23.8, 28),
    "sd15-anime": ("sd", 2.1, 25),
}
ZIPF_EXPONENT = 1.1
POPULARITY = np.array([1.0 / k ** ZIPF_EXPONENT for k in range(1, len(MODELS) + 1)])
POPULARITY /= POPULARITY.sum()

# Seconds per step on the reference (speed 1.0) GPU at each family's native size.
STEP_S = {"sd": 0.045, "sdxl": 0.16, "flux": 0.55}
NATIVE_PIXELS = {"sd": 512 * 512, "sdxl": 1024 * 1024, "flux": 1024 * 1024}
# Above linear: self-attention cost grows with the square of the token count.
SIZE_EXPONENT = 1.15
SIZES = {  # (width, height) with their odds
    "sd": ([(512, 512), (512, 768), (768, 512), (768, 768)], [0.6, 0.15, 0.15, 0.1]),
    "sdxl": ([(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (1344, 768)], [0.55, 0.15, 0.15, 0.1, 0.05]),
    "flux": ([(1024, 1024), (1280, 768), (768, 1280), (1536, 1024)], [0.6, 0.15, 0.15, 0.1]),
}

# (id, vram_gb, speed, load_gbps, families). FLUX needs ~26 GB with its
# activations, so only the 48 and 80 GB cards can take it; gpu-24a lists the
# family but lacks the VRAM, gpu-08b has no SDXL pipeline installed.
MIXED_WORKERS = [
    ("gpu-08a", 8, 0.45, 1.2, ["sd", "sdxl"]),
    ("gpu-08b", 8, 0.45, 1.2, ["sd"]),
    ("gpu-12", 12, 0.6, 1.5, ["sd", "sdxl"]),
    ("gpu-16a", 16, 0.8, 2.0, ["sd", "sdxl"]),
    ("gpu-16b", 16, 0.8, 2.0, ["sd", "sdxl"]),
    ("gpu-24a", 24, 1.0, 2.5, ["sd", "sdxl", "flux"]),
    ("gpu-24b", 24, 1.0, 2.5, ["sd", "sdxl"]),
    ("gpu-48", 48, 1.4, 3.0, ["sd", "sdxl", "flux"]),
    ("gpu-80a", 80, 2.2, 4.0, ["sd", "sdxl", "flux"]),
    ("gpu-80b", 80, 2.2, 3.0, ["sd", "sdxl", "flux"]),
]
TARGET_UTILIZATION = 0.6

LIGHT_USERS = ["ana", "ben", "chloe", "dmitri", "eve", "farid", "greta", "hiro", "ines", "jonas", "kim", "lena",
               "marco", "nora"]
BATCH_USERS = ["olga", "pavel", "quinn"]
HEAVY_USER = "studio-campaigns"


def step_seconds(family: str, width: int, height: int) -> float:
    return STEP_S[family] * (width * height / NATIVE_PIXELS[family]) ** SIZE_EXPONENT


def job_record(rng: np.random.Generator, t: float, user: str, team: str, model: str,
               size: tuple[int, int] | None = None) -> dict:
    family, gb, steps = MODELS[model]
    if size is None:
        choices, odds = SIZES[family]
        size = choices[rng.choice(len(choices), p=odds)]
    width, height = size
    return {"t": round(float(t), 3), "user": user, "team": team, "model": model, "model_gb": gb, "family": family,
            "width": width, "height": height, "steps": steps, "step_s": round(step_seconds(family, width, height), 4)}


def pick_model(rng: np.random.Generator, favourite: str | None = None) -> str:
    # Users come back to the model they like about half the time.
    if favourite is not None and rng.random() < 0.5:
        return favourite
    return list(MODELS)[rng.choice(len(MODELS), p=POPULARITY)]


def work_s(record: dict) -> float:
    return record["steps"] * record["step_s"]


def rescale_to_load(records: list[dict], cluster_speed: float, target: float) -> list[dict]:
    """Stretch arrival times so the trace's work is `target` of what the cluster renders over its span."""
    span = max(r["t"] for r in records) or 1.0
    wanted = sum(work_s(r) for r in records) / (cluster_speed * target)
    factor = wanted / span
    for r in records:
        r["t"] = round(r["t"] * factor, 3)
    return sorted(records, key=lambda r: r["t"])


def poisson_times(rng: np.random.Generator, rate: np.ndarray, dt: float = 1.0) -> np.ndarray:
    """Arrival times of a Poisson process with a piecewise-constant rate (per second, one value per dt)."""
    counts = rng.poisson(rate * dt)
    starts = np.repeat(np.arange(len(rate)) * dt, counts)
    return np.sort(starts + rng.uniform(0.0, dt, size=len(starts)))


def light_jobs(rng, times, users=LIGHT_USERS, team="community") -> list[dict]:
    favourites = {u: pick_model(rng) for u in users}
    records = []
    for t in times:
        user = users[rng.integers(len(users))]
        records.append(job_record(rng, t, user, team, pick_model(rng, favourites[user])))
    return records


def batch_jobs(rng, start: float, end: float, batches: int, users=BATCH_USERS) -> list[dict]:
    """Small batches (4-16 images of one prompt: same model and size) submitted at once."""
    records = []
    for t in np.sort(rng.uniform(start, end, size=batches)):
        user = users[rng.integers(len(users))]
        model = pick_model(rng)
        first = job_record(rng, t, user, "design", model)
        size = (first["width"], first["height"])
        for i in range(int(rng.integers(4, 17))):
            records.append(job_record(rng, t + 0.05 * i, user, "design", model, size))
    return records


def campaign_jobs(rng, start: float, count: int, models: dict[str, float], ingest_s: float,
                  user: str = HEAVY_USER) -> list[dict]:
    """A campaign: `count` images over a few models, all submitted within `ingest_s` seconds."""
    names, odds = list(models), np.array(list(models.values()))
    times = np.sort(rng.uniform(start, start + ingest_s, size=count))
    picks = rng.choice(len(names), size=count, p=odds / odds.sum())
    return [job_record(rng, t, user, "marketing", names[p]) for t, p in zip(times, picks)]


def make_mixed(rng: np.random.Generator, scale: int = 1) -> list[dict]:
    span = 1000.0 * scale
    rate = np.full(int(span), 0.75)
    for _ in range(3 * scale):  # busy spells: two to four times the usual rate for a minute or two
        at, length = rng.uniform(0, span - 120), rng.uniform(60, 120)
        rate[int(at):int(at + length)] *= rng.uniform(2.0, 4.0)
    records = light_jobs(rng, poisson_times(rng, rate))
    records += batch_jobs(rng, 0.0, span, 12 * scale)
    for k in range(scale):
        records += campaign_jobs(rng, span * (0.3 + k) / scale, 350, {"sdxl-juggernaut": 0.7, "sd15-dreamshaper": 0.3},
                                 ingest_s=40.0)
    return rescale_to_load(records, sum(w[2] for w in MIXED_WORKERS), TARGET_UTILIZATION)


def make_bursty(rng: np.random.Generator, scale: int = 1) -> list[dict]:
    span = 1200.0 * scale
    rate = np.full(int(span), 0.15)
    records = []
    for _ in range(8 * scale):
        at, length = rng.uniform(0, span - 90), rng.uniform(20, 60)
        rate[int(at):int(at + length)] += rng.uniform(2.0, 5.0)
        if rng.random() < 0.5:  # a team hammering one model
            model = pick_model(rng)
            times = np.sort(rng.uniform(at, at + length, size=int(rng.integers(30, 80))))
            records += [job_record(rng, t, "team-" + model.split("-")[0], "burst", model) for t in times]
    records += light_jobs(rng, poisson_times(rng, rate))
    return rescale_to_load(records, sum(w[2] for w in MIXED_WORKERS), TARGET_UTILIZATION)


def make_heavy_user(rng: np.random.Generator, scale: int = 1) -> list[dict]:
    span = 1500.0 * scale
    records = light_jobs(rng, poisson_times(rng, np.full(int(span), 0.25)))
    for k in range(scale):
        records += campaign_jobs(rng, span * (0.1 + k) / scale, 600,
                                 {"sdxl-base": 0.5, "flux-schnell": 0.2, "sd15-base": 0.3}, ingest_s=30.0)
    return rescale_to_load(records, sum(w[2] for w in MIXED_WORKERS), TARGET_UTILIZATION)


# Campaigns of the deadlines trace: (user, images, models, deadline as a
# multiple of the campaign's work over the whole cluster's speed; None: none).
DEADLINE_CAMPAIGNS = [
    ("catalogue", 300, {"sdxl-base": 0.7, "sd15-base": 0.3}, 3.0),
    ("posters", 200, {"sdxl-juggernaut": 1.0}, None),
    ("thumbnails", 300, {"sd15-dreamshaper": 0.6, "sd15-anime": 0.4}, 4.0),
    ("hero-shots", 100, {"flux-schnell": 0.6, "sdxl-base": 0.4}, 6.0),
    ("backgrounds", 250, {"sdxl-turbo": 0.5, "sd15-base": 0.5}, None),
]
LIGHT_DEADLINE_ODDS = 0.3  # a light user's image has a deadline this often...
LIGHT_DEADLINE_S = (90.0, 300.0)  # ... drawn uniformly from this range


def make_deadlines(rng: np.random.Generator, scale: int = 1) -> list[dict]:
    """Campaigns with and without deadlines beside light users (see the module docstring)."""
    span = 1500.0 * scale
    cluster_speed = sum(w[2] for w in MIXED_WORKERS)
    records = light_jobs(rng, poisson_times(rng, np.full(int(span), 0.3)))
    for record in records:
        if rng.random() < LIGHT_DEADLINE_ODDS:
            record["deadline_s"] = round(float(rng.uniform(*LIGHT_DEADLINE_S)), 3)
    # The light users' arrivals are stretched to the target load first; the
    # campaigns then start at fixed points of that span.
    records = rescale_to_load(records, cluster_speed, TARGET_UTILIZATION * 0.35)
    span = max(r["t"] for r in records)
    for k in range(scale):
        for number, (user, count, models, factor) in enumerate(DEADLINE_CAMPAIGNS):
            start = span * (k + rng.uniform(0.05, 0.5)) / scale
            jobs = campaign_jobs(rng, start, count, models, ingest_s=30.0, user=user)
            name = f"{user}-{k + 1}"
            due = None if factor is None else start + factor * sum(map(work_s, jobs)) / cluster_speed
            for record in jobs:
                record["campaign"] = name
                if due is not None:
                    record["deadline_s"] = round(due - record["t"], 3)
            records += jobs
    return sorted(records, key=lambda r: r["t"])


INTERACTIVE_PRIORITY = 5


def make_preempt_campaign(rng: np.random.Generator, scale: int = 1) -> list[dict]:
    """A saturating campaign of long renders and a stream of interactive images on its models."""
    records = []
    for k in range(scale):
        start = 2800.0 * k
        times = np.sort(rng.uniform(start, start + 30.0, size=500))
        picks = rng.random(size=500) < 0.4
        records += [job_record(rng, t, HEAVY_USER, "marketing", "flux-dev" if flux else "sdxl-base", (2048, 2048))
                    for t, flux in zip(times, picks)]
        for t in poisson_times(rng, np.full(2500, 0.05)) + start:
            model = "flux-dev" if rng.random() < 0.5 else "sdxl-base"
            user = LIGHT_USERS[rng.integers(len(LIGHT_USERS))]
            records.append({**job_record(rng, t, user, "community", model), "priority": INTERACTIVE_PRIORITY})
    return sorted(records, key=lambda r: r["t"])


def big_workers(rng: np.random.Generator, count: int = 100) -> list[dict]:
    """A 100-GPU fleet of the mixed cluster's classes, in about the same proportions."""
    workers = []
    for index in range(count):
        _, vram, speed, load_gbps, families = MIXED_WORKERS[rng.integers(len(MIXED_WORKERS))]
        workers.append({"id": f"node-{index:03d}", "vram_gb": vram, "speed": speed, "load_gbps": load_gbps,
                        "families": families})
    return workers


# The all-at-once cluster: (vram_gb, speed, load_gbps, families, share of the fleet).
AT_ONCE_CLASSES = [
    (24, 1.0, 2.5, ["sd", "sdxl"], 0.4),
    (48, 1.4, 3.0, ["sd", "sdxl", "flux"], 0.4),
    (80, 2.2, 4.0, ["sd", "sdxl", "flux"], 0.2),
]
AT_ONCE_SEED = 20261206
AT_ONCE_USERS = 13
# The all-at-once models cycle through these families (most are SD or SDXL);
# each has its family's size and its own step count.
AT_ONCE_FAMILIES = ("sdxl", "sd", "flux", "sdxl", "sd")
AT_ONCE_STEPS = {"sd": (20, 25, 30), "sdxl": (4, 25, 30, 40), "flux": (4, 20, 28)}
AT_ONCE_GB = {"sd": 2.2, "sdxl": 6.9, "flux": 23.8}


def at_once_workers(count: int = 100) -> list[dict]:
    """``count`` GPUs in the all-at-once classes' proportions (40/40/20 at 100)."""
    workers = []
    for vram, speed, load_gbps, families, share in AT_ONCE_CLASSES:
        for _ in range(round(count * share)):
            workers.append({"id": f"gpu{vram}-{len(workers):04d}", "vram_gb": vram, "speed": speed,
                            "load_gbps": load_gbps, "families": families})
    return workers


def at_once_models(rng: np.random.Generator, count: int) -> dict[str, tuple[str, float, int]]:
    """``count`` models: id -> (family, GB, steps)."""
    models = {}
    for index in range(count):
        family = AT_ONCE_FAMILIES[index % len(AT_ONCE_FAMILIES)]
        steps = AT_ONCE_STEPS[family][rng.integers(len(AT_ONCE_STEPS[family]))]
        models[f"{family}-{index:02d}"] = (family, AT_ONCE_GB[family], int(steps))
    return models


def at_once_jobs(rng: np.random.Generator, models: dict[str, tuple[str, float, int]], jobs: int,
                 users: int = AT_ONCE_USERS) -> list[dict]:
    """``jobs`` jobs at t=0: users of very different sizes, each mostly on a few favourite models."""
    names = list(models)
    popularity = np.array([1.0 / k ** ZIPF_EXPONENT for k in range(1, len(names) + 1)])
    popularity /= popularity.sum()
    # A few campaign-sized users and many small ones (Zipf-like again).
    user_share = np.array([1.0 / k for k in range(1, users + 1)])
    user_share /= user_share.sum()
    owners = rng.choice(users, size=jobs, p=user_share)
    favourites = {u: rng.choice(len(names), size=3, replace=False, p=popularity) for u in range(users)}
    records = []
    for owner in owners:
        pick = favourites[owner][rng.integers(3)] if rng.random() < 0.7 else rng.choice(len(names), p=popularity)
        model = names[pick]
        family, gb, steps = models[model]
        choices, odds = SIZES[family]
        width, height = choices[rng.choice(len(choices), p=odds)]
        records.append({"t": 0.0, "user": f"user-{owner:02d}", "team": "at-once", "model": model, "model_gb": gb,
                        "family": family, "width": width, "height": height, "steps": steps,
                        "step_s": round(step_seconds(family, width, height), 4)})
    return records


def at_once_workload(workers: int = 100, models: int = 20, jobs: int = 10_000,
                     seed: int = AT_ONCE_SEED) -> tuple[list[dict], list[dict]]:
    """(workers, jobs) of an all-at-once workload; the same arguments give the same files."""
    rng = np.random.default_rng(seed)
    return at_once_workers(workers), at_once_jobs(rng, at_once_models(rng, models), jobs)


def write_at_once(out: Path, seed: int = AT_ONCE_SEED) -> str:
    """Write OUT/workers/at_once.json and OUT/traces/at_once/jobs-10k.jsonl; a line describing them."""
    (out / "traces" / "at_once").mkdir(parents=True, exist_ok=True)
    (out / "workers").mkdir(parents=True, exist_ok=True)
    workers, records = at_once_workload(seed=seed)
    (out / "workers" / "at_once.json").write_text(json.dumps(workers, indent=1) + "\n")
    write_jsonl(out / "traces" / "at_once" / "jobs-10k.jsonl", records)
    work = sum(work_s(r) for r in records)
    return (f"at_once/jobs-10k: {len(records)} jobs at t=0, {len({r['model'] for r in records})} models, "
            f"{len({r['user'] for r in records})} users, {work:.0f} s of work at speed 1 on "
            f"{len(workers)} GPUs of total speed {sum(w['speed'] for w in workers):.0f}")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def describe(name: str, records: list[dict]) -> str:
    span = max(r["t"] for r in records)
    work = sum(work_s(r) for r in records)
    flux_work = sum(work_s(r) for r in records if r["family"] == "flux")
    flux_speed = sum(w[2] for w in MIXED_WORKERS if w[1] >= 48)
    return (f"{name}: {len(records)} jobs, {len({r['model'] for r in records})} models, "
            f"{len({r['user'] for r in records})} users, span {span:.0f}s, expected load "
            f"{work / (sum(w[2] for w in MIXED_WORKERS) * span):.2f} (FLUX GPUs {flux_work / (flux_speed * span):.2f})")


def write_workload(out: Path, seed: int = SEED, scale: int = 1) -> list[str]:
    """Write OUT/workers/*.json and OUT/traces/*.jsonl; one line describing each trace."""
    (out / "traces").mkdir(parents=True, exist_ok=True)
    (out / "workers").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mixed = [{"id": i, "vram_gb": v, "speed": s, "load_gbps": g, "families": f} for i, v, s, g, f in MIXED_WORKERS]
    (out / "workers" / "mixed.json").write_text(json.dumps(mixed, indent=1) + "\n")
    (out / "workers" / "big.json").write_text(json.dumps(big_workers(rng), indent=1) + "\n")
    lines = []
    for name, make in (("mixed", make_mixed), ("bursty", make_bursty), ("heavy_user", make_heavy_user)):
        records = make(rng, scale)
        write_jsonl(out / "traces" / f"{name}.jsonl", records)
        lines.append(describe(name, records))
    records = make_deadlines(np.random.default_rng([seed, 23]), scale)
    write_jsonl(out / "traces" / "deadlines.jsonl", records)
    lines.append(describe("deadlines", records))
    records = make_preempt_campaign(np.random.default_rng([seed, 2323]), scale)
    write_jsonl(out / "traces" / "preempt_campaign.jsonl", records)
    lines.append(describe("preempt_campaign", records))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="writes OUT/traces/*.jsonl and OUT/workers/*.json")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--scale", type=int, default=1, help="multiply the jobs (and the span) of every trace")
    args = parser.parse_args()
    for line in write_workload(args.out, args.seed, args.scale):
        print(line)
    print(write_at_once(args.out))


if __name__ == "__main__":
    main()
