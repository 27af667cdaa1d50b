"""The training loop: prefill, then alternate collecting and training; log, save, evaluate.

    prefill with random actions
    repeat until the budget of environment steps is spent:
        one policy step in each environment (stored in the replay buffer)
        gradient steps, as many as train_ratio asks for
        every log_every env steps: a metrics row; every checkpoint_every updates: save + eval
        every save_minutes of wall time, between those: <run>_latest.pth at an episode's end

train_ratio counts replayed steps (B * T) per policy step, as in the paper: at 512 with
B * T = 1024 there is one gradient step every 2 policy steps (4 env steps at action repeat 2).
Policy steps are counted over all environments (train.envs) and all torchrun processes, so a
step of 4 environments pays for twice the updates of a step of 2, and the ratio of replayed
to collected data is the same whatever the parallelism.

Under torchrun every process (rank) runs this same loop in lockstep: the counters are global
and identical on every rank, so all ranks reach each gradient step (and its all-reduce)
together. Rank 0 alone writes metrics, checkpoints and videos.
"""

import collections
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from natural_dreamer import distributed
from natural_dreamer.buffer import ReplayBuffer
from natural_dreamer.checkpoint import (
    CheckpointError,
    check_resumable,
    claim_run,
    load_checkpoint,
    numpy_to_torch,
    save_checkpoint,
    suffix_of,
    torch_to_numpy,
)
from natural_dreamer.collector import (
    AgentPolicy,
    Collector,
    RandomPolicy,
    VectorCollector,
    run_episode,
)
from natural_dreamer.config import (
    ROOT,
    save_config,
)
from natural_dreamer.cores import CoreWatch
from natural_dreamer.dreamer import Dreamer
from natural_dreamer.envs import make_env
from natural_dreamer.evaluate import check_same_config, checkpoint_path
from natural_dreamer.fastpath import choose_threads, use_heap_allocator
from natural_dreamer.files import refuse_links
from natural_dreamer.loader import BatchLoader
from natural_dreamer.logger import MetricsLogger
from natural_dreamer.utils import pick_device, resident_mb, seed_everything
from natural_dreamer.vector import make_vector_env
from natural_dreamer.video import side_by_side, write_video

# The folders under the output root (--outdir) that a run writes into, and nothing else.
OUTPUT_FOLDERS = ("metrics", "plots", "checkpoints", "videos")

# Updates after a start (the end of prefill, or a resume) that the ETA leaves out: the
# first ones build torch.compile's graphs (a minute or more), which the rest never repeat.
ETA_WARMUP_UPDATES = 3


# The gradient step after which a run writes its first metrics row, whatever log_every says:
# past the compile warm-up (ETA_WARMUP_UPDATES), with enough updates for a first ETA.
FIRST_ROW_UPDATES = 20


class StopRequest(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside the loop when SIGINT or SIGTERM arrives; the run saves, then stops.

    `signum` is the signal's number, so the program can exit with status 128 + signum.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Trainer:
    """Owns one run: environments, agent, replay buffer, counters and output files.

    config: a resolved config (load_config); root: the folder holding metrics/, plots/,
    checkpoints/ and videos/ (the repository by default).
    """

    def __init__(self, config, root: Path = ROOT, quiet: bool = False):
        self.config, self.root, self.quiet = config, Path(root), quiet
        self.run = f"{config.config_name}_{config.run_name}"
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0  # rank 0 alone writes metrics, checkpoints and videos
        self.seed = config.seed + distributed.RANK_SEED_STRIDE * self.rank  # its own episodes
        if config.world_model.batch_size % self.world:
            raise ValueError(
                f"world_model.batch_size {config.world_model.batch_size} must split evenly "
                f"over {self.world} processes"
            )
        use_heap_allocator()  # freed buffers stay in the process: no page faults per step
        self.threads, self.threads_reason = choose_threads(config.threads)  # before the agent
        # Threads chosen by the machine follow it while the run trains (cores.py).
        auto = config.threads == 0 and not os.environ.get("OMP_NUM_THREADS")
        self.core_watch = CoreWatch(self.threads) if auto else None
        seed_everything(config.seed)  # the same initial agent on every rank
        self.device = pick_device(config.device, distributed.local_rank())
        self.eval_env = make_env(config.env, seed=config.seed + 10_000)
        env = self.eval_env  # its specs are those of the training environments
        self.agent = Dreamer(env.obs_space, env.action_size, env.discrete, config, self.device)
        distributed.broadcast_module(self.agent)
        if self.rank:
            seed_everything(self.seed)
        self.action_repeat = env.action_repeat
        self.build_collection(env)
        self.env_steps = self.policy_steps = self.gradient_steps = 0
        self.train_policy_steps = 0  # policy steps since training began (train_ratio credit)
        self.returns = collections.deque(maxlen=10)
        # Crafter: over all training episodes, how many unlocked each achievement at least once.
        self.achievement_episodes, self.achievements = 0, collections.Counter()
        self.interval = collections.defaultdict(list)  # metrics since the last row
        self.wall_offset, self.start_time = 0.0, time.time()
        self.eta_mark = None  # (wall seconds, env steps, gradient steps) at the last row
        self.first_update = 0  # gradient steps when train() began (after a resume: more)
        self.next_checkpoint = config.train.checkpoint_every
        self.saved_at = -1  # gradient steps at the last numbered checkpoint
        self.saved_time = time.time()  # wall clock of the last save of any kind
        self.logger = self.board = None  # the CSV and TensorBoard writers, while training
        self.stop_signal = 0  # SIGINT or SIGTERM received: stop after this policy step
        self.lock = None  # checkpoints/<run>.lock while this process trains the run

    def claim(self) -> None:
        """Make this process the only one training the run (rank 0 holds the lock); a second
        `main.py` on the same run name stops here with CheckpointError. An output folder or
        a file of the run that is a symbolic link stops it too (ValueError): no write may
        follow a link planted in an output folder."""
        if self.main and self.lock is None:
            refuse_links(self.root, OUTPUT_FOLDERS, self.run)
            self.lock = claim_run(self.path("checkpoints", f"{self.run}.lock"))

    def build_collection(self, env) -> None:
        """The training environments, their replay buffer (one stream each), the collector,
        the policies and the batch loader."""
        count, wm = self.config.train.envs, self.config.world_model
        self.envs = make_vector_env(self.config.env, self.seed, count)
        capacity = self.config.train.replay_capacity  # pages are only touched as steps arrive
        self.context = wm.replay_context
        rssm = self.agent.world_model.rssm
        self.buffer = ReplayBuffer(
            capacity,
            env.obs_space,
            env.action_size,
            self.seed,
            streams=count,
            latent=(rssm.deter_dim, rssm.stoch, rssm.classes) if self.context else None,
            online=self.config.train.online_queue,
        )
        self.collector = VectorCollector(self.envs, self.buffer, seed=self.seed)
        self.random_policy = RandomPolicy(env.action_size, env.discrete, self.seed)
        # Under plan2explore the exploration actor collects; evaluation uses the task actor.
        self.policy = AgentPolicy(self.agent, count=count, actor=self.agent.collecting_actor())
        # Each rank samples its share of the batch; on a GPU the next one is sampled ahead.
        self.loader = BatchLoader(
            self.buffer,
            wm.batch_size // self.world,
            wm.batch_length,
            self.device,
            ahead=self.device.type == "cuda",
            context=self.context,
        )

    def path(self, folder: str, name: str) -> Path:
        """root/folder/name, where name must be one plain file name: every file the run
        writes goes through here, so none can land outside root's output folders."""
        if folder not in OUTPUT_FOLDERS or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"refusing to write {folder}/{name}: not a file in an output folder")
        return self.root / folder / name

    @property
    def updates_per_policy_step(self) -> float:
        wm = self.config.world_model
        return self.config.train.train_ratio / (wm.batch_size * wm.batch_length)

    def train(self) -> None:
        """Run until config.train.steps environment steps; Ctrl-C saves, then re-raises."""
        cfg = self.config.train
        self.first_update = self.gradient_steps
        self.claim()
        distributed.barrier()  # every rank has checked for old outputs before rank 0 writes
        self.open_loggers()
        if self.main:
            save_config(self.config, self.path("checkpoints", f"{self.run}.yml"))
        quiet = self.quiet or not self.main
        bar = tqdm(total=cfg.steps, initial=self.env_steps, unit="step", disable=quiet or None)
        previous = {
            sig: signal.signal(sig, self.interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        failed = True
        try:
            while self.env_steps < cfg.steps:
                self.step_or_stop(bar)
                if self.stop_signal:
                    raise StopRequest(self.stop_signal)
            failed = False
        except StopRequest:
            if self.main:
                self.save(suffix="latest")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
            self.close(quietly=failed)

    def step_or_stop(self, bar) -> None:
        """self.step, where a failure that a stop signal caused counts as the stop.

        Ctrl-C signals the whole process group: the C++ compiler torch.compile started in
        the warm-up dies with it, and the step fails (CppCompileError), as does one whose
        environment workers were stopped (SIGTERM from `timeout` or Slurm). The counters
        only advance after what they count succeeded (a gradient step that failed while
        compiling changed no parameter), so the run stops and saves as if the signal had
        come a step earlier. A non-finite value is a fault whatever else arrived.
        """
        try:
            self.step(bar)
        except (StopRequest, FloatingPointError):
            raise
        except Exception as error:
            if not self.stop_signal:
                raise
            first = (str(error).strip().splitlines() or [""])[0][:120]
            self.say(f"the step under way ended in {type(error).__name__} {first} (the stop)")

    def close(self, quietly: bool = False) -> None:
        """Close the writers (the last plot), the loader and the environments. quietly: a
        failure is already on its way out, so a second one (a full disk) is not raised."""
        closers = (self.logger, self.board, self.loader, self.envs, self.eval_env, self.lock)
        for closer in closers:
            if closer is None:
                continue
            try:
                closer.close()
            except Exception:  # noqa: BLE001 (workers a signal stopped fail in many ways)
                if not quietly:
                    raise
        self.lock = None  # closing the file released the run

    def open_loggers(self) -> None:
        """The writers config.logger names ("csv", "tensorboard"), on rank 0 only."""
        names = self.config.logger.split(",") if self.main else []
        if "csv" in names:
            self.logger = MetricsLogger(
                self.path("metrics", f"{self.run}.csv"),
                self.path("plots", f"{self.run}.html"),
                title=self.run,
                resume_from_env_steps=self.env_steps,
            )
            # A checkpoint saved in a step that then wrote a row holds the metrics of that
            # row: they are written already, so the next row starts afresh.
            if self.env_steps and self.logger.last("env_steps") == self.env_steps:
                self.interval.clear()
            # A resumed clock goes on from the newest kept row, which can be later than the
            # checkpoint's own time (the last row is written after the final evaluation).
            self.wall_offset = max(self.wall_offset, self.logger.last("wall_seconds") or 0.0)
        if "tensorboard" in names:
            from natural_dreamer.tensorboard_logger import TensorBoardLogger  # optional package

            self.board = TensorBoardLogger(self.path("metrics", self.run), self.env_steps)

    def interrupt(self, signum, frame):
        """Note the signal; the loop stops at the end of the current policy step. Raising here
        instead could land inside torch.compile, which would swallow the exception. Says so
        at once: the step under way can take minutes (the first update compiles)."""
        first = not self.stop_signal
        self.stop_signal = signum  # before a word is written: the terminal may be gone
        if first and self.main:
            name = signal.Signals(signum).name
            try:  # an exception raised here would land anywhere in the step under way
                print(
                    f"{name}: stopping after the current step, then saving '{self.run}_latest'",
                    file=sys.stderr,
                    flush=True,
                )
            except (OSError, ValueError):  # the pipe's reader (tee) stopped by the same signal
                pass

    def step(self, bar) -> None:
        """One policy step in every environment, the gradient steps it pays for, and any
        logging or saving due."""
        cfg = self.config.train
        training = self.env_steps >= cfg.prefill
        updates_before = self.gradient_steps
        try:
            finished = self.collector.step(self.policy if training else self.random_policy)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"{error} (collecting, at env step {self.env_steps})"
            ) from None
        # Counted over all environments of all ranks: every rank has taken this step too.
        new_steps = self.collector.count * self.world
        self.policy_steps += new_steps
        self.env_steps += new_steps * self.action_repeat
        bar.update(new_steps * self.action_repeat)
        for episode in finished:
            self.returns.append(episode["return"])
            self.interval["episode_return"].append(episode["return"])
            self.interval["episode_length"].append(episode["length"])
            self.count_achievements(episode.get("achievements"))
        # Once every stream holds a sequence and its context step (one row per environment
        # per step, at least).
        span = self.config.world_model.batch_length + self.context
        if training and self.policy_steps >= span * new_steps:
            self.train_policy_steps += new_steps
            owed = self.train_policy_steps * self.updates_per_policy_step
            while self.gradient_steps < int(owed):
                self.gradient_step()
        if finished or self.gradient_steps > updates_before:  # drawn at the next update
            ret = f"{np.mean(self.returns):.1f}" if self.returns else "-"
            bar.set_postfix(ret=ret, grad=self.gradient_steps, refresh=False)
        if self.core_watch and (change := self.core_watch.check()):
            self.threads = self.core_watch.threads
            self.say(change)
        done = self.env_steps >= cfg.steps
        if done or (finished and self.gradient_steps >= self.next_checkpoint):
            # Saving at an episode boundary lets a resumed run start exactly where this left.
            self.save_and_evaluate(final=done)
        elif finished and self.main and self.save_due():
            self.save("latest", between=True)
        before = self.env_steps - new_steps * self.action_repeat
        crossed = self.env_steps // cfg.log_every > before // cfg.log_every
        # A run's first row comes once its first updates are done, not a whole log_every
        # later (the 12m pixel walker: 40 minutes of updates on two CPU cores).
        first = updates_before < FIRST_ROW_UPDATES <= self.gradient_steps
        if done or crossed or first:
            self.log_row()

    def count_achievements(self, achieved: dict | None) -> None:
        """Crafter's achievements of one finished episode, as success (1) or not (0)."""
        if achieved is None:
            return
        self.achievement_episodes += 1
        for name, count in achieved.items():
            self.achievements[name] += count > 0
            self.interval[f"achievements/{name}"].append(float(count > 0))

    def crafter_score(self) -> float:
        """The Crafter score: exp(mean_i log(1 + s_i)) - 1 over the success rates s_i in
        percent of every achievement, counted over all training episodes so far."""
        rates = [100 * n / self.achievement_episodes for n in self.achievements.values()]
        return float(np.exp(np.mean(np.log1p(rates))) - 1)

    def gradient_step(self) -> None:
        """One update. Its metrics and finiteness checks stay on the device (agent.unread)
        until the next metrics row or save reads them (deferred.py: how far that check lags,
        and why that is safe); the one read here is the replay context's posterior states,
        after the whole update is queued."""
        batch = self.loader.next()
        try:
            result = self.agent.train_step(batch)
        finally:
            self.loader.wait()  # no sampling may run while the collector writes
        if self.context:  # the fresh posterior states, for the sequences that start there
            self.buffer.write_latents(batch["index"], *result.posterior_on_host())
        # Statistics that are not trained (the return normaliser's) follow rank 0's.
        distributed.broadcast_module(self.agent, buffers_only=True)
        self.agent.unread.add(self.gradient_steps, result)
        for name in result.names:  # a row's columns in the order of their first values
            self.interval.setdefault(name, [])
        self.gradient_steps += 1
        if self.gradient_steps == self.first_update + ETA_WARMUP_UPDATES:  # warm from here
            self.eta_mark = (self.wall_seconds(), self.env_steps, self.gradient_steps)

    def say(self, line: str) -> None:
        """One line for the person watching the run (beside the progress bar); rank 0 only."""
        if self.main and not self.quiet:
            tqdm.write(line)

    def log_row(self, extra: dict | None = None) -> None:
        """Write one metrics row: counters, means over the interval, and wall time."""
        # The interval's update metrics, in one transfer (a non-finite one raises here).
        for key, values in self.agent.unread.read().items():
            self.interval[key].extend(values)
        if not self.main:  # rank 0 alone writes metrics (of its own episodes)
            self.interval.clear()
            return
        row = {"env_steps": self.env_steps, "gradient_steps": self.gradient_steps}
        row["episode_return"] = np.mean(self.interval.pop("episode_return", [np.nan]))
        row["return_last10"] = np.mean(self.returns) if self.returns else np.nan
        row.update({key: float(np.mean(values)) for key, values in self.interval.items()})
        row.update(extra or {})
        if self.achievement_episodes:
            row["achievements/score"] = self.crafter_score()
        # Resident memory should grow with the replay data and nothing else (a leak shows here).
        row["memory/resident_mb"] = resident_mb()
        stored = self.buffer.nbytes * len(self.buffer) / self.buffer.capacity
        row["memory/replay_mb"] = stored / 2**20
        row["wall_seconds"] = self.wall_seconds()
        eta = self.eta(row)
        self.interval.clear()
        for logger in (self.logger, self.board):
            if logger:
                logger.log(row)
        if not self.quiet:
            loss = row.get("world_model/loss")  # none yet while prefilling
            tqdm.write(
                f"{self.run} | env {self.env_steps} | grad {self.gradient_steps} | "
                f"return {row['return_last10']:.1f} | "
                f"wm loss {'-' if loss is None else f'{loss:.2f}'} | "
                f"rss {row['memory/resident_mb']:.0f} MB | "
                f"{row['wall_seconds']:.0f}s | eta {eta}"
            )

    def wall_seconds(self) -> float:
        """Seconds the run has trained, over every sitting."""
        return self.wall_offset + time.time() - self.start_time

    def eta(self, row: dict) -> str:
        """Time to the end of the budget at the pace of the last interval that trained: its
        wall seconds per env step (updates, acting and logging together) times the env steps
        left. "-" until an interval with gradient steps has passed (prefill is faster than
        training and would promise too little). After a start the interval begins at the
        ETA_WARMUP_UPDATES-th update, so the compile warm-up does not inflate the first ETA."""
        mark = (row["wall_seconds"], self.env_steps, self.gradient_steps)
        last, self.eta_mark = self.eta_mark, mark
        if last is None or mark[2] == last[2] or mark[1] == last[1]:
            return "-"
        left = max(0, self.config.train.steps - mark[1])
        seconds = max(0.0, (mark[0] - last[0]) / (mark[1] - last[1]) * left)
        if seconds < 90:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"

    def save_and_evaluate(self, final: bool = False) -> None:
        """Checkpoint, then evaluate the policy's mode and write the videos.

        The file is named by the gradient steps rounded down to a multiple of
        checkpoint_every (the save waits for the episode's end), or exactly at the end.
        Only rank 0 saves and evaluates; the other ranks go on to the next gradient step and
        wait for it there.
        """
        if not self.main:
            return
        every = self.config.train.checkpoint_every
        steps = self.gradient_steps if final else self.gradient_steps // every * every
        if final and self.saved_at == self.gradient_steps:
            return  # the last checkpoint already holds this state
        self.next_checkpoint = (self.gradient_steps // every + 1) * every
        suffix = suffix_of(steps)
        self.save(suffix)
        episodes = self.config.train.eval_episodes
        rng = torch.get_rng_state()  # evaluation must not change the training's random stream
        scores = [self.evaluate(suffix, index) for index in range(episodes)]
        torch.set_rng_state(rng)
        if scores:  # reported with the next metrics row
            self.interval["eval_return"].append(float(np.mean(scores)))

    def evaluate(self, suffix: str, index: int) -> float:
        """One episode with the policy's mode; the first also writes the videos.

        Evaluation episodes are seeded by the gradient step and their index, so a resumed
        run evaluates on the same episodes as an uninterrupted one.
        """
        video = index == 0 and self.config.train.video
        seed = self.config.seed + 10_000 + self.gradient_steps * 100 + index
        policy = AgentPolicy(self.agent, explore=False)
        try:
            score, frames = run_episode(self.eval_env, policy, render=video, seed=seed)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"{error} (evaluating, at gradient step {self.gradient_steps})"
            ) from None
        if video:
            write_video(self.path("videos", f"{self.run}_{suffix}_eval_{score:.0f}.mp4"), frames)
            if self.board:
                self.board.video("video/eval", frames, self.env_steps)
            if "image" in self.eval_env.obs_space:
                self.write_dream(suffix)
        return score

    def write_dream(self, suffix: str, length: int = 50) -> None:
        """Real frames beside open-loop predictions from a context of 5 frames."""
        collector = Collector(
            self.eval_env,
            buffer=ReplayBuffer(length + 2, self.eval_env.obs_space, self.eval_env.action_size),
            seed=self.config.seed + 20_000 + self.gradient_steps,
        )
        collector.reset()
        policy = AgentPolicy(self.agent, explore=False)
        while len(collector.buffer) < length and not collector.step(policy):
            pass
        data = collector.buffer.data
        size = len(collector.buffer)
        obs = {"image": torch.as_tensor(data["image"][None, :size], device=self.device)}
        actions = torch.as_tensor(data["action"][None, :size], device=self.device)
        predicted = self.agent.world_model.dream(obs, actions, context=5)[0].cpu().numpy()
        frames = side_by_side(data["image"][:size], predicted)  # (N, H, 2W + 2, 3)
        write_video(self.path("videos", f"{self.run}_{suffix}_dream.mp4"), frames)
        if self.board:
            self.board.video("video/dream", frames, self.env_steps)

    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.agent.optimizers.items()},
            "buffer": numpy_to_torch(self.buffer.state_dict()),
            "counters": {
                "env_steps": self.env_steps,
                "policy_steps": self.policy_steps,
                "gradient_steps": self.gradient_steps,
                "train_policy_steps": self.train_policy_steps,
                "next_checkpoint": self.next_checkpoint,
                "wall_seconds": self.wall_seconds(),
                "returns": list(self.returns),
                "achievement_episodes": self.achievement_episodes,
                "achievements": dict(self.achievements),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "python": list(random.getstate()[1]),
                "random_policy": self.random_policy.rng.bit_generator.state,
            },
            # The metrics since the last row, so the next row's means cover the same updates
            # and episodes as in a run never stopped.
            "interval": self.interval_so_far(),
            # The episodes under way: a run stopped in the middle of one continues it.
            "collection": {
                "collector": numpy_to_torch(self.collector.state_dict()),
                "policy": dict(self.policy.state),  # the acting state: (N, ...) tensors
            },
            "config": self.config.to_dict(),
            "measured_choices": self.agent.measured_choices(),
        }

    def save_due(self) -> bool:
        """Whether train.save_minutes have passed since the last save of any kind."""
        minutes = self.config.train.save_minutes
        return minutes > 0 and time.time() - self.saved_time >= 60 * minutes

    def save(self, suffix: str, between: bool = False) -> Path:
        """Write checkpoints/<run>_<suffix>.pth; a numbered one becomes latest too.

        A checkpoint forgets the batch sampled ahead (on a GPU) and rewinds the sampler, so
        the run resumed from it and the run that saved it go on alike. between: a save of
        latest between checkpoints (every train.save_minutes of wall time). When it falls
        depends on the machine's speed, so it must not change the run making it: the batch
        sampled ahead stays, and the file holds the sampler as it was before that batch.
        """
        self.saved_time = time.time()
        path = self.path("checkpoints", f"{self.run}_{suffix}.pth")
        latest = self.path("checkpoints", f"{self.run}_latest.pth")
        if between:
            with self.loader.rewound():
                save_checkpoint(self.state_dict(), path)
        else:
            self.loader.drop()
            self.saved_at = self.gradient_steps
            save_checkpoint(self.state_dict(), path, latest=None if suffix == "latest" else latest)
        if not self.quiet:
            tqdm.write(f"saved {path}")
        return path

    def refuse_to_overwrite(self) -> None:
        """A new run must not write over another run's outputs. A run with metrics but no
        checkpoint (it stopped before its first) has nothing to resume from: its CSV and
        plot are moved aside (metrics/<run>.partial-N.csv, plots/<run>.partial-N.html) and
        it starts afresh."""
        taken = sorted((self.root / "checkpoints").glob(f"{self.run}_*.pth"))
        if taken:
            raise CheckpointError(
                f"run '{self.run}' already has outputs ({taken[0].relative_to(self.root)} ...): "
                "continue it with --resume latest, or start another with --run_name NAME"
            )
        csv = self.path("metrics", f"{self.run}.csv")
        if not self.main or not csv.exists():
            return
        number = 1
        while self.path("metrics", f"{self.run}.partial-{number}.csv").exists():
            number += 1
        moved = self.path("metrics", f"{self.run}.partial-{number}.csv")
        os.rename(csv, moved)  # renames a link itself, never its target
        page = self.path("plots", f"{self.run}.html")
        if page.exists():
            os.rename(page, self.path("plots", f"{self.run}.partial-{number}.html"))
        self.say(
            f"run '{self.run}' stopped before its first checkpoint: its metrics so far are "
            f"moved aside to {moved.relative_to(self.root)}; starting afresh"
        )

    def resume(self, suffix: str) -> None:
        """Restore everything from checkpoints/<run>_<suffix>.pth."""
        path = checkpoint_path(self.root, self.run, suffix)
        state = load_checkpoint(path)
        check_resumable(state, path)
        check_same_config(self.config, state["config"], path)
        done, budget = state["counters"]["env_steps"], self.config.train.steps
        if budget <= done:  # nothing to train; the run's config stays as it was
            raise CheckpointError(
                f"{path.name} has done {done} env steps already, and --max_steps (train.steps) "
                f"is {budget}: give a larger --max_steps to train on"
            )
        try:
            self.restore(state, path)
        except CheckpointError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(
                f"{path.name} cannot be resumed: {type(error).__name__} {str(error)[:160]}"
            ) from None

    def restore(self, state: dict, path: Path) -> None:
        """Load the state of checkpoint `path` (load_checkpoint, check_resumable) into this
        trainer."""
        try:
            self.agent.load_state_dict(state["agent"])
        except (RuntimeError, KeyError) as error:  # same config, other layers: an older version
            first = str(error).strip().splitlines()[0][:160]
            raise CheckpointError(
                f"{path.name} holds networks of another layout (made by an older version of "
                f"natural_dreamer?): {first}"
            ) from None
        for name, opt in self.agent.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        # The same precisions as the run so far where this is the machine that chose them.
        self.agent.keep_measured_choices(state.get("measured_choices"))
        self.buffer.load_state_dict(torch_to_numpy(state["buffer"]))
        counters = state["counters"]
        for key in ("env_steps", "policy_steps", "gradient_steps", "train_policy_steps"):
            setattr(self, key, counters[key])
        self.next_checkpoint = counters["next_checkpoint"]
        self.saved_at = self.gradient_steps
        if not self.rank:  # the other ranks start new episodes of their own (below)
            self.restore_collection(state["collection"])
            self.interval.update({key: list(values) for key, values in state["interval"].items()})
        self.returns.extend(counters["returns"])
        self.achievement_episodes = counters.get("achievement_episodes", 0)
        self.achievements.update(counters.get("achievements", {}))
        self.wall_offset = counters["wall_seconds"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.random_policy.rng.bit_generator.state = state["rng"]["random_policy"]
        if self.rank:
            # Only rank 0's replay and random streams were saved: the other ranks start from
            # a copy of its replay, then sample and explore with streams of their own.
            self.reseed(self.seed + self.gradient_steps)

    def interval_so_far(self) -> dict:
        """The metrics since the last row, the updates' included (read from the device)."""
        for key, values in self.agent.unread.read().items():
            self.interval[key].extend(values)
        return {key: [float(v) for v in values] for key, values in self.interval.items()}

    def restore_collection(self, saved: dict) -> None:
        """Put the environments and the acting state back in the middle of their episodes:
        each running episode is replayed from its seed with its saved actions
        (VectorCollector.load_state_dict), so the run goes on as if never stopped."""
        try:
            self.collector.load_state_dict(torch_to_numpy(saved["collector"]))
        except RuntimeError as error:  # an environment that is not deterministic
            self.say(f"{error}; the episodes under way start again")
            self.collector.obs = None
            return
        self.policy.state = {key: value.to(self.device) for key, value in saved["policy"].items()}

    def reseed(self, seed: int) -> None:
        """Seed torch, NumPy, Python, the replay sampler and the random policy."""
        seed_everything(seed)
        self.buffer.rng = np.random.default_rng(seed)
        self.random_policy.rng = np.random.default_rng(seed)
