"""Device handling, checked on the CPU: device choice, where batches land, the autocast
precision, and replay batches sampled ahead (the GPU path) giving the same batches."""

import numpy as np
import pytest
import torch

from natural_dreamer import Dreamer, ReplayBuffer
from natural_dreamer.loader import BatchLoader, to_device
from natural_dreamer.utils import pick_device

from conftest import IMAGE, MIXED, random_batch, tiny_config

CUDA = torch.cuda.is_available()


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda:0" if CUDA else "cpu")
    assert pick_device("auto", local_rank=1) == torch.device("cuda:1" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")


def filled_buffer(steps: int = 60, seed: int = 0) -> ReplayBuffer:
    buffer = ReplayBuffer(100, IMAGE, action_size=2, seed=seed)
    rng = np.random.default_rng(0)
    for t in range(steps):
        buffer.add(
            {
                "image": np.full((64, 64, 3), t, np.uint8),
                "action": rng.uniform(-1, 1, 2),
                "reward": float(t),
                "is_first": t == 0,
                "is_terminal": False,
            }
        )
    return buffer


def test_batches_land_on_the_device_with_their_dtypes():
    batch = BatchLoader(filled_buffer(), 3, 8, torch.device("cpu")).next()
    assert {key: value.device.type for key, value in batch.items()} == dict.fromkeys(batch, "cpu")
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 8, 64, 64, 3)
    assert batch["is_first"].dtype == torch.bool and batch["reward"].dtype == torch.float32
    # the agent takes them as they are: no second copy
    agent = Dreamer(IMAGE, 2, False, tiny_config())
    assert agent.batch_to_torch(batch)["image"] is batch["image"]


def test_sampling_ahead_gives_the_batches_of_sampling_in_place():
    now = BatchLoader(filled_buffer(), 4, 8, "cpu")
    ahead = BatchLoader(filled_buffer(), 4, 8, "cpu", ahead=True)
    for _ in range(3):
        a, b = now.next(), ahead.next()
        ahead.wait()
        assert all(torch.equal(a[key], b[key]) for key in a)
    # A checkpoint drops the batch sampled ahead and rewinds the sampler: the next batch is
    # the one an uninterrupted or resumed run samples.
    ahead.drop()
    assert ahead.buffer.rng.bit_generator.state == now.buffer.rng.bit_generator.state
    a, b = now.next(), ahead.next()
    assert torch.equal(a["reward"], b["reward"])
    ahead.close()


def test_a_save_between_checkpoints_keeps_the_batch_sampled_ahead():
    """rewound(): the sampler reads as before the batch being prepared (what the file holds),
    and afterwards the run goes on with that very batch, as if nothing had been saved."""
    now = BatchLoader(filled_buffer(), 4, 8, "cpu")
    ahead = BatchLoader(filled_buffer(), 4, 8, "cpu", ahead=True)
    now.next(), ahead.next()
    ahead.wait()
    before = now.buffer.sampler_state()  # the sampler in place has not drawn the next one yet
    with ahead.rewound():
        assert ahead.buffer.sampler_state() == before
    assert ahead.buffer.sampler_state() != before  # the batch drawn ahead is still drawn
    for _ in range(2):
        a, b = now.next(), ahead.next()
        assert all(torch.equal(a[key], b[key]) for key in a)
    ahead.close()


def test_to_device_keeps_values():
    batch = random_batch(MIXED, 2, False)
    tensors = to_device(batch, torch.device("cpu"))
    assert all(np.array_equal(tensors[key].numpy(), batch[key]) for key in batch)


@pytest.mark.parametrize("precision, enabled", [("bf16", True), ("fp32", False)])
def test_autocast_follows_the_precision(precision, enabled):
    agent = Dreamer(IMAGE, 2, False, tiny_config(precision=precision))
    with agent.autocast():
        assert torch.is_autocast_enabled("cpu") == enabled
        if enabled:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_training_keeps_float32_where_the_reference_does():
    """Parameters, optimiser state, losses and the agent's actions stay float32 under bf16."""
    agent = Dreamer(MIXED, 2, False, tiny_config(precision="bf16"))
    metrics = agent.train_step(random_batch(MIXED, 2, False))
    assert all(np.isfinite(value) for value in metrics.values())
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    states = [s for opt in agent.optimizers.values() for s in opt.state.values()]
    assert states and all(t.dtype == torch.float32 for s in states for t in s.values())
    batch = to_device(random_batch(MIXED, 2, False), agent.device)
    with agent.autocast():
        _, wm_metrics, _ = agent.world_model.loss(batch)
    assert all(value.dtype == torch.float32 for value in wm_metrics.values())
    obs = {key: value[:, 0] for key, value in random_batch(MIXED, 2, False).items()}
    action, _ = agent.act(obs, agent.initial_state(3))
    assert action.dtype == np.float32
