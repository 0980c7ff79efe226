"""The queued jobs, indexed the way the placement policy reads them.

A ``JobQueue`` keeps every queued job in queue order (priority, highest
first, then the order jobs were added, which callers keep equal to age) three
times over: all together, per model and per user, each with its job count
and its total expected work. ``add`` and ``remove`` cost O(1) (a priority
level is an ``OrderedDict``, so the head stays O(1) however many jobs left
from the front), and reading a head or the next few jobs of a lane costs in
what is read, not in the length of the queue.

The policy takes a ``JobQueue`` as ``Snapshot.jobs`` and never changes it:
what one ``place`` call takes is kept in that call's own state. A caller
that keeps the queue between calls (the simulator) so pays nothing per call
for the jobs it does not look at; a plain sequence of jobs is indexed once per
call instead (``JobQueue(jobs)``, linear in the jobs).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import operator
from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable, Iterable, Iterator

if TYPE_CHECKING:
    from farm.scheduler.policy import QueuedJob

logger = logging.getLogger(__name__)

_ID = operator.attrgetter("id")
_PRIORITY = operator.attrgetter("priority")
_EST_SECONDS = operator.attrgetter("est_seconds")


class Lane:
    """Jobs in queue order: priority levels (highest first), each in the order its jobs were added.

    A level is an ``OrderedDict`` (id -> job) once jobs come and go; a lane
    built in bulk from a list (``Lane.of``) keeps each level a plain list,
    which is cheaper to build and read, until its first ``add`` or
    ``remove`` turns that level into an ``OrderedDict``.
    """

    __slots__ = ("levels", "count", "work_s")

    def __init__(self) -> None:
        self.levels: dict[int, OrderedDict[Hashable, QueuedJob] | list[QueuedJob]] = {}
        self.count = 0
        self.work_s = 0.0  # summed est_seconds

    @classmethod
    def of(cls, jobs: list[QueuedJob]) -> Lane:
        """A lane of ``jobs`` (each priority level in their order), built in bulk."""
        lane = cls()
        priorities = set(map(_PRIORITY, jobs))
        if len(priorities) == 1:
            lane.levels[priorities.pop()] = jobs
        else:
            # A stable sort keeps each level in the order given (reverse=True too).
            for priority, members in itertools.groupby(sorted(jobs, key=_PRIORITY, reverse=True), _PRIORITY):
                lane.levels[priority] = list(members)
        lane.count = len(jobs)
        lane.work_s = math.fsum(map(_EST_SECONDS, jobs))
        return lane

    def _level(self, priority: int) -> OrderedDict[Hashable, QueuedJob]:
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = OrderedDict()
        elif type(level) is list:
            level = self.levels[priority] = OrderedDict(zip(map(_ID, level), level))
        return level

    def add(self, job: QueuedJob, key=None) -> None:
        """Add ``job`` at the end of its priority level, or with ``key`` at its
        place by it (the level already in that order): O(1) at the end; before
        the end, found by bisection and the level rebuilt (linear, rare: a
        re-queued job, a commit that came late)."""
        level = self._level(job.priority)
        if key is not None and level and key(job) < key(next(reversed(level.values()))):
            members = list(level.values())
            members.insert(bisect.bisect_right(members, key(job), key=key), job)
            self.levels[job.priority] = OrderedDict(zip(map(_ID, members), members))
        else:
            level[job.id] = job
        self.count += 1
        self.work_s += job.est_seconds

    def remove(self, job: QueuedJob) -> None:
        level = self._level(job.priority)
        del level[job.id]
        if not level:
            del self.levels[job.priority]
        self.count -= 1
        # Sums of floats drift as jobs come and go; an empty lane is exactly empty.
        self.work_s = self.work_s - job.est_seconds if self.count else 0.0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[QueuedJob]:
        for priority in sorted(self.levels, reverse=True):
            level = self.levels[priority]
            yield from (level if type(level) is list else level.values())

    def first(self) -> QueuedJob | None:
        if not self.levels:
            return None
        level = self.levels[max(self.levels)]
        return level[0] if type(level) is list else next(iter(level.values()))

    def last(self) -> QueuedJob | None:
        """The job at the end of queue order (lowest priority, newest)."""
        if not self.levels:
            return None
        level = self.levels[min(self.levels)]
        return level[-1] if type(level) is list else next(reversed(level.values()))

    def newer_than(self, since: float) -> Iterator[QueuedJob]:
        """Jobs queued at or after ``since``, newest first within each priority level."""
        for priority in sorted(self.levels):
            level = self.levels[priority]
            for job in reversed(level if type(level) is list else level.values()):
                if job.queued_at < since:
                    break
                yield job


class JobQueue:
    """Queued jobs in queue order, with a lane per model and per user (module docstring)."""

    __slots__ = ("all", "models", "users", "_jobs")

    def __init__(self, jobs: Iterable[QueuedJob] = ()) -> None:
        self.all = Lane()
        self.models: dict[str, Lane] = {}
        self.users: dict[int, Lane] = {}
        self._jobs: dict[Hashable, QueuedJob] = {}
        jobs = list(jobs)
        if jobs:
            self._index(jobs)

    def _index(self, jobs: list[QueuedJob]) -> None:
        """Fill an empty queue with ``jobs`` in bulk (what the live scheduler does once per pass)."""
        self._jobs = dict(zip(map(_ID, jobs), jobs))
        if len(self._jobs) != len(jobs):
            raise ValueError("a job is listed twice")
        models: dict[str, list[QueuedJob]] = {}
        users: dict[int, list[QueuedJob]] = {}
        for job in jobs:
            members = models.get(job.model_id)
            if members is None:
                members = models[job.model_id] = []
            members.append(job)
            members = users.get(job.user_id)
            if members is None:
                members = users[job.user_id] = []
            members.append(job)
        self.all = Lane.of(jobs)
        self.models = {model_id: Lane.of(members) for model_id, members in models.items()}
        self.users = {user_id: Lane.of(members) for user_id, members in users.items()}

    def add(self, job: QueuedJob, key=None) -> None:
        """Queue ``job`` behind every job of its priority already queued
        (callers add in age order), or with ``key`` at its place by it within
        its priority level (every level already in ``key`` order: a caller
        that learns of jobs out of age order, farm/scheduler/livequeue.py)."""
        if job.id in self._jobs:
            raise ValueError(f"job {job.id!r} is queued already")
        self._jobs[job.id] = job
        self.all.add(job, key)
        lane = self.models.get(job.model_id)
        if lane is None:
            lane = self.models[job.model_id] = Lane()
        lane.add(job, key)
        lane = self.users.get(job.user_id)
        if lane is None:
            lane = self.users[job.user_id] = Lane()
        lane.add(job, key)

    def remove(self, job_id: Hashable) -> QueuedJob:
        job = self._jobs.pop(job_id)
        self.all.remove(job)
        for lanes, key in ((self.models, job.model_id), (self.users, job.user_id)):
            lane = lanes[key]
            lane.remove(job)
            if not lane.count:
                del lanes[key]
        return job

    def get(self, job_id: Hashable) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def last(self) -> QueuedJob | None:
        return self.all.last()

    def __contains__(self, job_id: Hashable) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __iter__(self) -> Iterator[QueuedJob]:
        return iter(self.all)

    def __getitem__(self, index: int) -> QueuedJob:
        """The index-th job in queue order (reads up to it: meant for the first few)."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise TypeError("a JobQueue is read by non-negative position only")
        job = next(itertools.islice(self.all, index, None), None)
        if job is None:
            raise IndexError(index)
        return job


def as_job_queue(jobs: Iterable[QueuedJob]) -> JobQueue:
    """``jobs`` itself if it is a JobQueue, else a JobQueue of them (their order kept)."""
    return jobs if isinstance(jobs, JobQueue) else JobQueue(jobs)
