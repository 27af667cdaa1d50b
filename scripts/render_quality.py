"""Do the cheap DMC frames (env.fast_render) change what the world model learns?

Two walker_walk environments with the same seed are stepped with the same random actions:
one renders full-quality frames (multisampling, shadows, reflections), the other the fast
frames. The physics, rewards and actions are identical; only the pixels differ. A world model
(1m preset, same initial weights, same batch indices) is trained on each stream, and the
losses are compared, on the training data and on held-out episodes.

    OMP_NUM_THREADS=1 python scripts/render_quality.py [--episodes 8] [--updates 300]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
from natural_dreamer import load_config  # noqa: E402
from natural_dreamer.buffer import ReplayBuffer  # noqa: E402
from natural_dreamer.dreamer import Dreamer  # noqa: E402
from natural_dreamer.envs import DMCEnv  # noqa: E402

VARIANTS = ("full", "fast")


def collect(episodes: int, seed: int) -> tuple[dict, dict]:
    """Step both renderers in lockstep; return {variant: buffer} for train and held-out."""
    envs = {
        name: DMCEnv("walker_walk", obs="pixels", fast_render=name == "fast", seed=seed)
        for name in VARIANTS
    }
    spaces, size = envs["full"].obs_space, envs["full"].action_size
    steps = episodes * 501
    train = {name: ReplayBuffer(steps, spaces, size, seed=1) for name in VARIANTS}
    held_out = {name: ReplayBuffer(2 * 501, spaces, size, seed=2) for name in VARIANTS}
    rng = np.random.default_rng(seed)
    for episode in range(episodes + 2):
        buffers = train if episode < episodes else held_out
        steps = {name: env.reset(seed=seed + episode) for name, env in envs.items()}
        while True:
            action = rng.uniform(-1, 1, size).astype(np.float32)
            last = steps["full"]["is_last"]
            stored = np.zeros_like(action) if last else action  # no action after the last step
            for name in VARIANTS:
                buffers[name].add({**steps[name], "action": stored})
            if last:
                break
            steps = {name: env.step(action) for name, env in envs.items()}
            assert steps["full"]["reward"] == steps["fast"]["reward"]
    for env in envs.values():
        env.close()
    return train, held_out


def train_world_model(buffer, held_out, updates: int, config) -> dict:
    torch.manual_seed(0)
    buffer.rng = np.random.default_rng(1)  # the same batch indices for both variants
    obs_space = {"image": (buffer.data["image"].shape[1:], np.uint8)}
    agent = Dreamer(obs_space, buffer.data["action"].shape[1], False, config)
    wm = agent.world_model
    history = []
    for _ in range(updates):
        batch = agent.batch_to_torch(buffer.sample(16, 64))
        loss, metrics, _ = wm.loss(batch)
        agent.update({"world_model": loss}, {"world_model": wm}, checks=[])
        history.append({key: float(value.detach()) for key, value in metrics.items()})
    tail = history[-max(1, updates // 5) :]
    result = {f"train {k}": np.mean([h[k] for h in tail]) for k in tail[0]}
    held_out.rng = np.random.default_rng(3)
    with torch.no_grad():
        _, metrics, _ = wm.loss(agent.batch_to_torch(held_out.sample(16, 64)))
    result.update({f"held-out {k}": float(v) for k, v in metrics.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args()
    start = time.time()
    train, held_out = collect(args.episodes, seed=0)
    full, fast = train["full"].data["image"], train["fast"].data["image"]
    difference = np.abs(full.astype(np.int16) - fast.astype(np.int16))
    print(f"collected {len(train['full'])} steps per variant in {time.time() - start:.0f} s")
    print(
        f"mean |full - fast| pixel difference: {difference.mean():.2f} of 255; "
        f"pixels differing by more than 16: {100 * (difference > 16).mean():.1f}%"
    )
    config = load_config(
        "smoke", {"model.preset": "1m", "optimizer.world_model_lr": 3e-4, "optimizer.warmup": 100}
    )
    results = {}
    for name in VARIANTS:
        start = time.time()
        results[name] = train_world_model(train[name], held_out[name], args.updates, config)
        print(f"trained on {name} frames: {args.updates} updates in {time.time() - start:.0f} s")
    print(
        f"\n| loss (mean of the last {max(1, args.updates // 5)} updates, or held out) "
        "| full-quality frames | fast frames |"
    )
    print("|---|---|---|")
    for key in results["full"]:
        if key.endswith(("_loss", "/kl")):
            print(f"| {key} | {results['full'][key]:.3f} | {results['fast'][key]:.3f} |")


if __name__ == "__main__":
    main()
