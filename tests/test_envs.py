"""Tests of natural_dreamer.envs: the step-dict contract on DMC, Gymnasium and the toy env.

Rendering tests use the real DMC pixel path with whatever MUJOCO_GL the automatic choice
makes; the GL fallback and failure paths run in child processes because dm_control fixes
its backend once per process.
"""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from natural_dreamer.envs import ToyEnv, make_env

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP_FLAGS = {"reward", "is_first", "is_last", "is_terminal"}


def dmc_config(**overrides) -> dict:
    """A small walker_walk config; keyword arguments replace its entries."""
    config = {"suite": "dmc", "task": "walker_walk", "obs": "pixels", "image_size": 64}
    config.update({"action_repeat": 2, "time_limit": 1000, **overrides})
    return config


def gym_config(task: str, **overrides) -> dict:
    """A vector gym config for `task`; keyword arguments replace its entries."""
    config = {"suite": "gym", "task": task, "obs": "proprio", "image_size": 64}
    config.update({"action_repeat": 1, "time_limit": 1000, **overrides})
    return config


def check_step_dict(step: dict, env, first: bool) -> None:
    """Assert `step` has exactly the contract's keys, shapes and dtypes."""
    assert set(step) == set(env.obs_space) | STEP_FLAGS
    for name, (shape, dtype) in env.obs_space.items():
        assert step[name].shape == shape and step[name].dtype == dtype, name
    assert isinstance(step["reward"], np.float32)
    assert step["is_first"] is first
    assert isinstance(step["is_last"], bool) and isinstance(step["is_terminal"], bool)


def run_python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter at the repository root, with no GL choice made.

    dm_control exports PYOPENGL_PLATFORM when imported, so this process's environment may
    hold one from an earlier test; the child must start as a new user's process would.
    """
    unset = ("MUJOCO_GL", "PYOPENGL_PLATFORM")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


# --- observation layout -------------------------------------------------------------------


def test_dmc_pixels_layout_and_frames_are_independent():
    env = make_env(dmc_config(), seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    assert env.action_size == 6 and not env.discrete
    first = env.reset()
    check_step_dict(first, env, first=True)
    assert first["image"].std() > 10  # a real picture, not a blank buffer
    kept = first["image"].copy()
    for _ in range(5):
        step = env.step(np.ones(env.action_size))
        check_step_dict(step, env, first=False)
    # Frames must not alias the renderer's buffer, or a replay buffer would store one frame.
    np.testing.assert_array_equal(first["image"], kept)
    assert not np.array_equal(step["image"], kept)
    assert env.render().shape == (64, 64, 3)
    env.close()


def test_dmc_proprio_vector_is_sorted_concatenation():
    env = make_env(dmc_config(obs="proprio"), seed=0)
    assert env.obs_space == {"vector": ((24,), np.float32)}  # 14 orientations, height, 9 vel.
    first = env.reset()
    check_step_dict(first, env, first=True)
    raw = env.dmc_env.task.get_observation(env.dmc_env.physics)
    expected = np.concatenate([np.ravel(raw[key]) for key in sorted(raw)])
    np.testing.assert_allclose(first["vector"], expected, rtol=1e-6)
    env.close()


def test_dmc_both_and_underscored_domain_and_default_camera():
    env = make_env(dmc_config(task="ball_in_cup_catch", obs="both", image_size=32), seed=0)
    assert set(env.obs_space) == {"image", "vector"}
    check_step_dict(env.reset(), env, first=True)
    assert env.camera_id == 0
    env.close()
    quadruped = make_env(dmc_config(task="quadruped_walk", obs="proprio"), seed=0)
    assert quadruped.camera_id == 2
    quadruped.close()


def test_dmc_fast_render_changes_quality_not_layout():
    frames = []
    for fast_render in (False, True):
        env = make_env(dmc_config(fast_render=fast_render), seed=0)
        frames.append(env.reset()["image"])
        env.close()
    assert frames[0].shape == frames[1].shape == (64, 64, 3)
    difference = np.abs(frames[0].astype(int) - frames[1]).mean()
    assert 0 < difference < 30  # shadows/antialiasing differ; the scene is the same


def test_gym_pendulum_continuous_vector():
    env = make_env(gym_config("Pendulum-v1"), seed=0)
    assert env.obs_space == {"vector": ((3,), np.float32)}
    assert env.action_size == 1 and not env.discrete
    check_step_dict(env.reset(), env, first=True)
    check_step_dict(env.step(np.zeros(1)), env, first=False)
    env.close()


def test_gym_cartpole_discrete_takes_argmax():
    env = make_env(gym_config("CartPole-v1"), seed=0)
    assert env.obs_space == {"vector": ((4,), np.float32)}
    assert env.action_size == 2 and env.discrete
    check_step_dict(env.reset(), env, first=True)
    for _ in range(3):
        step = env.step(np.array([1.0, 0.0]))  # one-hot "push left"
    assert step["vector"][1] < 0  # cart velocity
    for _ in range(6):
        step = env.step(np.array([0.3, 0.7]))  # probabilities: argmax is "push right"
    assert step["vector"][1] > 0
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.ones(3))
    env.close()


def test_gym_pixels_are_rendered_and_resized():
    env = make_env(gym_config("CartPole-v1", obs="pixels"), seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    first = env.reset()
    check_step_dict(first, env, first=True)
    assert first["image"].std() > 10
    check_step_dict(env.step(np.array([1.0, 0.0])), env, first=False)
    assert env.render().shape == (64, 64, 3)
    env.close()


# --- reward alignment, truncation and termination ----------------------------------------


def test_toy_reward_arrives_with_its_observation():
    env = make_env({"suite": "toy", "task": "counter", "obs": "proprio", "time_limit": 20}, 0)
    step = env.reset()
    check_step_dict(step, env, first=True)
    assert step["reward"] == 0.0
    np.testing.assert_array_equal(step["vector"], np.array([0.0, 1.0], np.float32))
    for t in range(1, 20):
        step = env.step(np.zeros(1))
        check_step_dict(step, env, first=False)
        assert step["reward"] == float(t) == np.float32(10 * step["vector"][0])


def test_toy_counter_truncates_and_counter_terminal_terminates():
    truncating = ToyEnv("counter", time_limit=12)
    truncating.reset()
    ends = [truncating.step(np.zeros(1)) for _ in range(12)]
    assert [s["is_last"] for s in ends] == [False] * 11 + [True]
    assert not any(s["is_terminal"] for s in ends)
    terminating = ToyEnv("counter_terminal", time_limit=12)
    terminating.reset()
    ends = [terminating.step(np.zeros(1)) for _ in range(7)]
    assert [s["is_last"] for s in ends] == [False] * 6 + [True]
    assert ends[-1]["is_terminal"] and ends[-1]["reward"] == 7.0


def test_toy_action_task_pays_the_action_just_taken_clipped():
    env = ToyEnv("action", time_limit=3)
    assert env.reset()["reward"] == 0.0
    rewards = [env.step(np.array([a], dtype=np.float32))["reward"] for a in (0.5, -2.0, 0.25)]
    assert rewards == [0.5, -1.0, 0.25]  # with the next observation; outside [-1, 1] clipped


def test_toy_pixels_encode_the_counter():
    env = ToyEnv(obs="both", image_size=16, time_limit=5)
    assert env.reset()["image"].max() == 0
    for t in range(1, 4):
        step = env.step(np.zeros(1))
        assert step["image"].shape == (16, 16, 3) and np.all(step["image"] == 10 * t)


def test_dmc_time_limit_is_truncation_after_action_repeat():
    env = make_env(dmc_config(obs="proprio", time_limit=10, action_repeat=2), seed=0)
    env.reset()
    steps = [env.step(np.zeros(env.action_size)) for _ in range(5)]
    assert [s["is_last"] for s in steps] == [False] * 4 + [True]
    assert not any(s["is_terminal"] for s in steps)
    with pytest.raises(RuntimeError, match="after is_last.*reset"):
        env.step(np.zeros(env.action_size))
    env.reset()  # and a reset starts a fresh episode
    assert not env.step(np.zeros(env.action_size))["is_last"]
    env.close()


def test_cartpole_terminates_and_action_repeat_sums_rewards():
    env = make_env(gym_config("CartPole-v1", action_repeat=2), seed=0)
    env.reset()
    inner_step = env.gym_env.step
    inner = []  # (reward, terminated) of each gymnasium step the current wrapper step made

    def counting_step(action):
        out = inner_step(action)
        inner.append((float(out[1]), bool(out[2])))
        return out

    env.gym_env.step = counting_step
    steps, made = [], []
    while not steps or not steps[-1]["is_last"]:
        inner.clear()
        steps.append(env.step(np.array([1.0, 0.0])))
        made.append(list(inner))
    assert steps[-1]["is_terminal"] and len(steps) < 50
    # Every step before the end repeats the action twice, none of them terminating.
    assert all(m == [(1.0, False), (1.0, False)] for m in made[:-1])
    assert all(s["reward"] == 2.0 for s in steps[:-1])
    # Seed 0 terminates on the first step of the last pair, so the repeat must stop there:
    # one inner step, not two, and the reward is that one step's.
    assert made[-1] == [(1.0, True)]
    assert steps[-1]["reward"] == 1.0
    # CartPole counts steps taken past termination; there must be none.
    assert env.gym_env.unwrapped.steps_beyond_terminated in (None, 0)
    env.close()


def test_gym_time_limits_truncate():
    env = make_env(gym_config("Pendulum-v1", time_limit=10, action_repeat=2), seed=0)
    env.reset()
    steps = [env.step(np.zeros(1)) for _ in range(5)]
    assert [s["is_last"] for s in steps] == [False] * 4 + [True]
    assert not steps[-1]["is_terminal"]
    env.close()
    env = make_env(gym_config("Pendulum-v1"), seed=0)  # its own TimeLimit is 200 steps
    env.reset()
    steps = [env.step(np.zeros(1)) for _ in range(200)]
    assert steps[-1]["is_last"] and not steps[-1]["is_terminal"]
    assert not any(s["is_last"] for s in steps[:-1])
    env.close()


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="before the first reset"):
        ToyEnv().step(np.zeros(1))


# --- actions --------------------------------------------------------------------------------


def test_continuous_actions_are_clipped_and_rescaled_to_bounds():
    env = make_env(gym_config("Pendulum-v1"), seed=0)
    env.reset()
    pendulum = env.gym_env.unwrapped  # its bounds are [-2, 2]; it records the torque used
    for action, torque in [(1.0, 2.0), (-1.0, -2.0), (0.5, 1.0), (0.0, 0.0), (7.0, 2.0)]:
        env.step(np.array([action]))
        assert pendulum.last_u == pytest.approx(torque)
    env.close()
    dmc = make_env(dmc_config(obs="proprio"), seed=0)
    dmc.reset()
    dmc.step(np.full(dmc.action_size, 3.0))
    upper = dmc.dmc_env.action_spec().maximum
    np.testing.assert_allclose(dmc.dmc_env.physics.data.ctrl, upper)
    dmc.close()


# --- seeding --------------------------------------------------------------------------------


def test_same_seed_gives_identical_first_observations():
    def first_obs(config, seed):
        env = make_env(config, seed)
        step = env.reset()
        env.close()
        return step

    pixels = dmc_config(task="cartpole_swingup", obs="both")
    a, b, c = first_obs(pixels, 1), first_obs(pixels, 1), first_obs(pixels, 2)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["vector"], b["vector"])
    assert not np.array_equal(a["vector"], c["vector"])
    pendulum = gym_config("Pendulum-v1")
    a, b = first_obs(pendulum, 5), first_obs(pendulum, 5)
    np.testing.assert_array_equal(a["vector"], b["vector"])


def test_gym_seeds_only_the_first_reset():
    env = make_env(gym_config("Pendulum-v1"), seed=5)
    first, second = env.reset(), env.reset()
    assert not np.array_equal(first["vector"], second["vector"])
    env.close()


# --- bad input ------------------------------------------------------------------------------


class NoRenderEnv(gym.Env):
    """A gymnasium env that declares no render modes."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):  # gym.make always passes render_mode
        self.render_mode = render_mode


@pytest.fixture
def no_render_id():
    """Register NoRenderEnv for one test."""
    gym.register(id="NoRenderTest-v0", entry_point=NoRenderEnv)
    yield "NoRenderTest-v0"
    del gym.registry["NoRenderTest-v0"]


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"suite": "procgen", "task": "coinrun"}, ValueError, "one of: dmc, gym, toy, atari"),
        (dmc_config(task="walker_wlk"), ValueError, "walker_walk.*suite.ALL_TASKS"),
        (dmc_config(task="walk"), ValueError, "Unknown DMC task 'walk'"),
        (gym_config("Pendulm-v1"), ValueError, "Unknown Gymnasium id 'Pendulm-v1'.*Pendulum"),
        (dmc_config(image_size=8), ValueError, "image_size must be at least 16, got 8"),
        (dmc_config(obs="rgb"), ValueError, "choose one of: pixels, proprio, both"),
        (gym_config("CartPole-v1", action_repeat=0), ValueError, "action_repeat"),
        ({"suite": "toy", "task": "count"}, ValueError, "counter, counter_terminal"),
    ],
)
def test_bad_config_raises_helpful_error(config, error, message):
    with pytest.raises(error, match=message):
        make_env(config, seed=0)


def test_pixels_for_env_that_cannot_render(no_render_id):
    with pytest.raises(ValueError, match="needs rgb_array rendering"):
        make_env(gym_config(no_render_id, obs="pixels"), seed=0)


# --- headless GL selection -------------------------------------------------------------------


def test_importing_envs_does_not_import_dm_control():
    code = (
        "import sys, natural_dreamer.envs\n"
        "print('dm_control' in sys.modules, 'mujoco' in sys.modules)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_gl_falls_back_to_osmesa_when_egl_fails():
    # An empty EGL vendor list makes libglvnd's EGL unusable, as on a machine without it.
    code = "from natural_dreamer.envs import select_mujoco_gl; print(select_mujoco_gl())"
    result = run_python(code, __EGL_VENDOR_LIBRARY_FILENAMES="/nonexistent.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "osmesa"


def test_gl_failure_names_the_debian_packages_but_proprio_still_runs():
    # PyOpenGL refuses both backends under a foreign platform name.
    code = (
        "import numpy as np\n"
        "from natural_dreamer.envs import DMCEnv\n"
        "env = DMCEnv('walker_walk', obs='proprio')\n"
        "env.reset(); env.step(np.zeros(6))\n"
        "try:\n"
        "    env.render()\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
        "DMCEnv('walker_walk', obs='pixels')\n"
    )
    result = run_python(code, PYOPENGL_PLATFORM="no_such_platform")
    assert result.returncode != 0
    for packages in ("libegl1 libgl1-mesa-dri libopengl0", "libosmesa6"):
        assert packages in result.stdout  # from render() on the proprio env
        assert packages in result.stderr  # from building the pixel env
