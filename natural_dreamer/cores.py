"""Threads that follow the machine: a long run takes a core another process frees, and gives
one back to a process that starts beside it.

`choose_threads` (fastpath.py) decides once, at start: one thread per core that no other
process keeps busy. A run lasts hours or days, so the machine it started on changes under
it: a test suite, a notebook or a second run comes and goes. `CoreWatch.check`, called once
per policy step, re-reads the machine every `period` seconds and re-decides; the choice
changes only when two readings in a row agree, so one busy moment does not flip it.
"""

import os
import time

import torch

from natural_dreamer.fastpath import DEFAULT_THREADS, cpu_times

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # jiffies / s


def cores_of_this_process() -> list:
    """The CPUs this process may run on (its affinity), [] where that cannot be read."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


class CoreWatch:
    """Re-chooses torch's CPU threads while a run trains.

    threads: the threads chosen at start. period: seconds between readings. Only for runs
    whose threads were chosen automatically (config `threads: 0`, no OMP_NUM_THREADS): a
    number set by the user is kept.
    """

    def __init__(self, threads: int, period: float = 60.0, cores: list | None = None):
        self.threads, self.period = threads, period
        self.cores = cores_of_this_process() if cores is None else cores
        self.pending = None  # a different choice seen once, waiting for a second reading
        self.mark = self.reading()

    @staticmethod
    def reading() -> tuple:
        """(wall seconds, this process's CPU seconds, cpu_times())."""
        return time.monotonic(), time.process_time(), cpu_times()

    def others_busy(self, before: tuple, after: tuple) -> float:
        """Cores that other processes kept busy between two readings: all busy time on this
        process's cores, less the CPU time this process spent itself."""
        (wall0, own0, times0), (wall1, own1, times1) = before, after
        busy = 0.0
        for core in self.cores:
            if core in times0 and core in times1:
                spent = times1[core][0] - times0[core][0]
                total = times1[core][1] - times0[core][1]
                busy += spent / total if total > 0 else 0.0
        own = (own1 - own0) / (wall1 - wall0) if wall1 > wall0 else 0.0
        return max(0.0, busy - own)

    def check(self) -> str | None:
        """Re-decide when `period` seconds have passed since the last reading. Returns a line
        saying what changed and why, or None."""
        if not self.cores or time.monotonic() - self.mark[0] < self.period:
            return None
        now = self.reading()
        others = self.others_busy(self.mark, now)
        self.mark = now
        if not now[2]:  # no /proc/stat: nothing to read the machine by
            return None
        choice = max(1, min(DEFAULT_THREADS, len(self.cores) - round(others)))
        if choice == self.threads:
            self.pending = None
            return None
        if self.pending != choice:  # seen once: wait for a second reading to agree
            self.pending = choice
            return None
        before, self.threads, self.pending = self.threads, choice, None
        torch.set_num_threads(choice)
        why = "a core was freed" if choice > before else "another process took a core"
        return (
            f"threads {before} -> {choice}: {why} (other processes kept {others:.1f} of "
            f"{len(self.cores)} cores busy over the last {self.period:.0f} s)"
        )
