"""Rules tried against the copy rule's wait for a holder (issue 23), replayed through bench/scheduler_sweep.py.

    cd bench && PYTHONPATH=.. ../.venv/bin/python experiments/copy_rule_variants.py VARIANT [scheduler_sweep.py arguments]
    cd bench && PYTHONPATH=.. ../.venv/bin/python experiments/copy_rule_variants.py VARIANT targets [scheduler_targets.py arguments]

(the second form checks issue 3's targets, loads against the clairvoyant
bound among them, with the variant in place).

Each variant wraps one method of the policy's ``_Placement`` for the run and
leaves farm/scheduler/policy.py as it is; none is shipped (docs/benchmarks.md
says why). They were measured against the policy before its own idle copy
shipped (``policy.IDLE_COPY``, 2026-12-07) and its cold-eviction and burst
copies (``policy.COLD_COPY``), so ``apply`` turns those off first, to give
the figures benchmarks.md records. VARIANT is one of:

- ``idle-copy=K``: a worker with nothing running and no queued work for the
  models it holds loads a copy that evicts nothing for a job that has waited
  K times that load (wait as long as the load would take, then load);
- ``light-idle-copy=K``: the same, for the jobs of users with at most
  LIGHT_QUEUED jobs queued only;
- ``full-backlog``: the holders' backlog the copy rule weighs counts the
  queued work of the other models they hold as well (their share of it),
  not the job's model alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for scheduler_sweep

import scheduler_sweep  # noqa: E402

from farm.scheduler import policy  # noqa: E402

LIGHT_QUEUED = 8


def _has_own_work(placement, worker) -> bool:
    for model_id in placement.held[worker.id]:
        lane = placement.by_model.get(model_id)
        if lane is not None and lane.head(placement.taken) is not None:
            return True
    return False


def idle_copy(factor: float, light_only: bool):
    shipped = policy._Placement.should_wait_for_holder

    def should_wait_for_holder(self, job, worker, evicts):
        queued = self.queue.users.get(job.user_id)
        if not evicts and not job.excluded_workers and worker.busy == 0 \
                and (not light_only or (queued is not None and queued.count <= LIGHT_QUEUED)) \
                and self.copy_allowed(worker.id, job.model_id) \
                and self.now - job.queued_at >= factor * worker.load_s(job.model_id, job.model_gb) \
                and not _has_own_work(self, worker):
            return False
        return shipped(self, job, worker, evicts)

    policy._Placement.should_wait_for_holder = should_wait_for_holder


def full_backlog():
    shipped = policy._Placement.holders_backlog_s

    def holders_backlog_s(self, job):
        backlog, speed = shipped(self, job)
        if not math.isfinite(backlog) or speed <= 0:
            return backlog, speed
        mine = {w.id for w in self.holders.get(job.model_id, ()) if policy._can_run_here(job, w)}
        others = {m for wid in mine for m in self.held[wid] if m != job.model_id and m in self.by_model}
        extra = 0.0
        for model_id in others:
            holders = self.holders.get(model_id, ())
            total = sum(w.speed * w.capacity for w in holders)
            ours = sum(w.speed * w.capacity for w in holders if w.id in mine)
            if total > 0:
                extra += self.unplaced_work_s(model_id) * ours / total
        return backlog + extra / speed, speed

    policy._Placement.holders_backlog_s = holders_backlog_s


def apply(variant: str) -> None:
    name, _, value = variant.partition("=")
    policy.IDLE_COPY = policy.COLD_COPY = 0  # the baseline the variants were measured against (module docstring)
    if name in ("idle-copy", "light-idle-copy"):
        idle_copy(float(value or 1.0), light_only=name == "light-idle-copy")
    elif name == "full-backlog":
        full_backlog()
    else:
        raise SystemExit(f"unknown variant {variant!r}: idle-copy=K, light-idle-copy=K or full-backlog")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    apply(sys.argv[1])
    if sys.argv[2:3] == ["targets"]:
        import scheduler_targets

        scheduler_targets.main(sys.argv[3:])
    else:
        raise SystemExit(scheduler_sweep.main(sys.argv[2:]))
