"""What a render is expected to cost before it runs (GPU seconds).

Used to reserve quota at submission (and shown by dry runs) and to weigh a
campaign's remaining work for its ETA; the worker's measured time replaces
the estimate when the job finishes. The scheduler weighs queued work for fair
share with the default formula alone (``estimate_render_s``).

Estimates learn from the farm itself (issue 19: a dry run said "about 0 GPU
seconds" for jobs that used 18.5): ``RenderTimes.load`` reads the measured
``gpu_seconds`` of the farm's most recent succeeded jobs, one indexed query
(``ix_jobs_finished_at``, newest first, a fixed number of rows), and
``RenderTimes.estimate`` takes, in order, the first of

1. the same model at the same pixel count: measured seconds per step-image;
2. the same model at other sizes: measured seconds per work unit;
3. other models of the same family: measured seconds per work unit;
4. the documented default per family (``STEP_S``, ``NATIVE_PIXELS``).

A work unit is one denoising step of one image at the family's native pixel
count: cost grows with steps, images and pixels (at least a quarter of the
native count, where fixed costs dominate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.families import all_families
from farm.models import Job, JobStatus, ModelEntry

logger = logging.getLogger(__name__)

# Seconds per step on a reference GPU at the family's native size (the
# default until the farm has measured a family), as each family declares them.
STEP_S = {f.name: f.step_s for f in all_families() if f.renders}
NATIVE_PIXELS = {f.name: f.native_pixels for f in all_families() if f.renders}
DEFAULT_STEP_S = 0.1  # a family without an entry above
SAMPLE_JOBS = 200  # how many recent succeeded jobs the measured estimates come from


def work_units(family: str, width: int, height: int, steps: int, images: int = 1) -> float:
    """A render's size in steps of one image at the family's native pixel count."""
    return steps * images * max(width * height / NATIVE_PIXELS.get(family, 512 * 512), 0.25)


def estimate_render_s(family: str, width: int, height: int, steps: int, images: int = 1) -> float:
    """The documented default: what the render costs on the reference GPU."""
    return work_units(family, width, height, steps, images) * STEP_S.get(family, DEFAULT_STEP_S)


@dataclass
class RenderTimes:
    """Measured GPU seconds of recent succeeded jobs, summed per model and size,
    per model, and per family, each with the amount of work they did."""

    by_size: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # (model, pixels) -> [seconds, step-images]
    by_model: dict[str, list[float]] = field(default_factory=dict)  # model -> [seconds, work units]
    by_family: dict[str, list[float]] = field(default_factory=dict)  # family -> [seconds, work units]

    @classmethod
    def load(cls, session: Session, limit: int = SAMPLE_JOBS) -> RenderTimes:
        rows = session.execute(
            select(Job.model_id, ModelEntry.family, Job.width, Job.height, Job.steps, Job.num_images, Job.gpu_seconds)
            .join(ModelEntry, ModelEntry.id == Job.model_id)
            .where(Job.finished_at.is_not(None), Job.status == JobStatus.succeeded.value, Job.gpu_seconds.is_not(None))
            .order_by(Job.finished_at.desc()).limit(limit)).all()
        times = cls()
        for row in rows:
            times.add(row.model_id, row.family, row.width, row.height, row.steps, row.num_images, row.gpu_seconds)
        return times

    def add(self, model_id: str, family: str, width: int, height: int, steps: int, images: int, seconds: float) -> None:
        if seconds <= 0 or steps <= 0 or images <= 0:
            return
        units = work_units(family, width, height, steps, images)
        for table, key, amount in ((self.by_size, (model_id, width * height), steps * images),
                                   (self.by_model, model_id, units), (self.by_family, family, units)):
            total = table.setdefault(key, [0.0, 0.0])
            total[0] += seconds
            total[1] += amount

    def estimate(self, model_id: str, family: str, width: int, height: int, steps: int, images: int = 1) -> float:
        """Expected GPU seconds of a render (see the module's docstring for the order)."""
        same_size = self.by_size.get((model_id, width * height))
        if same_size:
            return same_size[0] / same_size[1] * steps * images
        units = work_units(family, width, height, steps, images)
        measured = self.by_model.get(model_id) or self.by_family.get(family)
        if measured:
            return measured[0] / measured[1] * units
        return units * STEP_S.get(family, DEFAULT_STEP_S)
