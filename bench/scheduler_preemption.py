"""What preemption at step boundaries buys interactive images, and what it costs a campaign.

    .venv/bin/python bench/scheduler_preemption.py [--trace bench/traces/preempt_campaign.jsonl]
        [--wait-s 20,10,5] [--checkpoint-s 0.5] [--restore-s 0.5] [--lost-steps 1] [--seeds 1,2,3]

Workload (bench/make_traces.py, preempt_campaign.jsonl): on the mixed
10-GPU cluster, a campaign of 500 long renders (2048x2048, 60 % SDXL, 40 %
FLUX.1-dev, priority 0) submitted in 30 s saturates the GPUs that can run
them for most of an hour, while light users submit single interactive
images (priority 5) on the same two models, about one every 20 s. The shape
users hit hardest here is an interactive image arriving while every GPU
holding its model is in the middle of a 20-80 s campaign render.

The same trace is replayed with farm's policy in one run: without the
preemption pass (the baseline) and with it, once per ``--wait-s`` (the
pass's threshold: a slot predicted to free within it is waited for), at
the given checkpoint and restore costs and with ``lost_steps`` steps paid
again per preemption (an upper bound: the farm's resume repeats none). ``--seeds`` also replays
freshly generated traces of the same shape (make_preempt_campaign with
those seeds). One JSON object: per trace, interactive p50/p95/max wait,
campaign finish time and makespan with and without, their ratios, and the
number of preemptions.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from farm.scheduler.policy import place
from farm.scheduler.simulator import PreemptionModel, TraceJob, load_trace, load_workers, simulate

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent


def fresh_trace(seed: int) -> list[TraceJob]:
    from make_traces import make_preempt_campaign

    records = make_preempt_campaign(np.random.default_rng(seed))
    return [TraceJob(t=r["t"], user=r["user"], model=r["model"], model_gb=r["model_gb"], family=r["family"],
                     width=r["width"], height=r["height"], steps=r["steps"], step_s=r["step_s"],
                     priority=r.get("priority", 0), team=r.get("team")) for r in records]


def summary(metrics: dict, interactive: str, campaign_user: str) -> dict:
    waits = metrics["priorities"][interactive]
    return {"interactive_wait_p50_s": waits["wait_p50_s"], "interactive_wait_p95_s": waits["wait_p95_s"],
            "interactive_wait_max_s": waits["wait_max_s"], "campaign_finished_s": metrics["finished_s_by_user"][campaign_user],
            "makespan_s": metrics["makespan_s"], "wait_p95_s": metrics["wait_p95_s"], "preemptions": metrics["preemptions"],
            "rendered": metrics["rendered"], "vram_overcommits": metrics["vram_overcommits"],
            "invalid_assignments": metrics["invalid_assignments"], "double_assignments": metrics["double_assignments"]}


RATIO_KEYS = ("interactive_wait_p50_s", "interactive_wait_p95_s", "campaign_finished_s", "makespan_s", "wait_p95_s")


def compare(workers, trace: list[TraceJob], models: list[PreemptionModel]) -> dict:
    interactive = str(max(job.priority for job in trace))
    campaign_user = max({j.user for j in trace}, key=lambda u: sum(j.user == u for j in trace))
    without = summary(simulate(workers, trace, place, policy_name="farm"), interactive, campaign_user)
    result = {"jobs": len(trace), "interactive_jobs": sum(str(j.priority) == interactive for j in trace),
              "without": without}
    for model in models:
        with_ = summary(simulate(workers, trace, place, policy_name="farm+preemption", preemption=model),
                        interactive, campaign_user)
        ratios = {key: round(with_[key] / without[key], 3) if without[key] else None for key in RATIO_KEYS}
        result[f"with_wait_s={model.wait_s:g}"] = {**with_, "ratios_with_over_without": ratios}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=ROOT / "traces" / "preempt_campaign.jsonl")
    parser.add_argument("--workers", type=Path, default=ROOT / "workers" / "mixed.json")
    parser.add_argument("--wait-s", default="20,10,5", help="comma-separated preemption thresholds to replay")
    parser.add_argument("--checkpoint-s", type=float, default=0.5)
    parser.add_argument("--restore-s", type=float, default=0.5)
    parser.add_argument("--lost-steps", type=int, default=1)
    parser.add_argument("--seeds", default="", help="make_traces seeds for fresh traces of this shape, as 1,2 or 11-20")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = [PreemptionModel(wait_s=float(w), checkpoint_s=args.checkpoint_s, restore_s=args.restore_s,
                              lost_steps=args.lost_steps) for w in args.wait_s.split(",") if w.strip()]
    workers = load_workers(args.workers)
    result = {"model": {"wait_s": [m.wait_s for m in models], "max_preemptions": models[0].max_preemptions,
                        "checkpoint_s": args.checkpoint_s, "restore_s": args.restore_s, "lost_steps": args.lost_steps},
              "traces": {args.trace.name: compare(workers, load_trace(args.trace), models)}}
    from scheduler_targets import seed_list

    for seed in seed_list(args.seeds):
        result["traces"][f"seed-{seed}"] = compare(workers, fresh_trace(seed), models)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
