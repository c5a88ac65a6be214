"""torch.distributed set-up for `golf train`: torchrun's environment in, a rank context out.

Under torchrun (WORLD_SIZE > 1) every rank joins one process group: NCCL on GPUs, gloo on CPU.
Rank r trains on its slice of each global batch; gradients are averaged across ranks; only
rank 0 writes the stage folder.
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
    """The device this rank trains on."""

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


def all_reduce_mean(value: float) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


def all_reduce_max(value: float) -> float:
    """The slowest rank's clock decides when a timed budget is spent, so all ranks stop together."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)
