"""Parallel environments: gymnasium's vector API, one replay stream per environment, and a
train_ratio counted over all environments."""

import functools

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv
from tqdm import tqdm

from natural_dreamer import ReplayBuffer, load_config
from natural_dreamer.collector import RandomPolicy, VectorCollector
from natural_dreamer.envs import make_env
from natural_dreamer.vector import build_env, make_vector_env, vector_env


def toy_config(time_limit: int, task: str = "counter", obs: str = "proprio") -> dict:
    return {"suite": "toy", "task": task, "obs": obs, "time_limit": time_limit}


def test_two_workers_keep_their_episodes_apart_with_aligned_rewards():
    """Two counters with different episode lengths, each in its own process: every sampled
    sequence counts up 0, 1, 2, ... and restarts only at its own environment's limit."""
    limits = (5, 8)
    fns = [functools.partial(build_env, toy_config(limit), 0) for limit in limits]
    envs = vector_env(fns, workers=True)
    assert isinstance(envs, AsyncVectorEnv)
    spec = make_env(toy_config(5), seed=0)
    buffer = ReplayBuffer(400, spec.obs_space, spec.action_size, streams=2)
    collector = VectorCollector(envs, buffer, seed=0)
    policy = RandomPolicy(spec.action_size, spec.discrete)
    try:
        finished = [collector.step(policy) for _ in range(40)]
    finally:
        envs.close()
    lengths = sorted(episode["length"] for step in finished for episode in step)
    assert lengths == [5] * 8 + [8] * 5  # 40 steps: 8 episodes of 5 and 5 of 8
    assert collector.episodes == [8, 5]
    assert buffer.stream_sizes().tolist() == [48, 45]  # + one last step per episode

    batch = buffer.sample(batch_size=200, length=12)
    t = np.round(batch["vector"][..., 0] * 10)  # (B, T) the counter of each step
    assert np.array_equal(batch["reward"], t)  # reward r_t arrived with x_t, in both streams
    assert np.array_equal(batch["is_first"], t == 0)
    step_up = t[:, 1:] == t[:, :-1] + 1
    restart = (t[:, 1:] == 0) & np.isin(t[:, :-1], limits)
    assert np.all(step_up | restart)  # no step of one environment inside another's episode
    top = t.max(1)
    assert set(top.tolist()) == {5, 8}  # both streams are sampled
    for limit in limits:  # a sequence restarts at its own stream's limit only
        rows = top == limit
        assert np.all(restart[rows] <= (t[rows, :-1] == limit))
    at_limit = t == top[:, None]  # an episode's last step: nothing acted on it
    assert np.all(batch["action"][at_limit] == 0) and np.all(batch["action"][~at_limit] != 0)


def test_one_environment_runs_in_this_process_with_terminal_flags():
    envs = make_vector_env(toy_config(20, task="counter_terminal"), seed=0, count=1)
    assert isinstance(envs, SyncVectorEnv)
    spec = make_env(toy_config(20), seed=0)
    buffer = ReplayBuffer(100, spec.obs_space, spec.action_size)
    collector = VectorCollector(envs, buffer, seed=3)
    for _ in range(15):
        collector.step(RandomPolicy(1, False))
    envs.close()
    data = {key: value[: len(buffer)] for key, value in buffer.data.items()}
    t = np.round(data["vector"][:, 0] * 10)
    assert np.array_equal(data["is_terminal"], t == 7)  # counter_terminal ends at t == 7
    assert np.array_equal(data["is_first"], t == 0) and collector.episodes == [2]


def test_every_episode_of_every_environment_has_its_own_seed():
    """Episode k of environment i starts from seed + k * N + i."""
    fns = [functools.partial(build_env, toy_config(limit), 0) for limit in (2, 3)]
    envs = vector_env(fns, workers=False)
    seeds = []
    reset = envs.reset
    envs.reset = lambda seed, options: seeds.append(seed) or reset(seed=seed, options=options)
    spec = make_env(toy_config(2), seed=0)
    collector = VectorCollector(envs, ReplayBuffer(100, spec.obs_space, 1, streams=2), seed=10)
    for _ in range(6):
        collector.step(RandomPolicy(1, False))
    envs.close()
    # env 0 ends at steps 2, 4, 6 and env 1 at steps 3, 6; None leaves an env running
    assert seeds == [[10, 11], [12, None], [None, 13], [14, None], [16, 15]]


@pytest.mark.filterwarnings("ignore:.*infinity")  # vector observations are unbounded
def test_the_gymnasium_wrapper_follows_the_gymnasium_api():
    check_env(build_env(toy_config(10, obs="both"), 0), skip_render_check=True)


def test_stream_buffer_round_trip_and_one_stream_layout():
    buffer = ReplayBuffer(20, {"vector": ((1,), np.float32)}, 1, seed=1, streams=2)
    for i in range(14):
        step = {"vector": [i], "reward": 0.0, "is_first": False, "is_terminal": False}
        buffer.add({**step, "action": [0.0]}, stream=i % 2)
    copy = ReplayBuffer(20, {"vector": ((1,), np.float32)}, 1, seed=7, streams=2)
    copy.load_state_dict(buffer.state_dict())
    a, b = buffer.sample(16, 4), copy.sample(16, 4)
    assert np.array_equal(a["vector"], b["vector"])
    assert np.all(np.diff(a["vector"][..., 0], axis=1) == 2)  # each sequence in one stream
    with pytest.raises(ValueError, match="streams"):
        ReplayBuffer(20, {"vector": ((1,), np.float32)}, 1, streams=1).load_state_dict(
            buffer.state_dict()
        )


def make_trainer(tmp_path, envs: int):
    from natural_dreamer.loop import Trainer

    overrides = {
        "env.suite": "toy",
        "env.task": "counter",
        "env.time_limit": 9,
        "train.envs": envs,
        "train.prefill": 40,
        "train.train_ratio": 32,
        "world_model.batch_size": 2,
        "world_model.batch_length": 8,
    }
    trainer = Trainer(load_config("smoke", overrides), root=tmp_path, quiet=True)
    trainer.gradient_step = lambda: setattr(trainer, "gradient_steps", trainer.gradient_steps + 1)
    return trainer


def test_train_ratio_counts_the_policy_steps_of_all_environments(tmp_path):
    """Same number of updates for the same number of policy steps, whatever N."""
    counts = {}
    for n in (1, 2):
        trainer = make_trainer(tmp_path / str(n), n)
        try:
            while trainer.policy_steps < 100:
                trainer.step(tqdm(disable=True))
        finally:
            trainer.envs.close()
        assert trainer.policy_steps == 100 and trainer.env_steps == 100
        counts[n] = (trainer.gradient_steps, trainer.buffer.stream_sizes().min())
    # 60 policy steps after the 40 of prefill, at 32 / (2 * 8) = 2 updates per policy step.
    assert counts[1][0] == counts[2][0] == 120
    assert counts[2][1] >= 100 // 2  # every environment wrote its own stream


def test_envs_on_the_command_line_is_short_for_train_envs():
    import main

    _, overrides, *_ = main.parse_args(["smoke", "--envs", "4", "--logger", "tensorboard"])
    assert overrides == [("train.envs", "4"), ("logger", "tensorboard")]
    assert load_config("smoke", overrides).train.envs == 4
