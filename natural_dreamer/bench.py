"""Seconds per gradient step, split into world model, imagination and actor-critic.

    python -m natural_dreamer.bench [--presets 1m v1_s 12m] [--obs vector image]
                                    [--precision fp32 bf16] [--repeats 10]

Each row times full training steps on random data shaped like replay (batch 16 x 64,
horizon 15) after two warm-up steps, and reports the median of `repeats`. The split comes
from timing each phase on its own with the same inputs. Use this on an idle machine: two
torch processes sharing 2 cores slow each other down many times over.
"""

import argparse
import time

import numpy as np
import torch

from natural_dreamer.config import load_config
from natural_dreamer.dreamer import Dreamer

OBS = {"vector": {"vector": ((24,), np.float32)}, "image": {"image": ((64, 64, 3), np.uint8)}}


def random_batch(obs_space: dict, action_size: int, B: int, T: int, discrete=False, seed=0):
    """A (B, T) batch with ReplayBuffer.sample's layout and random contents; every sequence
    starts an episode and none terminates."""
    rng = np.random.default_rng(seed)
    batch = {}
    for key, (shape, dtype) in obs_space.items():
        if dtype == np.uint8:
            batch[key] = rng.integers(0, 256, (B, T, *shape), dtype=np.uint8)
        else:
            batch[key] = rng.normal(size=(B, T, *shape)).astype(dtype)
    if discrete:
        batch["action"] = np.eye(action_size, dtype=np.float32)[
            rng.integers(0, action_size, (B, T))
        ]
    else:
        batch["action"] = rng.uniform(-1, 1, (B, T, action_size)).astype(np.float32)
    batch["reward"] = rng.normal(size=(B, T)).astype(np.float32)
    batch["is_first"] = np.zeros((B, T), bool)
    batch["is_first"][:, 0] = True
    batch["is_terminal"] = np.zeros((B, T), bool)
    return batch


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_phases(preset: str, obs: str, precision: str, repeats: int, B=16, T=64, H=15) -> dict:
    """Median seconds of a full step and of its phases for one configuration."""
    overrides = {
        "model.preset": preset,
        "precision": precision,
        "world_model.batch_size": B,
        "world_model.batch_length": T,
        "behavior.horizon": H,
    }
    config = load_config("smoke", overrides)
    agent = Dreamer(OBS[obs], 6, False, config)
    batch = random_batch(OBS[obs], 6, B, T)
    for _ in range(2):
        agent.train_step(batch)
    step = median_seconds(lambda: agent.train_step(batch), repeats)
    tensors = agent.batch_to_torch(batch)

    def world_model():
        with agent.autocast():
            loss, _, posterior = agent.world_model.loss(tensors)
        loss.backward()
        return posterior

    posterior = world_model()
    start = {k: v.reshape(B * T, *v.shape[2:]) for k, v in posterior.items()}

    def imagine():
        with agent.autocast():
            agent.behavior.imagine(agent.world_model, start)

    def behavior():
        with agent.autocast():
            actor_loss, critic_loss, _ = agent.behavior.loss(agent.world_model, posterior, tensors)
        (actor_loss + critic_loss).backward()

    wm = median_seconds(world_model, max(3, repeats // 2))
    im = median_seconds(imagine, max(3, repeats // 2))
    beh = median_seconds(behavior, max(3, repeats // 2))
    agent.zero_grad(set_to_none=True)
    return {"step": step, "world_model": wm, "imagination": im, "actor_critic": beh - im}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["1m", "v1_s", "12m"])
    parser.add_argument("--obs", nargs="+", default=["vector", "image"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 16 x 64, horizon 15"
    )
    print("| preset | obs | precision | s/step | world model | imagination | actor-critic |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for obs in args.obs:
            for precision in args.precision:
                t = time_phases(preset, obs, precision, args.repeats)
                print(
                    f"| {preset} | {obs} | {precision} | {t['step']:.3f} | {t['world_model']:.3f} "
                    f"| {t['imagination']:.3f} | {t['actor_critic']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
