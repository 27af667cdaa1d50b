"""Train a DreamerV3 agent.

    python main.py CONFIG [--KEY VALUE ...] [--max_steps N] [--resume SUFFIX]
    torchrun --nproc_per_node K main.py CONFIG ...     (K processes train one agent)

CONFIG names a file in configs/ (without .yml). --KEY VALUE overrides any config key by its
dotted path (--seed 3, --world_model.batch_size 8); --envs N is short for --train.envs N.
--resume 50k continues the run from checkpoints/<CONFIG>_<run_name>_50k.pth (or "latest");
with --eval N it trains nothing: it plays N episodes of that checkpoint's policy mode, prints
their returns and writes videos of the best and the worst.
Outputs go to metrics/, plots/, checkpoints/ and videos/ (under --outdir, the repository by
default); under torchrun only rank 0 writes them.
"""

import os
import sys
from pathlib import Path

USAGE = (
    "usage: python main.py CONFIG [--KEY VALUE ...] [--max_steps N] [--envs N] "
    "[--resume SUFFIX [--eval N]] [--outdir DIR]"
)


def parse_args(argv: list) -> tuple:
    """Split argv into (config name, overrides [(key, value)], resume suffix, outdir, eval
    episodes or None)."""
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    if not argv or argv[0].startswith("-"):
        raise ValueError(f"no CONFIG given\n{USAGE}")
    name, rest = argv[0], argv[1:]
    overrides, resume, outdir, episodes = [], None, None, None
    if len(rest) % 2:
        raise ValueError(f"'{rest[-1]}' has no value; options come in pairs: --KEY VALUE")
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        if not flag.startswith("--"):
            raise ValueError(f"expected --KEY before '{flag}'")
        key = flag[2:]
        if key == "resume":
            resume = value
        elif key == "outdir":
            if not value.strip():
                raise ValueError("--outdir needs a folder, got ''")
            outdir = Path(value)
        elif key == "eval":
            episodes = parse_episodes(value)
        elif key == "max_steps":
            overrides.append(("train.steps", value))
        elif key == "envs":
            overrides.append(("train.envs", value))
        else:
            overrides.append((key, value))
    if episodes is not None and resume is None:
        raise ValueError("--eval N needs the checkpoint to play: add --resume SUFFIX (or latest)")
    return name, overrides, resume, outdir, episodes


def parse_episodes(text: str) -> int:
    """--eval's value: a whole number of episodes, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--eval takes a number of episodes >= 1, got '{text}'")
    return int(text)


def main(argv: list) -> int:
    from natural_dreamer import distributed
    from natural_dreamer.config import ROOT, ConfigError, load_config
    from natural_dreamer.utils import pick_device

    try:
        name, overrides, resume, outdir, episodes = parse_args(argv)
        config = load_config(name, overrides)
        # Under torchrun: join the group (nccl between GPUs, gloo on CPUs).
        distributed.init_from_environment(use_cuda=pick_device(config.device).type == "cuda")
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = outdir or ROOT
    if episodes is not None:
        return evaluate(config, resume, episodes, root)
    try:
        return train(config, resume, root)
    finally:
        distributed.shutdown()


def check_outdir(root: Path) -> None:
    """The output root must be a folder we can write (ValueError otherwise). Probed with a
    file of a new, unpredictable name, removed again."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".natural_dreamer_probe_", dir=root)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"cannot write to --outdir {root}: {error.strerror or error}") from None


def check_input(config, resume, root: Path) -> None:
    """Everything about the input that can be checked before a file is written (ValueError,
    ConfigError or CheckpointError, all one line): the task exists, its replay and batches
    fit in this machine's memory, the checkpoint to resume exists."""
    from natural_dreamer.checkpoint import CheckpointError, suffixes
    from natural_dreamer.config import check_memory, check_name
    from natural_dreamer.envs import make_env
    from natural_dreamer.evaluate import checkpoint_path

    env = make_env(config.env, seed=config.seed)  # an unknown task stops here
    try:
        check_memory(config, env.obs_space, env.action_size)
    finally:
        env.close()
    if resume:
        run = f"{config.config_name}_{check_name('run_name', config.run_name)}"
        try:
            checkpoint_path(root, run, resume)
        except CheckpointError as error:
            folder = root / "checkpoints"
            if not (folder.is_dir() and suffixes(folder, run)):  # nothing to go on from
                raise CheckpointError(
                    f"{error}: it stopped before its first checkpoint; start it afresh with "
                    "the same command without --resume (its metrics so far are kept aside)"
                ) from None
            raise


def train(config, resume, root: Path) -> int:
    """Build the run (or resume it) and train; returns the exit status."""
    from natural_dreamer import distributed
    from natural_dreamer.checkpoint import CheckpointError
    from natural_dreamer.config import ConfigError
    from natural_dreamer.loop import StopRequest, Trainer

    try:
        check_input(config, resume, root)  # nothing is written before this
        if config.train.envs > 1:  # worker processes take a while to start on few cores
            say(f"starting {config.train.envs} environments in worker processes ...")
        trainer = Trainer(config, root=root)  # allocates, and writes nothing
        check_outdir(root)
        trainer.claim()  # before reading or writing any of the run's files
        if resume:
            trainer.resume(resume)
        else:
            trainer.refuse_to_overwrite()
    except (ConfigError, CheckpointError, ValueError) as error:
        say(f"error: {error}")
        return 2
    except MemoryError:
        say(
            "error: not enough memory for this config: lower train.replay_capacity or "
            "world_model.batch_size"
        )
        return 2
    if trainer.main:
        agent = trainer.agent
        print(
            f"{trainer.run}: {config.env.suite} {config.env.task} ({config.env.obs}), "
            f"preset {config.model.preset}, device {trainer.device}, "
            f"threads {trainer.threads} ({trainer.threads_reason}), "
            f"precision {agent.precision} ({agent.precision_reason}), "
            f"compile {'on' if agent.compiled else 'off'} ({agent.compile_reason}), "
            f"{config.train.envs} env(s) x {trainer.world} process(es)",
            file=sys.stderr,
        )
    try:
        trainer.train()
    except StopRequest as stop:  # saved before a word is printed: the terminal may be gone
        say(f"{stop}: saved checkpoint 'latest'; continue with --resume latest")
        return 128 + stop.signum  # 130 for Ctrl-C, 143 for SIGTERM
    except FloatingPointError as error:
        say(f"error: {error}; the newest checkpoint is the last good state")
        return 1
    except OSError as error:  # a full disk, a folder made read-only or removed
        say(f"error: {describe_write_error(error)}")
        return 1
    # Under torchrun the other ranks wait here while rank 0 writes its last checkpoint and
    # evaluation: a rank that tore down the process group and exited before then was
    # sometimes aborted by gloo ("terminate called without an active exception").
    distributed.barrier()
    return 0


def evaluate(config, suffix: str, episodes: int, root: Path) -> int:
    """--eval: play a checkpoint's policy; nothing is trained. Returns the exit status."""
    from natural_dreamer.checkpoint import CheckpointError
    from natural_dreamer.config import ConfigError
    from natural_dreamer.evaluate import evaluate

    try:
        evaluate(config, suffix, episodes, root)
    except (ConfigError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the videos folder read-only, a full disk
        print(f"error: cannot write {error.filename}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


def say(line: str) -> None:
    """One line on stderr."""
    print(line, file=sys.stderr, flush=True)


class QuietPipe:
    """A text stream (stdout, stderr) that goes silent once its reader is gone.

    `python main.py ... | tee run.log` and Ctrl-C: the signal reaches tee too, so the pipe
    breaks just as the run saves and says so. A BrokenPipeError then must not end the run
    (or its save) in a traceback: the stream's descriptor is pointed at /dev/null, so this
    and every later write, and the interpreter's last flush, go nowhere without an error.
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.silence()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.silence()

    def silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def describe_write_error(error: OSError) -> str:
    """One line: which file could not be written, why, and how much room is left there."""
    import shutil

    where = Path(error.filename or ".")
    folder = next((p for p in [where, *where.parents] if p.is_dir()), Path("."))
    free = shutil.disk_usage(folder).free / 2**20
    return (
        f"cannot write {where}: {error.strerror or error} ({free:.1f} MB free there); "
        "the files written before are intact: free some space (or make the folder writable) "
        "and continue with --resume latest"
    )


if __name__ == "__main__":
    sys.stdout, sys.stderr = QuietPipe(sys.stdout), QuietPipe(sys.stderr)
    status = main(sys.argv[1:])
    sys.stdout.flush()  # a broken pipe found now is silenced here, not at the interpreter's exit
    sys.stderr.flush()
    sys.exit(status)
