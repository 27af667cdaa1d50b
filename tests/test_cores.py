"""CoreWatch: a long run's threads follow the cores other processes leave free."""

import pytest
import torch

from natural_dreamer import cores


class FakeMachine:
    """Two cores; each reading advances the clock by 60 s, in which other processes keep
    `others` cores busy and this process spends `own` cores of CPU time."""

    def __init__(self, monkeypatch):
        self.wall = self.cpu = 0.0
        self.busy = {0: 0.0, 1: 0.0}  # busy seconds of each core
        self.others = self.own = 0.0
        monkeypatch.setattr(cores.time, "monotonic", lambda: self.wall)
        monkeypatch.setattr(cores.time, "process_time", lambda: self.cpu)
        monkeypatch.setattr(cores, "cpu_times", self.times)
        monkeypatch.setattr(cores, "DEFAULT_THREADS", 2)  # torch's own choice: one per core

    def times(self) -> dict:
        return {core: (int(100 * b), int(100 * self.wall)) for core, b in self.busy.items()}

    def advance(self, seconds: float = 60.0) -> None:
        """Time passes: busy seconds spread over the cores, ours and theirs together."""
        share = (self.others + self.own) / 2 * seconds
        self.wall += seconds
        self.cpu += self.own * seconds
        for core in self.busy:
            self.busy[core] += share


def test_a_run_takes_a_core_that_frees_up_and_gives_one_back(monkeypatch):
    machine = FakeMachine(monkeypatch)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        watch = cores.CoreWatch(1, period=60, cores=[0, 1])
        machine.others, machine.own = 1.0, 1.0  # another process still holds a core
        machine.advance()
        assert watch.check() is None and watch.threads == 1
        machine.others = 0.0  # it ended: one reading is not enough to change
        machine.advance()
        assert watch.check() is None and watch.threads == 1
        machine.advance()
        line = watch.check()
        assert watch.threads == 2 and torch.get_num_threads() == 2
        assert line.startswith("threads 1 -> 2: a core was freed"), line
        # Before the period has passed nothing is read.
        machine.advance(10)
        assert watch.check() is None
        # Another process starts beside it: our two threads spend 1.2 cores, theirs 0.8.
        machine.others, machine.own = 0.8, 1.2
        machine.advance()
        watch.check()
        machine.advance()
        line = watch.check()
        assert watch.threads == 1 and torch.get_num_threads() == 1
        assert "another process took a core" in line
        # A busy moment that does not repeat changes nothing.
        machine.others, machine.own = 0.0, 1.0
        machine.advance()
        assert watch.check() is None
        machine.others = 1.0
        machine.advance()
        assert watch.check() is None and watch.threads == 1
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize(
    "threads, omp, watched", [(0, None, True), (1, None, False), (0, "1", False)]
)
def test_only_threads_the_program_chose_are_watched(monkeypatch, tmp_path, threads, omp, watched):
    from natural_dreamer.loop import Trainer

    from conftest import tiny_config

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    saved = torch.get_num_threads()
    try:
        trainer = Trainer(tiny_config(threads=threads), root=tmp_path, quiet=True)
        assert (trainer.core_watch is not None) == watched
        trainer.close()
    finally:
        torch.set_num_threads(saved)
