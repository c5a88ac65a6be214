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
