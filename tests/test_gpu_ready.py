"""Ready for a GPU, checked on the CPU: a training step and acting that never wait for the
device (run on PyTorch's meta device, whose tensors hold no values, so any read of one fails),
checks of finiteness that still stop a run before a bad update is kept, and the choices a CUDA
device would get, asked with a described GPU."""

import numpy as np
import pytest
import torch

from natural_dreamer import Dreamer, ReplayBuffer
from natural_dreamer.deferred import TrainStep, UnreadSteps
from natural_dreamer.fastpath import (
    choose_compile,
    choose_pinned,
    choose_precision,
    compile_mode,
    native_bf16,
    use_tf32,
)
from natural_dreamer.loader import HOST_KEYS, BatchLoader

from conftest import MIXED, VECTOR, random_batch, tiny_config

META = torch.device("meta")
CUDA = torch.device("cuda")  # a device name only: nothing here touches a GPU
H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": (9, 0), "bf16": True, "triton": True}
V100 = {"name": "Tesla V100-SXM2-16GB", "capability": (7, 0), "bf16": False, "triton": True}


def meta_batch(agent: Dreamer, obs_space: dict, discrete: bool, B: int = 3, T: int = 6) -> dict:
    """A replay batch of meta tensors, with the replay context's keys."""
    arrays = random_batch(obs_space, agent.action_size, discrete, B, T)
    batch = {key: torch.empty(value.shape, dtype=torch.from_numpy(value).dtype, device=META)
             for key, value in arrays.items()}  # fmt: skip
    rssm = agent.world_model.rssm
    batch["context_deter"] = torch.empty(B, rssm.deter_dim, device=META)
    batch["context_stoch"] = torch.empty(B, rssm.stoch, rssm.classes, device=META)
    batch["context_valid"] = torch.empty(B, dtype=torch.bool, device=META)
    batch["context_action"] = torch.empty(B, agent.action_size, device=META)
    return batch


@pytest.mark.parametrize(
    ("obs_space", "discrete", "exploration"),
    [(MIXED, False, "greedy"), (VECTOR, True, "plan2explore")],
    ids=["images-continuous", "vector-discrete-plan2explore"],
)
def test_a_training_step_reads_nothing_back_from_the_device(obs_space, discrete, exploration):
    """The whole train_step on the meta device: a hidden .item(), bool(), .tolist() or a
    tensor made on the CPU would fail here, as it would make a GPU's host wait. (On the CPU
    itself F.one_hot reads its indices' range, a check that CUDA leaves to the kernel.)"""
    agent = Dreamer(obs_space, 3, discrete, tiny_config(exploration=exploration), device=META)
    result = agent.train_step(meta_batch(agent, obs_space, discrete))
    assert result.vector.device == META
    assert result.vector.shape == (len(result.checks) + len(result.names),)
    assert result.checks[:3] == ("the world_model loss", "the actor loss", "the critic loss")
    assert all(value.device == META for value in result.posterior.values())
    assert result.posterior["deter"].shape[:2] == (3, 6)
    agent.unread.add(0, result)  # what the trainer does with it: still nothing read


def test_acting_reads_nothing_back_before_the_action():
    """policy_step, all of acting but the one transfer, on the meta device."""
    agent = Dreamer(MIXED, 2, False, tiny_config(), device=META)
    obs = {key: value[:, 0] for key, value in random_batch(MIXED, 2, False).items()}
    state = agent.initial_state(3)
    for explore in (True, False):
        action, finite, state = agent.policy_step(obs, state, explore)
        assert action.device == META and action.shape == (3, 2)
        assert finite.device == META and finite.shape == (2,) and finite.dtype == torch.bool
        assert all(value.device == META for value in state.values())


def test_a_train_step_reads_as_the_metrics_it_returned_before():
    """As a mapping, a TrainStep reads {name: float}, from one copy of its vector."""
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    result = agent.train_step(random_batch(VECTOR, 2, False))
    host = result.vector.numpy()
    C = len(result.checks)
    assert dict(result) == dict(zip(result.names, host[C:].tolist(), strict=True))
    assert result["world_model/loss"] == host[result.checks.index("the world_model loss")]
    deter, stoch = result.posterior_on_host()
    assert np.array_equal(deter, result.posterior["deter"].numpy())
    assert np.array_equal(stoch, result.posterior["stoch"].numpy())


def fake_step(values: dict, checks=("the world_model loss",)) -> TrainStep:
    """A TrainStep of given metric values (its check: the first metric's value)."""
    numbers = [next(iter(values.values()))] + list(values.values())
    return TrainStep(checks, values, torch.tensor(numbers, dtype=torch.float32), {})


def test_unread_steps_are_read_in_one_go_and_name_the_first_non_finite_value():
    unread = UnreadSteps()
    unread.add(5, fake_step({"world_model/loss": 1.0, "actor/entropy": 2.0}))
    unread.add(6, fake_step({"world_model/loss": 3.0, "actor/entropy": 4.0}))
    assert unread.read() == {"world_model/loss": [1.0, 3.0], "actor/entropy": [2.0, 4.0]}
    assert len(unread) == 0 and unread.read() == {}
    unread.add(7, fake_step({"world_model/loss": 1.0, "actor/entropy": float("inf")}))
    unread.add(8, fake_step({"world_model/loss": float("nan"), "actor/entropy": 1.0}))
    with pytest.raises(FloatingPointError, match=r"^actor/entropy became inf at gradient step 7$"):
        unread.check()
    unread = UnreadSteps()
    unread.add(8, fake_step({"world_model/loss": float("nan"), "actor/entropy": 1.0}))
    with pytest.raises(FloatingPointError, match="^the world_model loss became nan at grad"):
        unread.read()


def test_no_state_dict_is_made_after_a_non_finite_update():
    """Every checkpoint takes the agent's state_dict, which checks the unread steps first."""
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    agent.unread.add(3, agent.train_step(random_batch(VECTOR, 2, False)))
    assert agent.state_dict().keys()  # finite: the state is handed out
    agent.unread.add(4, fake_step({"world_model/loss": float("nan")}))
    with pytest.raises(FloatingPointError, match="world_model loss became nan at gradient step 4"):
        agent.state_dict()


def test_acting_on_a_non_finite_state_names_the_update_that_caused_it():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    obs = {key: value[:, 0] for key, value in random_batch(VECTOR, 2, False).items()}
    with torch.no_grad():
        agent.world_model.encoder.parameters().__next__().fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="^the model state became non-finite while act"):
        agent.act(obs, agent.initial_state(3))
    agent.unread.add(9, fake_step({"world_model/loss": float("nan")}))
    with pytest.raises(FloatingPointError, match="^the world_model loss became nan at gradient"):
        agent.act(obs, agent.initial_state(3))


def test_replay_rows_stay_on_the_host():
    buffer = ReplayBuffer(100, VECTOR, action_size=2, latent=(8, 4, 4))
    for t in range(40):
        step = {"vector": np.full(5, t, np.float32), "action": np.zeros(2, np.float32)}
        buffer.add({**step, "reward": 0.0, "is_first": t == 0, "is_terminal": False})
    batch = BatchLoader(buffer, 3, 8, "cpu", context=1).next()
    assert isinstance(batch["index"], np.ndarray) and batch["index"].shape == (3, 8)
    assert "context_row" not in batch and isinstance(batch["context_deter"], torch.Tensor)
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    assert not set(agent.batch_to_torch(batch)) & set(HOST_KEYS)


def test_what_a_cuda_device_gets():
    """The CUDA choices, asked with a described GPU: an H100 and a V100 (no bf16, no TF32)."""
    assert native_bf16(CUDA, H100) == (
        True,
        "CUDA bf16 (NVIDIA H100 80GB HBM3, compute capability 9.0)",
    )
    assert choose_precision("auto", CUDA, 512, H100)[0] == "bf16"  # nothing timed
    assert choose_precision("auto", CUDA, 512, V100) == (
        "fp32",
        "this GPU has no bf16 (Tesla V100-SXM2-16GB, compute capability 7.0)",
    )
    assert choose_precision("fp32", CUDA, 512, H100) == ("fp32", "set in the config")
    assert use_tf32(CUDA, H100, apply=False) == (True, "float32 products in TF32")
    assert not use_tf32(CUDA, V100, apply=False)[0]
    assert use_tf32(torch.device("cpu")) == (False, "no TF32 off CUDA")
    assert compile_mode(CUDA) == (
        "reduce-overhead",
        "filtering and imagination steps as CUDA graphs",
    )
    assert compile_mode(torch.device("cpu")) == ("default", "")
    assert choose_compile("auto", CUDA, 248_750, H100)[0]
    assert choose_compile("auto", CUDA, 248_750, {**H100, "triton": False}) == (
        False,
        "no Triton for CUDA kernels",
    )
    assert choose_pinned(CUDA)[0] and not choose_pinned(torch.device("cpu"))[0]


def test_a_cpu_agent_says_nothing_of_cuda():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    assert "TF32" not in agent.precision_reason and "CUDA" not in agent.compile_reason
