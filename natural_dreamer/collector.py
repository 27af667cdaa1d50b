"""Environment interaction: step environments with a policy and store every step.

The order of one policy step is what makes the replay data line up (pitfall 1):
    x_t, r_t arrive  ->  a_t = policy(x_t)  ->  store (x_t, r_t, flags_t, a_t)  ->  env.step(a_t)
An episode's last observation is stored too, with a zero action, since nothing acts on it.

`Collector` runs one environment in this process (evaluation, dreams, notebooks);
`VectorCollector` runs N environments side by side through gymnasium's vector API, each
writing into its own stream of the replay buffer (training). Policies act on batches:
obs is a dict of (N, ...) arrays and the actions come back as (N, A).
"""

import numpy as np
import torch


class RandomPolicy:
    """Uniform actions: continuous in [-1, 1], or a random one-hot for discrete actions."""

    def __init__(self, action_size: int, discrete: bool, seed: int = 0):
        self.action_size, self.discrete = action_size, discrete
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> np.ndarray:
        """obs: dict of (N, ...) arrays; returns (N, action_size) float32 actions."""
        count = len(obs["is_first"])
        if self.discrete:
            index = self.rng.integers(self.action_size, size=count)  # (N,)
            return np.eye(self.action_size, dtype=np.float32)[index]
        return self.rng.uniform(-1, 1, (count, self.action_size)).astype(np.float32)


class AgentPolicy:
    """The agent's policy for N environments, carrying their recurrent states between calls.

    explore: sample actions (else take the mode); actor: which of the agent's actors chooses
    (the task actor when None; training collects with agent.collecting_actor()).
    """

    def __init__(self, agent, explore: bool = True, count: int = 1, actor=None):
        self.agent, self.explore, self.actor = agent, explore, actor
        self.state = agent.initial_state(count)

    def __call__(self, obs: dict) -> np.ndarray:
        """obs: dict of (N, ...) arrays with the observation keys and "is_first";
        returns (N, A) float32 actions."""
        keys = [*self.agent.world_model.obs_keys, "is_first"]
        action, self.state = self.agent.act(
            {key: obs[key] for key in keys}, self.state, self.explore, self.actor
        )
        return action


def check_finite(step: dict) -> None:
    """Raise FloatingPointError naming the key when an environment hands back a NaN or an
    infinity (in a float observation or the reward): the first place it can appear."""
    for key, value in step.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise FloatingPointError(f"the environment returned a non-finite {key!r}")


def batched(step: dict) -> dict:
    """One environment's step dict -> a batch of one: every value gains a leading axis."""
    return {key: np.asarray(value)[None] for key, value in step.items()}


class Collector:
    """Runs one environment, writing each step into a replay buffer (or nowhere)."""

    def __init__(self, env, buffer=None, seed: int | None = None):
        self.env, self.buffer, self.seed = env, buffer, seed
        self.obs = None
        self.episodes = 0  # finished episodes; with a seed, episode k starts from seed + k
        self.episode_return, self.episode_length = 0.0, 0

    def step(self, policy):
        """Take one policy step; returns {"return", "length"} when an episode ends, else None."""
        if self.obs is None:
            self.reset()
        action = policy(batched(self.obs))[0]
        self.store(self.obs, action)
        self.obs = self.env.step(action)
        check_finite(self.obs)
        self.episode_return += float(self.obs["reward"])
        self.episode_length += 1
        if not self.obs["is_last"]:
            return None
        self.store(self.obs, np.zeros_like(action))
        finished = {"return": self.episode_return, "length": self.episode_length}
        if "achievements" in self.obs:  # Crafter
            finished["achievements"] = self.obs["achievements"]
        self.obs = None
        self.episodes += 1
        return finished

    def reset(self) -> None:
        """Start a new episode."""
        self.obs = self.env.reset(None if self.seed is None else self.seed + self.episodes)
        self.episode_return, self.episode_length = 0.0, 0

    def store(self, obs: dict, action: np.ndarray) -> None:
        if self.buffer is not None:
            self.buffer.add({**obs, "action": action})


def run_episode(env, policy, render: bool = False, seed: int | None = None):
    """Play one whole episode without storing it, starting from `seed` when given.

    Returns (episode return, frames (N, H, W, 3) uint8 or None).
    """
    collector = Collector(env, seed=seed)
    collector.reset()
    frames = [env.render()] if render else []
    while True:
        with torch.no_grad():
            done = collector.step(policy)
        if render:
            frames.append(env.render())
        if done:
            return done["return"], (np.stack(frames) if render else None)


class VectorCollector:
    """Runs N environments side by side; environment i writes into stream i of the buffer.

    envs: a gymnasium VectorEnv of `vector.GymnasiumEnv`s with autoreset disabled (see
    `vector.make_vector_env`): an environment whose episode ended is reset here, right after
    its last step is stored. Episode k of environment i starts from seed + k * N + i, so every
    episode of the run has its own seed and a resumed run meets the same episodes.
    """

    def __init__(self, envs, buffer, seed: int):
        self.envs, self.buffer, self.seed = envs, buffer, seed
        self.count = envs.num_envs
        self.obs = None  # the current step dicts, batched: dict of (N, ...) arrays
        self.episodes = [0] * self.count  # finished episodes of each environment
        self.returns = np.zeros(self.count)  # (N,) of the running episodes
        self.lengths = np.zeros(self.count, np.int64)
        self.actions = [[] for _ in range(self.count)]  # of each running episode, so far

    def step(self, policy) -> list:
        """One policy step in every environment; returns a {"return", "length"} dict for each
        episode that ended (often none)."""
        if self.obs is None:
            self.reset(np.ones(self.count, bool))
        actions = policy(self.obs)  # (N, A)
        self.store(self.obs, actions, range(self.count))
        for i in range(self.count):
            self.actions[i].append(actions[i])
        obs, reward, terminated, truncated, infos = self.envs.step(actions)
        last = terminated | truncated  # (N,)
        self.obs = {
            **obs,
            "reward": reward.astype(np.float32),
            "is_first": np.zeros(self.count, bool),
            "is_last": last,
            "is_terminal": terminated,
        }
        check_finite(self.obs)
        self.returns += self.obs["reward"]  # the float32 rewards the buffer stores
        self.lengths += 1
        ended = np.flatnonzero(last)
        self.store(self.obs, np.zeros_like(actions), ended)
        finished = []
        achieved = infos.get("achievements", {})  # Crafter: name -> (N,) counts
        for i in ended:
            episode = {"return": float(self.returns[i]), "length": int(self.lengths[i])}
            if achieved and infos["_achievements"][i]:
                episode["achievements"] = {
                    name: int(n[i]) for name, n in achieved.items() if not name.startswith("_")
                }  # (gymnasium adds a "_name" mask beside each name)
            finished.append(episode)
            self.episodes[i] += 1
        if len(ended):
            self.reset(last)
        return finished

    def reset(self, mask: np.ndarray) -> None:
        """Start new episodes in the environments where mask (N,) is True."""
        seeds = [self.episode_seed(i) if mask[i] else None for i in range(self.count)]
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        first = {
            **obs,
            "reward": np.zeros(self.count, np.float32),
            "is_first": np.ones(self.count, bool),
            "is_last": np.zeros(self.count, bool),
            "is_terminal": np.zeros(self.count, bool),
        }
        if self.obs is None:
            self.obs = first
        else:  # keep the running environments' current steps
            for key, value in first.items():
                where = mask.reshape(-1, *[1] * (value.ndim - 1))  # (N, 1, ...) broadcasts
                self.obs[key] = np.where(where, value, self.obs[key])
        self.returns[mask] = 0.0
        self.lengths[mask] = 0
        for i in np.flatnonzero(mask):
            self.actions[i] = []

    def episode_seed(self, i: int) -> int:
        """The seed of environment i's current episode."""
        return self.seed + self.episodes[i] * self.count + i

    def state_dict(self) -> dict:
        """What resuming in the middle of episodes needs: the episode counts, the current
        steps, and each running episode's return, length and actions so far."""
        return {
            "episodes": np.array(self.episodes, np.int64),  # (N,)
            "returns": self.returns.copy(),  # (N,)
            "lengths": self.lengths.copy(),  # (N,)
            "obs": None if self.obs is None else dict(self.obs),  # (N, ...) arrays
            "actions": {str(i): np.array(a, np.float32) for i, a in enumerate(self.actions)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where state_dict was taken: every running episode is replayed from its
        seed with its actions, so each environment is where it was (its simulator's state
        included), and the last observation is checked against the saved one. Raises
        RuntimeError when an environment does not reproduce it (not deterministic)."""
        self.episodes = [int(n) for n in state["episodes"]]
        self.returns = np.array(state["returns"], np.float64)
        self.lengths = np.array(state["lengths"], np.int64)
        self.actions = [list(state["actions"][str(i)]) for i in range(self.count)]
        self.obs = (
            None if state["obs"] is None else {k: np.array(v) for k, v in state["obs"].items()}
        )
        if self.obs is None:
            return
        plans = {i: (self.episode_seed(i), np.array(self.actions[i])) for i in range(self.count)}
        reached = self.envs.call("replay", plans)  # one observation dict per environment
        for i, obs in enumerate(reached):
            for key, value in obs.items():
                if not np.array_equal(value, self.obs[key][i]):
                    raise RuntimeError(
                        f"environment {i} did not reach its saved {key!r} when its episode "
                        f"was replayed from seed {self.episode_seed(i)}: it is not deterministic"
                    )

    def store(self, obs: dict, actions: np.ndarray, envs) -> None:
        """Write step i of the batch into stream i, for each environment i in `envs`."""
        for i in envs:
            self.buffer.add(
                {key: value[i] for key, value in obs.items()} | {"action": actions[i]}, i
            )
