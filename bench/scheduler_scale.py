"""Decision cost against queue length: farm against fifo in the same run (issue 23).

    .venv/bin/python bench/scheduler_scale.py [--passes 2000] [--repeat 50]

Prints one JSON object with two parts.

``synthetic``: one placement call on the synthetic busy farm of ``farm bench
decision`` (90 % of the GPUs rendering, a Zipf-like model mix, 50 users),
timed ``--repeat`` times at 1,000, 10,000 and 100,000 queued on 100 workers
/ 20 models, and at 100,000 queued on 1,000 workers / 50 models. farm is
timed twice: given a ``JobQueue`` kept between calls (as the simulator keeps
one; ``farm_kept``) and given a plain list that it indexes on every call
(``farm_list``); fifo gets the list.

``replays``: every pass of an all-at-once replay as the live scheduler meets
it (``farm bench decision --trace``): the committed 100-GPU trace
(bench/traces/at_once/jobs-10k.jsonl, whole), and the 1,000-GPU shape
(50 models, 100,000 jobs at t=0, built by make_traces.at_once_workload) for
its first ``--passes`` passes, the snapshot showing the whole queue as the
live scheduler now does and, for farm, the first 5,000 jobs only as it did
before it kept its queue across passes (``farm_capped_5000``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from make_traces import at_once_workload

from farm.scheduler.bench import replay_decisions, run_replay_bench, synthetic_snapshot, time_decisions
from farm.scheduler.fifo import place_fifo
from farm.scheduler.jobqueue import JobQueue
from farm.scheduler.policy import Snapshot, place
from farm.scheduler.simulator import TraceJob, WorkerSpec

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
SHAPES = [(100, 20, 1_000), (100, 20, 10_000), (100, 20, 100_000), (1_000, 50, 100_000)]


def synthetic(workers: int, models: int, queued: int, repeat: int) -> dict:
    listed = synthetic_snapshot(workers, models, queued)
    kept = Snapshot(jobs=JobQueue(listed.jobs), workers=listed.workers, now=listed.now, shares=listed.shares)
    return {"workers": workers, "models": models, "queued": queued, "repeat": repeat,
            "free_workers": sum(1 for w in listed.workers if w.busy < w.capacity),
            "farm_kept": time_decisions(place, kept, repeat),
            "farm_list": time_decisions(place, listed, repeat),
            "fifo": time_decisions(place_fifo, listed, repeat)}


def big_replay(passes: int) -> dict:
    workers, records = at_once_workload(workers=1_000, models=50, jobs=100_000)
    specs = [WorkerSpec(id=w["id"], vram_gb=w["vram_gb"], load_gbps=w["load_gbps"], speed=w["speed"],
                        families=frozenset(w["families"])) for w in workers]
    trace = [TraceJob(**record) for record in records]
    return {"workers": len(specs), "jobs": len(trace), "passes_limit": passes,
            "farm": replay_decisions(specs, trace, "farm", passes),
            "fifo": replay_decisions(specs, trace, "fifo", passes),
            # What the live scheduler showed before it kept the whole queue (issue 23).
            "farm_capped_5000": replay_decisions(specs, trace, "farm", passes, snapshot_limit=5_000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="calls timed per synthetic shape and policy")
    parser.add_argument("--passes", type=int, default=2000, help="passes of the 1,000-GPU replay")
    parser.add_argument("--skip-replays", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = {"synthetic": [synthetic(w, m, q, args.repeat) for w, m, q in SHAPES]}
    if not args.skip_replays:
        result["replays"] = [
            run_replay_bench(ROOT / "workers" / "at_once.json", ROOT / "traces" / "at_once" / "jobs-10k.jsonl"),
            big_replay(args.passes),
        ]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
