"""Watch a trained agent: load a checkpoint's networks and play episodes with the policy's mode.

    python main.py walker_walk_proprio --resume 20k --eval 10

Nothing is trained and none of the run's files is touched: the checkpoint is only read, no
lock is taken (a run may go on training beside it), and the two videos written (the best and
the worst episode) have names of their own that never replace an existing file.
"""

import sys
from pathlib import Path

import numpy as np

from natural_dreamer.checkpoint import CheckpointError, load_checkpoint, suffixes
from natural_dreamer.collector import AgentPolicy, run_episode
from natural_dreamer.config import CONFIG_DIR, AttrDict, check_name, flatten, read_yaml
from natural_dreamer.dreamer import Dreamer
from natural_dreamer.envs import make_env
from natural_dreamer.fastpath import choose_threads
from natural_dreamer.utils import pick_device, seed_everything
from natural_dreamer.video import write_video

# Evaluation episodes start from seeds of their own, apart from training's (seed + k) and
# the evaluations at checkpoints (seed + 10,000 + ...): episode i from seed + EVAL_SEED + i.
EVAL_SEED = 50_000

# Keys that may differ between a checkpoint's config and the config it is loaded under: the
# budget, how often it saves, where metrics go, and how the machine computes.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.save_minutes",
    "device",
    "logger",
    "compile",
    "precision",
    "threads",
}


def check_same_config(config: AttrDict, saved: dict, path: Path) -> None:
    """Refuse a checkpoint made with another config or model size, naming the keys that
    differ (at most six). A key missing from the checkpoint's config counts as its default."""
    defaults = flatten(read_yaml(CONFIG_DIR / "defaults.yml"))
    ours, theirs = flatten(config.to_dict()), {**defaults, **flatten(saved)}
    differ = sorted(
        key
        for key in ours.keys() | theirs.keys()
        if ours.get(key) != theirs.get(key) and key not in RESUMABLE_CHANGES
    )
    if differ:
        details = "; ".join(
            f"{key}: checkpoint {theirs.get(key)!r}, now {ours.get(key)!r}" for key in differ[:6]
        )
        raise CheckpointError(f"{path.name} was made with a different config ({details})")


def checkpoint_path(root: Path, run: str, suffix: str) -> Path:
    """root/checkpoints/<run>_<suffix>.pth, which must exist; else CheckpointError listing the
    run's checkpoints."""
    check_name("--resume suffix", suffix)
    path = Path(root) / "checkpoints" / f"{run}_{suffix}.pth"
    if not path.is_file():
        have = suffixes(path.parent, run) if path.parent.is_dir() else []
        listing = ", ".join(have) if have else "none yet"
        raise CheckpointError(f"no checkpoint {path.name}; checkpoints of {run}: {listing}")
    return path


def unused_path(path: Path) -> Path:
    """path itself if nothing is there, else the first of path_2, path_3... that is free."""
    candidate, number = path, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    return candidate


def load_agent(config: AttrDict, suffix: str, root: Path) -> tuple:
    """The agent of checkpoints/<config>_<run_name>_<suffix>.pth, ready to act, with its
    evaluation environment: returns (agent, env, gradient steps, env steps).

    Acting runs no autocast and no compiled training graph, so the agent is built in fp32
    without compiling (no measurement, no warm-up); the weights are the checkpoint's.
    Raises CheckpointError for a missing file, another config or a file that is no
    checkpoint of this code."""
    run = f"{config.config_name}_{config.run_name}"
    path = checkpoint_path(root, run, suffix)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("agent"), dict):
        raise CheckpointError(f"{path.name} is not a Natural Dreamer checkpoint (no agent in it)")
    check_same_config(config, state.get("config", {}), path)
    acting = AttrDict({**config.to_dict(), "compile": False, "precision": "fp32"})
    seed_everything(config.seed)
    env = make_env(config.env, seed=config.seed + EVAL_SEED)
    device = pick_device(config.device)
    agent = Dreamer(env.obs_space, env.action_size, env.discrete, acting, device)
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path.name} holds networks of another layout: {first}") from None
    agent.eval()
    counters = state.get("counters", {})
    return agent, env, counters.get("gradient_steps"), counters.get("env_steps")


def evaluate(config: AttrDict, suffix: str, episodes: int, root: Path) -> dict:
    """Play `episodes` episodes of the checkpoint's policy mode; print each return, their mean
    and standard deviation, and write videos of the best and the worst episode.

    Returns {"returns": [...], "mean", "std", "videos": [best path, worst path]}."""
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--eval takes a number of episodes >= 1, got {episodes!r}")
    threads, _ = choose_threads(config.threads)
    agent, env, gradient_steps, env_steps = load_agent(config, suffix, root)
    run = f"{config.config_name}_{config.run_name}"
    print(
        f"{run}_{suffix}: {gradient_steps} gradient steps, {env_steps} env steps; "
        f"{episodes} episode(s) of the policy's mode, {threads} thread(s)",
        file=sys.stderr,
        flush=True,
    )
    returns, best, worst = [], None, None
    for index in range(episodes):
        policy = AgentPolicy(agent, explore=False)
        score, frames = run_episode(env, policy, render=True, seed=config.seed + EVAL_SEED + index)
        returns.append(score)
        print(f"episode {index + 1}/{episodes}: return {score:.1f}", flush=True)
        if best is None or score > best[0]:
            best = (score, frames)
        if worst is None or score < worst[0]:
            worst = (score, frames)
    env.close()
    mean, std = float(np.mean(returns)), float(np.std(returns))
    print(f"mean {mean:.1f}, std {std:.1f} over {episodes} episode(s)", flush=True)
    videos = []
    if config.train.video:
        for label, (score, frames) in (("best", best), ("worst", worst)):
            name = f"{run}_{suffix}_evaluate{episodes}_{label}_{score:.0f}.mp4"
            path = unused_path(Path(root) / "videos" / name)
            videos.append(Path(write_video(path, frames)))
            print(f"wrote {path}", flush=True)
    return {"returns": returns, "mean": mean, "std": std, "videos": videos}
