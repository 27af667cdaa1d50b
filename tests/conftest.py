"""Shared test helpers: small configs and random batches shaped like replayed data."""

import numpy as np
import pytest
import torch

from natural_dreamer import load_config

IMAGE = {"image": ((64, 64, 3), np.uint8)}
VECTOR = {"vector": ((5,), np.float32)}
MIXED = {**IMAGE, **VECTOR}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_config(**overrides):
    """The smoke config, shrunk further, fp32 so gradients compare exactly."""
    base = {"model.preset": "1m", "precision": "fp32", "behavior.horizon": 4}
    return load_config("smoke", {**base, **overrides})


def random_batch(obs_space, action_size, discrete, B=3, T=6, seed=0):
    """A (B, T) batch with the layout ReplayBuffer.sample returns."""
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
    batch["is_first"][0, T // 2] = True
    batch["is_terminal"] = np.zeros((B, T), bool)
    batch["is_terminal"][1, T // 2 - 1] = True
    return batch
