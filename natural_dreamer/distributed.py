"""Data-parallel training over several processes with torch.distributed.

    torchrun --nproc_per_node K main.py CONFIG

starts K copies of main.py. Each process (a "rank") runs its own environments into its own
replay buffer and samples batch_size / K sequences per update; after the update's backward
pass each optimiser's gradients are averaged over the ranks, so all ranks take the same
optimiser step and their parameters stay identical, as if one process had trained on all K
half-batches at once.

Why an explicit all-reduce and not DistributedDataParallel: DDP hooks into one forward and
one backward of one module, while a Dreamer update is one backward pass of three summed
losses (world model, actor, critic), each reaching its own module, through many sub-modules
called in loops. Averaging the gradients of the module an optimiser owns, right before it
clips and steps, is the same arithmetic in a few lines that can be read. Buffers that are
not trained (the return normaliser's statistics) follow rank 0, as DDP's do.

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op, so the
single-process code path is the same code.
"""

import os

import torch
import torch.distributed as dist

# Seeds of rank r are offset by r * RANK_SEED_STRIDE: each rank meets its own episodes.
RANK_SEED_STRIDE = 1_000_000


def init_from_environment(use_cuda: bool) -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR, ...): nccl between GPUs, gloo between CPU processes. No-op without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes training together, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (which GPU it uses), from torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def average_gradients(parameters) -> None:
    """Replace each parameter's gradient by its mean over all ranks.

    The gradients travel as one flat tensor: one all-reduce per optimiser, not one per
    parameter. A parameter without a gradient is skipped; it has none on every rank, since
    every rank runs the same computation.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])  # (total parameters,)
    dist.all_reduce(flat)  # the sum over ranks
    flat /= dist.get_world_size()
    for grad, mean in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(mean.view_as(grad))


def broadcast_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless buffers_only) and buffers to every rank, in place."""
    if not is_distributed():
        return
    tensors = [] if buffers_only else list(module.parameters())
    tensors += list(module.buffers())
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)
