"""Why does a DMC walker stand still? Read a checkpoint (and its run's CSV) and print evidence:

  1. the reward head on replayed states, binned by the true reward per policy step (action
     repeat 2: upright at zero speed earns 2 x 1/6 = 0.33, walking at speed earns up to 2):
     does the model see that moving pays?
  2. imagined returns from those states under the actor's mean, its samples, a noisier
     policy (twice the std) and uniform random actions: does the model, as the actor sees
     it, promise more for trying something else?
  3. real episodes under the same policies, with the reward head's prediction beside the
     true reward along them;
  4. from the CSV: when the actor's entropy fell, and whether the world-model losses still
     fall.

    python scripts/diagnose_walker.py checkpoints/walker_walk_proprio_RUN_latest.pth

Runs on the CPU without torch.compile. Takes about a minute for the 1m model beside a
training run (one thread).
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # beside inspect_policy.py
from inspect_policy import load_run  # noqa: E402

from natural_dreamer.behavior import lambda_returns  # noqa: E402
from natural_dreamer.envs import make_env  # noqa: E402

# True reward per policy step (2 env steps): fallen, standing, stepping, walking.
BINS = ((0.0, 0.1, "fallen (< 0.1)"), (0.1, 0.45, "standing (0.1-0.45)"),
        (0.45, 1.0, "stepping (0.45-1)"), (1.0, 9.0, "walking (>= 1)"))  # fmt: skip
BURN_IN = 8  # steps at each sequence's start left out: the state there starts blank


@torch.no_grad()
def replayed_states(agent, buffer, batches: int, B: int, T: int):
    """Posterior states and true rewards of `batches` replayed (B, T) sequences, after a
    burn-in. Returns (states {"deter": (N, D), "stoch": (N, S, C)}, rewards (N,))."""
    wm = agent.world_model
    deters, stochs, rewards = [], [], []
    for _ in range(batches):
        batch = agent.batch_to_torch(buffer.sample(B, T))
        embed = wm.encoder({key: batch[key] for key in wm.obs_keys})  # (B, T, E)
        states, _, _ = wm.rssm.observe(embed, batch["action"], batch["is_first"])
        deters.append(states["deter"][:, BURN_IN:].reshape(-1, states["deter"].shape[-1]))
        stoch = states["stoch"][:, BURN_IN:]
        stochs.append(stoch.reshape(-1, *stoch.shape[2:]))
        rewards.append(batch["reward"][:, BURN_IN:].reshape(-1).float())
    return {"deter": torch.cat(deters), "stoch": torch.cat(stochs)}, torch.cat(rewards)


def binned(true: np.ndarray, predicted: np.ndarray) -> list:
    """Rows (bin, share of steps, mean true, mean predicted, mean |error|) per reward bin."""
    rows = []
    for low, high, name in BINS:
        inside = (true >= low) & (true < high)
        if not inside.any():
            rows.append((name, 0.0, float("nan"), float("nan"), float("nan")))
            continue
        t, p = true[inside], predicted[inside]
        rows.append((name, inside.mean(), t.mean(), p.mean(), np.abs(p - t).mean()))
    return rows


def print_bins(title: str, true: np.ndarray, predicted: np.ndarray) -> None:
    print(f"\n{title} ({len(true):,} states)")
    print("| true reward per policy step | share | mean true | mean predicted | mean abs error |")
    print("|---|---|---|---|---|")
    for name, share, t, p, e in binned(true, predicted):
        print(f"| {name} | {share:.1%} | {t:.3f} | {p:.3f} | {e:.3f} |")
    print(f"correlation of predicted and true: {np.corrcoef(true, predicted)[0, 1]:.3f}")


def policies(agent):
    """name -> function(feat (N, F), generator) -> env action (N, A) in [-1, 1]."""
    actor = agent.behavior.actor

    def mean(feat, gen):
        return actor(feat).mode().clamp(-1, 1)

    def sample(feat, gen, widen=1.0):
        dist = actor(feat).dist
        noise = torch.randn(dist.loc.shape, generator=gen)
        return (dist.loc + widen * dist.scale * noise).clamp(-1, 1)

    def noisier(feat, gen):
        return sample(feat, gen, widen=2.0)

    def uniform(feat, gen):
        shape = (feat.shape[0], agent.action_size)
        return torch.rand(shape, generator=gen) * 2 - 1

    return {"actor mean": mean, "actor samples": sample, "2x std": noisier, "uniform": uniform}


@torch.no_grad()
def imagined_returns(agent, start: dict, policy, seed: int) -> tuple:
    """Imagine H steps from every start state under `policy`. Returns (mean reward per
    imagined step, mean lambda-return R_0 with the critic's bootstrap)."""
    wm, behavior = agent.world_model, agent.behavior
    gen = torch.Generator().manual_seed(seed)
    state, feats = dict(start), [wm.rssm.full_state(start)]
    for _ in range(behavior.horizon):
        action = policy(feats[-1], gen)
        state = wm.rssm.imagine_step(state, action)
        feats.append(wm.rssm.full_state(state))
    feats = torch.stack(feats, 1)  # (N, H + 1, F)
    rewards = wm.reward_head(feats[:, 1:]).mean  # (N, H)
    cont = torch.sigmoid(wm.continue_head(feats[:, 1:]).float())
    values = behavior.critic(feats).mean
    returns = lambda_returns(rewards, values, behavior.discount * cont, behavior.lambda_)
    return rewards.mean().item(), returns[:, 0].mean().item()


@torch.no_grad()
def real_episode(agent, config, policy, seed: int) -> tuple:
    """One episode in the real task. Returns (return, true rewards (T,), predicted (T,))."""
    env = make_env(config.env, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    wm, obs = agent.world_model, env.reset(seed=seed)
    state = agent.initial_state(1)
    true, predicted = [], []
    while True:
        obs_t = {key: torch.as_tensor(obs[key])[None] for key in wm.obs_keys}
        embed = wm.encoder(obs_t)
        first = torch.tensor([bool(obs["is_first"])])
        rssm_state = {"deter": state["deter"], "stoch": state["stoch"]}
        rssm_state, _ = wm.rssm.observe_step(rssm_state, state["action"], embed, first)
        feat = wm.rssm.full_state(rssm_state)
        if not obs["is_first"]:
            true.append(float(obs["reward"]))
            predicted.append(wm.reward_head(feat).mean.item())
        if obs["is_last"]:
            break
        action = policy(feat, gen)
        state = {**rssm_state, "action": action}
        obs = env.step(action[0].numpy())
    env.close()
    return sum(true), np.array(true), np.array(predicted)


def csv_history(path: Path, every: int = 10000) -> None:
    """Entropy and world-model losses from the run's CSV, one row per `every` env steps."""
    with open(path) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("actor/entropy")]
    keys = ["return_last10", "actor/entropy", "world_model/reward_loss",
            "world_model/vector_loss", "world_model/kl", "world_model/loss",
            "critic/imagined_return"]  # fmt: skip
    print(f"\nFrom {path.name} (training rows, one per {every:,} env steps)")
    print("| env steps | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    last = -every
    for row in rows:
        steps = int(float(row["env_steps"]))
        if steps - last >= every or row is rows[-1]:
            cells = [f"{float(row[key]):.3f}" if row.get(key) else "" for key in keys]
            print(f"| {steps:,} | " + " | ".join(cells) + " |")
            last = steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batches", type=int, default=8, help="replayed batches of 16 x 64")
    parser.add_argument("--episodes", type=int, default=1, help="real episodes per policy")
    parser.add_argument("--csv", type=Path, help="the run's metrics CSV (found when omitted)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)  # every number here is read, nothing trained
    agent, buffer, counters = load_run(args.checkpoint)
    agent.eval()
    config = agent.config
    print(f"{args.checkpoint.name}: {counters}")
    print(f"replay holds {len(buffer):,} policy steps (the first {config.train.prefill:,} env "
          "steps from uniform random actions)")  # fmt: skip

    start, rewards = replayed_states(agent, buffer, args.batches, 16, 64)
    predicted = agent.world_model.reward_head(agent.world_model.rssm.full_state(start)).mean
    print_bins("1. Reward head on replayed states", rewards.numpy(), predicted.numpy())

    print(f"\n2. Imagined {agent.behavior.horizon} steps from the same states")
    print("| policy | mean imagined reward per step | mean lambda-return R_0 |")
    print("|---|---|---|")
    for name, policy in policies(agent).items():
        reward, ret = imagined_returns(agent, start, policy, seed=1)
        print(f"| {name} | {reward:.3f} | {ret:.2f} |")

    print(f"\n3. Real episodes (seed 100 + i), {args.episodes} per policy")
    print("| policy | return | share of steps walking (>= 1) | mean predicted | mean true |")
    print("|---|---|---|---|---|")
    all_true, all_predicted = [], []
    for name, policy in policies(agent).items():
        for i in range(args.episodes):
            ret, true, pred = real_episode(agent, config, policy, seed=100 + i)
            all_true.append(true)
            all_predicted.append(pred)
            print(f"| {name} | {ret:.1f} | {(true >= 1.0).mean():.1%} | {pred.mean():.3f} "
                  f"| {true.mean():.3f} |")  # fmt: skip
    print_bins("Reward head along those episodes", np.concatenate(all_true),
               np.concatenate(all_predicted))  # fmt: skip

    run = args.checkpoint.name.rsplit("_", 1)[0]
    path = args.csv or args.checkpoint.parent.parent / "metrics" / f"{run}.csv"
    if path.exists():
        csv_history(path)
    else:
        print(f"\n(no CSV at {path}: pass --csv)")


if __name__ == "__main__":
    main()
