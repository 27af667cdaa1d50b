"""What is the actor doing? Read a checkpoint and print, for a run that does not learn:

  - the actions in replay, oldest to newest (discrete: the share of each action;
    continuous: the mean and spread of each dimension), so a policy that stopped
    exploring shows up as one action taking over;
  - the actor on replayed states: its entropy against the uniform policy's and against
    the floor the 1% unimix keeps (discrete), and its mean probabilities;
  - the advantages (R - v) / max(1, S) it learns from, in imagination from those states,
    overall and by the action taken: when they are all about the same, the actor has no
    signal to follow, only noise.

    python scripts/inspect_policy.py checkpoints/atari_pong_first100k_bf16_compiled_seed0_1.3k.pth

Runs on the CPU without torch.compile whatever the run used; takes about 6 s for the 12M
model on an idle machine, 15-20 s beside a training run (one batch of the run's size).
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from natural_dreamer.behavior import lambda_returns, task_reward  # noqa: E402
from natural_dreamer.buffer import ReplayBuffer  # noqa: E402
from natural_dreamer.checkpoint import load_checkpoint, torch_to_numpy  # noqa: E402
from natural_dreamer.config import saved_config  # noqa: E402
from natural_dreamer.dreamer import Dreamer  # noqa: E402
from natural_dreamer.envs import make_env  # noqa: E402
from natural_dreamer.rssm import RSSM  # noqa: E402

# A discrete actor is "collapsed" when its entropy is this close to the unimix floor.
COLLAPSE_MARGIN = 1.5


def load_run(path: Path):
    """The agent and replay buffer of a checkpoint, built eagerly on the CPU."""
    state = load_checkpoint(path)
    config = saved_config(state["config"])
    config.compile, config.device = False, "cpu"
    env = make_env(config.env, seed=config.seed)
    agent = Dreamer(env.obs_space, env.action_size, env.discrete, config, "cpu")
    agent.load_state_dict(state["agent"])
    buffer_state = torch_to_numpy(state["buffer"])
    buffer = ReplayBuffer(
        config.train.replay_capacity,
        env.obs_space,
        env.action_size,
        config.seed,
        streams=len(buffer_state["sizes"]),
    )
    buffer.load_state_dict(buffer_state)
    return agent, buffer, state["counters"]


def replayed_actions(buffer: ReplayBuffer, discrete: bool, rows: int) -> list[str]:
    """The first stream's actions in `rows` equal windows, oldest first."""
    actions = oldest_first(buffer, "action")
    size = len(actions)
    lines = []
    for window in np.array_split(np.arange(size), min(rows, size)):
        chunk = actions[window]
        if discrete:
            share = np.bincount(chunk.argmax(-1), minlength=chunk.shape[-1]) / len(chunk)
            text = " ".join(f"{s:5.2f}" for s in share)
        else:
            text = "  ".join(
                f"{m:+.2f}±{s:.2f}" for m, s in zip(chunk.mean(0), chunk.std(0), strict=True)
            )
        lines.append(f"  steps {window[0]:>7,}-{window[-1]:<7,} {text}")
    return lines


def oldest_first(buffer: ReplayBuffer, key: str) -> np.ndarray:
    """The first stream's stored `key`, oldest step first (its rows are a ring)."""
    size = int(buffer.stream_sizes()[0])
    rows = (buffer.positions[0] - size + np.arange(size)) % buffer.stream_capacity
    return buffer.data[key][rows]


@torch.no_grad()
def actor_report(agent: Dreamer, batch: dict) -> dict:
    """The actor on the batch's posterior states, and the advantages of imagined rollouts."""
    behavior, world_model = agent.behavior, agent.world_model
    batch = agent.batch_to_torch(batch)
    with agent.autocast():
        _, _, posterior = world_model.loss(batch)
        start = {key: value.flatten(0, 1) for key, value in posterior.items()}
        policy = behavior.actor(RSSM.full_state(start))
        feats, raw_actions = behavior.imagine(world_model, start)
        rewards, _ = task_reward(world_model, feats, raw_actions)
        cont = torch.sigmoid(world_model.continue_head(feats[:, 1:]).float())
        values = behavior.critic(feats).mean.float()
    returns = lambda_returns(rewards.float(), values, behavior.discount * cont, behavior.lambda_)
    scale = behavior.return_norm.scale()
    advantage = (returns - values[:, :-1]) / scale  # (N, H)
    report = {
        "entropy": policy.entropy().float().mean().item(),
        "scale": scale.item(),
        "range": behavior.return_norm.range.item(),
        "advantage": (advantage.mean().item(), advantage.std().item()),
        "imagined_reward": rewards.float().mean().item(),
    }
    if agent.discrete:
        report["probs"] = policy.logits.float().exp().mean(0).tolist()
        taken = raw_actions.argmax(-1)  # (N, H)
        report["by_action"] = [
            (advantage[taken == a].mean().item(), int((taken == a).sum()))
            for a in range(raw_actions.shape[-1])
        ]
    return report


def floor_entropy(count: int, mix: float) -> float:
    """The entropy of a one-action policy mixed with `mix` of the uniform one."""
    low = mix / count
    high = 1.0 - mix + low
    return -(high * math.log(high) + (count - 1) * low * math.log(low)) if mix > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a .pth file in checkpoints/")
    parser.add_argument("--rows", type=int, default=10, help="windows of the replayed actions")
    parser.add_argument("--seed", type=int, default=0, help="which replay batch to inspect")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    if args.rows < 1:
        parser.error("--rows must be at least 1")

    torch.manual_seed(args.seed)
    agent, buffer, counters = load_run(args.checkpoint)
    discrete = agent.discrete
    buffer.rng = np.random.default_rng(args.seed)
    print(
        f"{args.checkpoint.name}: {counters['env_steps']:,} env steps, "
        f"{counters['gradient_steps']:,} gradient steps, last returns {counters['returns']}"
    )
    print("replayed actions" + (" (share of each action)" if discrete else " (mean±std)"))
    print("\n".join(replayed_actions(buffer, discrete, args.rows)))

    wm = agent.config.world_model
    report = actor_report(agent, buffer.sample(wm.batch_size, wm.batch_length))
    states = wm.batch_size * wm.batch_length
    print(f"actor on {states:,} replayed states: entropy {report['entropy']:.3f}", end="")
    if discrete:
        count, mix = agent.action_size, agent.config.model.unimix
        floor = floor_entropy(count, mix)
        print(f" (uniform {math.log(count):.3f}, one action plus unimix {floor:.3f})")
        print("  mean probabilities " + " ".join(f"{p:5.3f}" for p in report["probs"]))
    else:
        print()
    mean, std = report["advantage"]
    print(
        f"imagined advantages (R - v) / max(1, S), S {report['range']:.3f}, "
        f"max(1, S) {report['scale']:.2f}: "
        f"mean {mean:+.4f}, std {std:.4f}; imagined reward {report['imagined_reward']:+.4f}"
    )
    if discrete:
        for action, (adv, n) in enumerate(report["by_action"]):
            print(f"  action {action}: mean advantage {adv:+.4f} over {n:,} imagined steps")
        top = int(np.argmax(report["probs"]))
        if report["entropy"] < COLLAPSE_MARGIN * floor:
            print(
                f"COLLAPSED: the actor puts {report['probs'][top]:.0%} on action {top}; only "
                "the unimix keeps the others alive. See README, Results (Pong)."
            )


if __name__ == "__main__":
    main()
