"""Tests of the Atari, Crafter and CarRacing suites: the same step-dict contract as the rest.

Where a suite wraps a simulator, the wrapper is checked against that simulator stepped by
hand in lockstep (same seed, same actions): the frames, the rewards and when they arrive.
"""

import ale_py
import crafter
import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from natural_dreamer.buffer import ReplayBuffer
from natural_dreamer.collector import Collector, RandomPolicy
from natural_dreamer.config import load_config
from natural_dreamer.envs import AtariEnv, CrafterEnv, make_env
from natural_dreamer.vector import GymnasiumEnv

STEP_FLAGS = {"reward", "is_first", "is_last", "is_terminal"}


def check_step_dict(step: dict, env, first: bool) -> None:
    """Assert the contract's keys, shapes and dtypes; "achievements" only on a last step."""
    extra = {"achievements"} if step["is_last"] and isinstance(env, CrafterEnv) else set()
    assert set(step) == set(env.obs_space) | STEP_FLAGS | extra
    for name, (shape, dtype) in env.obs_space.items():
        assert step[name].shape == shape and step[name].dtype == dtype, name
    assert isinstance(step["reward"], np.float32)
    assert step["is_first"] is first
    assert isinstance(step["is_last"], bool) and isinstance(step["is_terminal"], bool)


def one_hot(index: int, size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[index]


def shrink(frame: np.ndarray, size: int = 64) -> np.ndarray:
    """What the suites do to a frame: PIL bilinear resize to size x size."""
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))


# --- Atari ----------------------------------------------------------------------------------


def atari(game: str, **overrides) -> dict:
    """configs/atari_pong.yml's env section for `game`; keyword arguments replace entries."""
    return {**load_config("atari_pong").env, "task": game, **overrides}


def test_atari_layout_minimal_action_set_and_one_hot():
    env = make_env(atari("pong"), seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    assert env.action_size == 6 and env.discrete and env.action_repeat == 4
    assert env.ale_env.get_action_meanings() == [
        "NOOP",
        "FIRE",
        "RIGHT",
        "LEFT",
        "RIGHTFIRE",
        "LEFTFIRE",
    ]
    # Atari100k as the official code runs it: no sticky actions unless env.sticky asks
    assert env.ale_env.ale.getFloat("repeat_action_probability") == 0.0
    first = env.reset()
    check_step_dict(first, env, first=True)
    assert first["image"].std() > 10  # a real picture
    check_step_dict(env.step(one_hot(2, 6)), env, first=False)
    check_step_dict(env.step(np.array([0.1, 0.2, 0.1, 0.5, 0.0, 0.1])), env, first=False)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.step(np.ones(18))
    assert env.render().shape == (64, 64, 3)
    env.close()
    assert make_env(atari("breakout"), seed=0).action_size == 4
    assert AtariEnv("breakout", full_action_space=True).action_size == 18


def test_atari_matches_the_emulator_frame_by_frame():
    # Reward alignment, max-pooling and the one-hot -> action index mapping at once: each
    # step dict must hold the max of the last two of its 4 frames and those 4 frames' reward.
    env = AtariEnv("pong", seed=3, sticky=0.0, noops=0)
    emulator = ale_py.AtariEnv(game="pong", frameskip=1, repeat_action_probability=0.0)
    first = env.reset()
    frame, _ = emulator.reset(seed=3)
    np.testing.assert_array_equal(first["image"], shrink(frame))
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(100):
        action = int(rng.integers(6))
        step = env.step(one_hot(action, 6))
        frames, reward = [frame], 0.0
        for _ in range(4):
            frame, frame_reward, *_ = emulator.step(action)
            frames.append(frame)
            reward += frame_reward
        np.testing.assert_array_equal(step["image"], shrink(np.maximum(frames[-2], frames[-1])))
        assert step["reward"] == reward
        rewards.append(reward)
    assert any(rewards)  # the opponent scored: a reward really was checked
    env.close()


def test_atari_sticky_actions_ignore_the_agent_with_probability_one():
    def frames(sticky: float, action: int) -> list:
        env = AtariEnv("pong", seed=0, sticky=sticky, noops=0)
        env.reset()
        images = [env.step(one_hot(action, 6))["image"] for _ in range(25)]
        env.close()
        return images

    noop = frames(0.0, action=0)
    # With probability 1 the emulator keeps repeating the NOOP it started with.
    assert all(np.array_equal(a, b) for a, b in zip(frames(1.0, action=2), noop, strict=True))
    # With probability 0, RIGHT moves the paddle.
    assert not all(np.array_equal(a, b) for a, b in zip(frames(0.0, action=2), noop, strict=True))


def test_atari_life_loss_is_no_end_but_game_over_terminates():
    env = make_env(atari("breakout"), seed=0)
    env.reset()
    steps, lives = [], []
    while not steps or not steps[-1]["is_last"]:
        steps.append(env.step(one_hot(1, 4)))  # FIRE: launch the ball, never move
        lives.append(env.ale_env.ale.lives())
        assert len(steps) < 2000
    assert lives[0] == 5 and lives[-1] == 0
    assert len(set(lives)) == 6  # every life was lost on a step that did not end the episode
    assert not any(s["is_last"] or s["is_terminal"] for s in steps[:-1])
    assert steps[-1]["is_terminal"]
    env.close()


def test_atari_time_limit_counts_frames_and_truncates():
    env = make_env(atari("pong", time_limit=40), seed=0)
    env.reset()
    steps = [env.step(one_hot(0, 6)) for _ in range(10)]  # 10 policy steps x 4 frames
    assert [s["is_last"] for s in steps] == [False] * 9 + [True]
    assert not any(s["is_terminal"] for s in steps)
    with pytest.raises(RuntimeError, match="after is_last"):
        env.step(one_hot(0, 6))
    env.close()


def test_atari_same_seed_same_episode_other_seed_other_episode():
    def episode(seed: int) -> np.ndarray:
        env = AtariEnv("pong", seed=0)  # sticky 0.25 and noops: both drawn from the seed
        rng = np.random.default_rng(1)
        images = [env.reset(seed)["image"]]
        images += [env.step(one_hot(rng.integers(6), 6))["image"] for _ in range(60)]
        env.close()
        return np.stack(images)

    a, b, c = episode(5), episode(5), episode(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"suite": "atari", "task": "pongg"}, "Unknown Atari game 'pongg'.*pong"),
        ({"suite": "atari", "task": "pong", "obs": "proprio"}, "obs 'pixels' only"),
        ({"suite": "crafter", "task": "rewards"}, "Unknown Crafter task.*reward, noreward"),
        ({"suite": "crafter", "obs": "both"}, "obs 'pixels' only"),
        ({"suite": "gym", "task": "CarRacing-v3", "obs": "proprio"}, "use obs 'pixels'"),
    ],
)
def test_bad_config_raises_helpful_error(config, message):
    with pytest.raises(ValueError, match=message):
        make_env(config, seed=0)


# --- Crafter --------------------------------------------------------------------------------


def crafter_config(**overrides) -> dict:
    """configs/crafter.yml's env section; keyword arguments replace its entries."""
    return {**load_config("crafter").env, **overrides}


def test_crafter_layout_and_one_hot_actions():
    env = make_env(crafter_config(), seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    assert env.action_size == 17 and env.discrete and env.action_repeat == 1
    first = env.reset()
    check_step_dict(first, env, first=True)
    assert first["image"].std() > 10
    check_step_dict(env.step(one_hot(5, 17)), env, first=False)
    with pytest.raises(ValueError, match=r"shape \(17,\)"):
        env.step(np.ones(6))
    env.close()


def test_crafter_step_dicts_hold_what_the_game_returned():
    # Crafter is not replayable step for step (which creature despawns depends on the
    # iteration order of a set of objects), so the game's own step is recorded instead.
    env = CrafterEnv(seed=0)
    np.testing.assert_array_equal(
        env.reset(seed=4)["image"], crafter.Env(size=(64, 64), seed=4).reset()
    )
    game_step, returned = env.crafter_env.step, []

    def recording_step(action):
        result = game_step(action)
        returned.append((action, *result))
        return result

    env.crafter_env.step = recording_step
    rng = np.random.default_rng(0)
    rewards = []
    for t in range(120):
        action = int(rng.integers(17))
        step = env.step(one_hot(action, 17))
        game_action, image, reward, _, _ = returned[t]
        assert game_action == action
        np.testing.assert_array_equal(step["image"], image)
        assert step["reward"] == np.float32(reward)
        rewards.append(reward)
        if step["is_last"]:
            break
    assert any(rewards)  # an achievement or a health change was rewarded


def test_crafter_time_limit_truncates_and_reports_achievements():
    env = make_env(crafter_config(time_limit=5), seed=0)
    env.reset()
    steps = [env.step(one_hot(6, 17)) for _ in range(5)]  # sleep: unlocks nothing yet
    for step in steps:
        check_step_dict(step, env, first=False)
    assert [s["is_last"] for s in steps] == [False] * 4 + [True]
    assert not steps[-1]["is_terminal"]
    achievements = steps[-1]["achievements"]
    assert sorted(achievements) == sorted(crafter.constants.achievements)
    assert len(achievements) == 22 and all(isinstance(n, int) for n in achievements.values())


def test_crafter_death_terminates_with_the_episodes_achievements():
    env = CrafterEnv(seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    steps = []
    while not steps or not steps[-1]["is_last"]:
        steps.append(env.step(one_hot(rng.integers(17), 17)))
        assert len(steps) < 10_000
    assert steps[-1]["is_terminal"]
    # The reward is +1 per achievement unlocked and 0.1 per health point gained or lost; the
    # player starts with 9 and dies at 0, so the return is (unlocked achievements - 0.9).
    unlocked = sum(count > 0 for count in steps[-1]["achievements"].values())
    assert unlocked >= 1
    assert sum(float(s["reward"]) for s in steps) == pytest.approx(unlocked - 0.9, abs=1e-4)


def test_crafter_noreward_pays_nothing():
    env = make_env(crafter_config(task="noreward", time_limit=150), seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    steps = [env.step(one_hot(rng.integers(17), 17))]
    while not steps[-1]["is_last"]:
        steps.append(env.step(one_hot(rng.integers(17), 17)))
    assert not any(s["reward"] for s in steps)
    assert any(steps[-1]["achievements"].values())  # though something was unlocked


def test_crafter_achievements_pass_by_the_buffer_and_the_vector_api():
    env = make_env(crafter_config(time_limit=20), seed=0)
    buffer = ReplayBuffer(100, env.obs_space, env.action_size)
    collector = Collector(env, buffer, seed=0)
    policy = RandomPolicy(env.action_size, env.discrete)
    while not collector.step(policy):
        pass
    assert len(buffer) == 21 and "achievements" not in buffer.data  # 20 steps + the reset
    wrapped = GymnasiumEnv(env)  # what the training environments run behind
    obs, _ = wrapped.reset(seed=1)
    assert set(obs) == {"image"}


def test_crafter_seeds_pick_the_world():
    seeded = CrafterEnv(seed=0).reset(seed=3)["image"]
    env = CrafterEnv(seed=3)  # seedless resets: the first uses the env's seed, then new worlds
    first, second = env.reset()["image"], env.reset()["image"]
    np.testing.assert_array_equal(first, seeded)
    assert not np.array_equal(first, second)
    assert not np.array_equal(seeded, CrafterEnv(seed=0).reset(seed=4)["image"])


# --- CarRacing ------------------------------------------------------------------------------


def car_racing(**overrides) -> dict:
    config = {"suite": "gym", "task": "CarRacing-v3", "obs": "pixels", "action_repeat": 2}
    return {**config, **overrides}


def test_car_racing_sees_its_observation_resized_and_rewards_line_up():
    env = make_env(car_racing(), seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    assert env.action_size == 3 and not env.discrete
    raw = gym.make("CarRacing-v3")
    frame, _ = raw.reset(seed=2)
    first = env.reset(seed=2)
    check_step_dict(first, env, first=True)
    np.testing.assert_array_equal(first["image"], shrink(frame))  # the 96x96 state, not a render
    for action in ([0.0, 1.0, -1.0], [0.5, 0.0, -1.0], [-1.0, 1.0, -1.0]):
        step = env.step(np.array(action))
        check_step_dict(step, env, first=False)
        env_action = np.array([action[0], (action[1] + 1) / 2, (action[2] + 1) / 2], np.float32)
        reward = 0.0
        for _ in range(2):
            frame, frame_reward, *_ = raw.step(env_action)
            reward += frame_reward
        np.testing.assert_array_equal(step["image"], shrink(frame))
        assert step["reward"] == np.float32(reward)
    np.testing.assert_array_equal(env.render(), step["image"])
    raw.close()
    env.close()


def test_car_racing_actions_map_onto_steering_gas_and_brake():
    env = make_env(car_racing(action_repeat=1), seed=0)
    env.reset()
    car = env.gym_env.unwrapped.car
    for action, (steer, brake) in [
        ([1.0, -1.0, 1.0], (1.0, 1.0)),
        ([-1.0, 1.0, -1.0], (-1.0, 0.0)),
        ([0.0, 0.0, 0.0], (0.0, 0.5)),
        ([5.0, 0.0, -7.0], (1.0, 0.0)),  # clipped to [-1, 1] first
    ]:
        env.step(np.array(action))
        assert -car.wheels[0].steer == pytest.approx(steer)  # CarRacing steers by -action[0]
        assert car.wheels[0].brake == pytest.approx(brake)
    gas_before = car.wheels[2].gas
    env.step(np.array([0.0, 1.0, -1.0]))  # full gas: the rear wheels speed up
    assert car.wheels[2].gas > gas_before
    env.close()


def test_car_racing_time_limit_truncates_and_seeds_pick_the_track():
    env = make_env(car_racing(time_limit=10), seed=0)
    env.reset()
    steps = [env.step(np.zeros(3)) for _ in range(5)]
    assert [s["is_last"] for s in steps] == [False] * 4 + [True]
    assert not steps[-1]["is_terminal"]
    env.close()

    def track(seed: int) -> np.ndarray:
        env = make_env(car_racing(), seed=seed)
        env.reset()
        image = env.step(np.array([0.0, 1.0, -1.0]))["image"]
        env.close()
        return image

    np.testing.assert_array_equal(track(1), track(1))
    assert not np.array_equal(track(1), track(2))
