"""CPU use per process during a benchmark run (psutil), to say what bounds a rate.

A rate is bound by a Python process when that process uses about one core
(the GIL), and by the machine when all processes together use about every
core; shares below both point at waiting (locks, I/O, other processes).
"""

from __future__ import annotations

import logging
import resource
import time

logger = logging.getLogger(__name__)


class CpuMeter:
    """CPU seconds between two readings of named processes (those named in
    ``trees`` with their children, e.g. the workers of `farm api --processes
    N`), of process groups
    by name (every postgres backend on the machine), of this process's waited
    children (``waited_children`` names them: a load generator run to
    completion between the readings), and of the whole machine."""

    def __init__(self, processes: dict[str, int], trees: tuple[str, ...] = (),
                 groups: tuple[str, ...] = ("postgres", "redis-server"), waited_children: str | None = None) -> None:
        import psutil

        self.psutil = psutil
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.trees = trees
        self.groups = groups
        self.waited_children = waited_children

    def _own(self, name: str, process) -> float:
        total = 0.0
        members = [process, *process.children(recursive=True)] if name in self.trees else [process]
        for member in members:
            try:
                times = member.cpu_times()
            except self.psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def _group(self, name: str) -> dict[int, float]:
        """CPU seconds of each live process of that name, by process id."""
        found = {}
        for process in self.psutil.process_iter(["name", "cpu_times"]):
            times = process.info["cpu_times"]
            if process.info["name"] == name and times is not None:
                found[process.pid] = times.user + times.system
        return found

    def read(self) -> dict[str, float | dict[int, float]]:
        reading = {name: self._own(name, process) for name, process in self.processes.items()}
        for name in self.groups:
            reading[f"{name} (all)"] = self._group(name)
        if self.waited_children:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            reading[self.waited_children] = children.ru_utime + children.ru_stime
        reading["machine"] = sum(self.psutil.cpu_times()[:3])
        reading["wall"] = time.monotonic()
        return reading

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Cores each used on average between the readings; "rest of the
        machine" is what processes outside the benchmark (other users of a
        shared machine) took."""
        wall = after["wall"] - before["wall"]
        used = {}
        for name in before:
            if name == "wall":
                continue
            if isinstance(before[name], dict):
                # A group's processes come and go (database connections
                # close): count those alive at the end, from zero if new. What
                # a process that ended in between used is not counted.
                used[name] = sum(seconds - before[name].get(pid, 0.0) for pid, seconds in after[name].items()) / wall
            else:
                used[name] = (after[name] - before[name]) / wall
        used["rest of the machine"] = max(used["machine"] - sum(v for k, v in used.items() if k != "machine"), 0.0)
        return {name: round(value, 2) for name, value in used.items()}
