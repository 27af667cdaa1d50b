"""Replay buffer: wrap-around, no spliced sequences, memory, and reward alignment."""

import numpy as np
import pytest

from natural_dreamer import ReplayBuffer, load_config
from natural_dreamer.collector import Collector, RandomPolicy
from natural_dreamer.envs import make_env


def counter_buffer(capacity, steps, seed=0):
    """A buffer whose vector observation is the global step index: easy to read back."""
    buffer = ReplayBuffer(capacity, {"vector": ((1,), np.float32)}, action_size=1, seed=seed)
    for i in range(steps):
        buffer.add(
            {"vector": [i], "reward": i, "is_first": i == 0, "is_terminal": False, "action": [0.0]}
        )
    return buffer


def test_wraps_around_at_capacity():
    buffer = counter_buffer(capacity=10, steps=23)
    assert len(buffer) == 10 and buffer.count == 23
    stored = sorted(buffer.data["vector"][:, 0].tolist())
    assert stored == list(range(13, 23))  # the 10 newest steps, oldest overwritten


def test_sequences_never_splice_newest_and_oldest():
    buffer = counter_buffer(capacity=10, steps=23)
    batch = buffer.sample(batch_size=500, length=4)
    steps = batch["vector"][..., 0]  # (B, T) global step numbers
    assert np.all(np.diff(steps, axis=1) == 1), "a sequence jumps across the ring's seam"
    assert steps.min() == 13 and steps.max() == 22  # every stored step can be sampled
    assert set(steps[:, 0].tolist()) == set(range(13, 20))  # uniform over valid starts


def test_sampling_before_the_buffer_is_full_stays_in_written_steps():
    buffer = counter_buffer(capacity=100, steps=12)
    steps = buffer.sample(batch_size=200, length=5)["vector"][..., 0]
    assert steps.max() <= 11 and np.all(np.diff(steps, axis=1) == 1)


def test_too_few_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one sequence"):
        counter_buffer(capacity=100, steps=3).sample(2, 5)


def test_nbytes_per_image_step_is_close_to_raw():
    capacity, action_size = 1000, 6
    buffer = ReplayBuffer(capacity, {"image": ((64, 64, 3), np.uint8)}, action_size)
    raw = 64 * 64 * 3 + 4 * action_size + 4 + 1 + 1  # image, action, reward, two flags
    assert buffer.nbytes / capacity <= 1.05 * raw
    assert buffer.nbytes / capacity >= raw


@pytest.mark.parametrize("task", ["counter", "counter_terminal"])
def test_reward_alignment_through_the_real_collector(task):
    """Each observation is paired with the reward that ARRIVED with it (pitfall 1)."""
    config = load_config("smoke", {"env.suite": "toy", "env.task": task, "env.time_limit": 12})
    env = make_env(config.env, seed=0)
    buffer = ReplayBuffer(1000, env.obs_space, env.action_size)
    collector = Collector(env, buffer)
    policy = RandomPolicy(env.action_size, env.discrete)
    for _ in range(100):
        collector.step(policy)
    batch = buffer.sample(batch_size=64, length=10)
    t = np.round(batch["vector"][..., 0] * 10)  # the toy env's step counter
    assert np.array_equal(batch["reward"], t)  # reward r_t arrived with x_t
    assert np.array_equal(batch["is_first"], t == 0)
    end = 7 if task == "counter_terminal" else 12
    assert np.array_equal(batch["is_terminal"], (t == end) & (task == "counter_terminal"))
    # the action stored at the last step of an episode is zero: nothing acted on it
    assert np.all(batch["action"][t == end] == 0)
    assert np.all(np.abs(batch["action"][t < end]) > 0)


def test_state_dict_round_trip_continues_the_same_samples():
    a = counter_buffer(capacity=10, steps=23, seed=5)
    b = counter_buffer(capacity=10, steps=0, seed=99)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.sample(8, 3)["vector"], b.sample(8, 3)["vector"])
