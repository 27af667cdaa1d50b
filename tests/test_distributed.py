"""Data-parallel training: two gloo processes on this CPU, against one process.

The workers below run in processes started by torch.multiprocessing (spawn), joined into a
process group through a file; each test takes a few seconds.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from natural_dreamer import Dreamer, distributed, load_config

from conftest import VECTOR, random_batch, tiny_config

ROOT = Path(__file__).resolve().parent.parent

# The learning rate is large, the warm-up off and LaProp's eps 1.0, so the first update is
# about lr * gradient (with the paper's eps 1e-20 it is lr * sign(gradient), which would hide
# a wrong gradient size). All else is the real training step.
SENSITIVE = {
    "optimizer.warmup": 1,
    "optimizer.eps": 1.0,
    "optimizer.world_model_lr": 0.01,
    "optimizer.actor_lr": 0.01,
    "optimizer.critic_lr": 0.01,
}


def without_sampling_noise(patch=setattr):
    """Replace the latent and action samples by their most likely values.

    patch: setattr in a worker process (it ends with the worker); pytest's
    monkeypatch.setattr in the test's own process, which runs the later tests: a plain
    setattr there left every later test in the session acting without noise (an agent
    could no longer explore, and the learning check failed after this file).

    One process drawing noise for 4 sequences draws different numbers than two processes
    drawing for 2 each, so an exact comparison needs a noise-free step.
    """
    from natural_dreamer import distributions, rssm

    def most_likely_one_hot(logits, straight_through=True, uniform=None):
        probs = distributions.log_normalize(logits).exp()
        sample = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        return sample + probs - probs.detach() if straight_through else sample

    patch(rssm, "sample_one_hot", most_likely_one_hot)
    patch(distributions.NormalAction, "sample", lambda self, noise=None: self.mode())
    patch(distributions.CategoricalAction, "sample", lambda self, uniform=None: self.mode())


def fresh_agent():
    torch.manual_seed(0)
    return Dreamer(VECTOR, 2, False, tiny_config(**SENSITIVE))


def join_group(rank: int, world: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


def update_worker(rank: int, world: int, rendezvous: str, batch: dict, out: str) -> None:
    """One training step on this rank's share of the batch; saves parameters and gradients."""
    join_group(rank, world, rendezvous)
    without_sampling_noise()
    agent = fresh_agent()
    share = len(batch["reward"]) // world
    agent.train_step(
        {key: value[rank * share : (rank + 1) * share] for key, value in batch.items()}
    )
    grads = {name: p.grad for name, p in agent.named_parameters() if p.grad is not None}
    torch.save({"params": dict(agent.named_parameters()), "grads": grads}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def spawn(worker, tmp_path, *args, world=2):
    mp.spawn(worker, args=(world, str(tmp_path / "rendezvous"), *args), nprocs=world, join=True)


def test_two_half_batches_make_the_update_of_one_full_batch(tmp_path, monkeypatch):
    batch = random_batch(VECTOR, 2, False, B=4, T=6)
    spawn(update_worker, tmp_path, batch, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    without_sampling_noise(monkeypatch.setattr)  # in this process too, for the reference
    full = fresh_agent()
    full.train_step(batch)
    params = dict(full.named_parameters())
    grads = {name: p.grad for name, p in full.named_parameters() if p.grad is not None}

    def same_gradient(grad, reference):
        # float32 sums in another order: allow rounding relative to the gradient's size
        atol = 1e-5 * reference.abs().max().item()
        return torch.allclose(grad, reference, rtol=1e-4, atol=atol)

    for rank in ranks:
        assert rank["grads"].keys() == grads.keys()
        for name, grad in grads.items():  # the all-reduced mean of the two half-batch grads
            assert same_gradient(rank["grads"][name], grad), name
        for name, param in params.items():
            assert torch.allclose(rank["params"][name], param, rtol=1e-5, atol=1e-7), name
    # The comparison can fail: one half-batch alone gives other gradients.
    half = fresh_agent()
    half.train_step({key: value[:2] for key, value in batch.items()})
    alone = {name: p.grad for name, p in half.named_parameters() if p.grad is not None}
    assert not all(same_gradient(alone[n], grads[n]) for n in grads)


RUN = {
    "train.steps": 300,
    "train.prefill": 200,
    "train.checkpoint_every": 20,
    "train.log_every": 100,
    "train.eval_episodes": 1,
    "world_model.batch_size": 4,
}


def training_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    """Train, each rank into its own folder; then resume from rank 0's checkpoint."""
    from natural_dreamer.loop import Trainer

    join_group(rank, world, rendezvous)
    trainer = Trainer(load_config("smoke", RUN), root=Path(out) / f"rank{rank}", quiet=True)
    trainer.train()
    torch.save(trainer.agent.state_dict(), f"{out}/agent{rank}.pt")
    dist.barrier()  # rank 0 has written its last checkpoint
    # Resume the group: every rank reads rank 0's checkpoint and trains on.
    longer = load_config("smoke", {**RUN, "train.steps": 400})
    resumed = Trainer(longer, root=Path(out) / "rank0", quiet=True)
    resumed.resume("latest")
    resumed.train()
    counters = {"env_steps": resumed.env_steps, "gradient_steps": resumed.gradient_steps}
    torch.save({"agent": resumed.agent.state_dict(), **counters}, f"{out}/resumed{rank}.pt")
    dist.destroy_process_group()


def files(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_rank_0_alone_writes_and_the_group_resumes_in_step(tmp_path):
    spawn(training_worker, tmp_path, str(tmp_path))
    assert files(tmp_path / "rank1") == []  # rank 1 trained but wrote nothing
    written = files(tmp_path / "rank0")
    assert "metrics/smoke_run.csv" in written and "checkpoints/smoke_run_latest.pth" in written
    assert any(name.startswith("videos/smoke_run_") for name in written)
    metrics = pd.read_csv(tmp_path / "rank0" / "metrics" / "smoke_run.csv")
    # 2 processes x 1 env: 100 env steps after the prefill pay for 100 * 16 / 64 updates.
    assert metrics["env_steps"].tolist() == [100, 200, 280, 300, 400]  # 280: the 20th update
    assert metrics["gradient_steps"].tolist() == [0, 0, 20, 25, 50]
    for stage in ("agent{}", "resumed{}"):
        a, b = (torch.load(tmp_path / f"{stage.format(r)}.pt", weights_only=True) for r in (0, 1))
        a, b = a.get("agent", a), b.get("agent", b)
        assert all(torch.equal(a[key], b[key]) for key in a), stage  # the ranks stay identical
    resumed = torch.load(tmp_path / "resumed1.pt", weights_only=True)
    assert resumed["env_steps"] == 400 and resumed["gradient_steps"] == 50


def test_without_a_process_group_everything_is_one_process():
    assert distributed.rank() == 0 and distributed.world_size() == 1
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad.clone()
    distributed.average_gradients([param])  # a no-op
    assert torch.equal(param.grad, grad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_trains_one_agent_with_two_processes(tmp_path):
    """The real entry point under torchrun with gloo; a batch that does not split is refused."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    args = ["smoke", "--max_steps", "300", "--outdir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*torchrun, "main.py", *args, "--train.checkpoint_every", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 env(s) x 2 process(es)" in result.stderr
    metrics = pd.read_csv(tmp_path / "metrics" / "smoke_run.csv")
    assert metrics["env_steps"].iloc[-1] == 300 and metrics["gradient_steps"].iloc[-1] == 25
    result = subprocess.run(
        [*torchrun, "main.py", *args, "--world_model.batch_size", "3", "--run_name", "odd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode != 0 and "must split evenly over 2 processes" in result.stderr
