"""torch.distributed set-up shared by `golf train` and `golf eval`: torchrun's environment in, a
rank context out.

Under torchrun (WORLD_SIZE > 1) every rank joins one process group: NCCL on GPUs, gloo on CPU.
Each stage splits its work over the ranks; only rank 0 writes the stage folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    """This process's rank (0 when not distributed)."""
    world_size: int
    """Number of processes."""
    device: torch.device
    """The device this rank computes on."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shutdown(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where a tensor must live to take part in a collective: NCCL reduces only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float) -> float:
    """The mean of ``value`` over the ranks (itself when not distributed)."""
    return _all_reduce(value, dist.ReduceOp.SUM) / (dist.get_world_size() if _distributed() else 1)


def all_reduce_max(value: float) -> float:
    """The largest ``value`` of any rank: the slowest rank's clock decides when a timed budget is
    spent, so that all ranks stop together."""
    return _all_reduce(value, dist.ReduceOp.MAX)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(value: float, op) -> float:
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=op)
    return float(tensor)
