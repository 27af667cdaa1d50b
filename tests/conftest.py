"""Shared test helpers: small configs and random batches shaped like replayed data."""

import os

import numpy as np
import pytest
import torch

from natural_dreamer import bench, fastpath, load_config

IMAGE = {"image": ((64, 64, 3), np.uint8)}
VECTOR = {"vector": ((5,), np.float32)}
MIXED = {**IMAGE, **VECTOR}


def pytest_configure(config):
    """Threads as a run chooses them: beside a busy core (another run, a CI neighbour) two
    threads would stall every parallel region of every test. The processes the tests start
    (main.py, notebook kernels) inherit the choice through OMP_NUM_THREADS."""
    threads, _ = fastpath.choose_threads(0)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_config(**overrides):
    """The smoke config, shrunk further, fp32 so gradients compare exactly."""
    base = {"model.preset": "1m", "precision": "fp32", "behavior.horizon": 4}
    return load_config("smoke", {**base, **overrides})


def random_batch(obs_space, action_size, discrete, B=3, T=6, seed=0):
    """A (B, T) batch with the layout ReplayBuffer.sample returns, with one episode start and
    one termination inside the sequences."""
    batch = bench.random_batch(obs_space, action_size, B, T, discrete, seed)
    batch["is_first"][0, T // 2] = True
    batch["is_terminal"][1, T // 2 - 1] = True
    return batch
