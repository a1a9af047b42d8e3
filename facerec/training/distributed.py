"""Training in several processes (`torchrun --nproc-per-node N -m facerec train ...`).

Every process builds the same batch, companions and triplets (they come from the run's seeds); each
embeds its own contiguous share of the batch's faces, and the shares are gathered, with gradients, so
every process computes the loss of the whole batch. The gather's backward sums the gradient of a share
over the processes, N times its part of the whole batch's gradient; DistributedDataParallel then averages
over N, which leaves the gradient one process would compute for the whole batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes; rank 0 writes the run's files."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int, int]:
        """(start, stop, size) of this process's share of `count` items; every share has `size` rows, the
        last one padded by repeating its last item (see `gather`).
        """
        size = math.ceil(count / self.world)
        start = min(self.rank * size, count - 1)
        return start, min(start + size, count), size

    def gather(self, local: torch.Tensor, count: int) -> torch.Tensor:
        """The first `count` rows of every process's `local` rows, in rank order, with gradients."""
        if self.world == 1:
            return local
        return GatherRows.apply(local)[:count]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated in rank order. Backward sums the gradient over the processes
    (each computed the loss of the whole batch) and returns this process's rows of it.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = slice(dist.get_rank() * len(local), (dist.get_rank() + 1) * len(local))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def start(device: torch.device) -> Processes:
    """Join the process group torchrun set up (gloo on the CPU, NCCL on CUDA); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def stop(processes: Processes) -> None:
    if processes.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """`rows` with its last row repeated until there are `size` rows."""
    missing = size - len(rows)
    return torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])]) if missing > 0 else rows
