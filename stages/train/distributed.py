"""torch.distributed for `golf train`: rank r trains on its slice of each global batch, gradients
are averaged across ranks, and only rank 0 writes the stage folder.

Joining the process group (``init_distributed``, ``shutdown``) is shared with `golf eval` and lives
in ``stages/distributed.py``; it is re-exported here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import DistContext, init_distributed, shutdown  # noqa: F401  (re-exported for train)


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
