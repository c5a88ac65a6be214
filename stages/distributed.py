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
        _create_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


# How many default groups this process has created: one process may run several stages (a
# submission's train_gpt.py runs train, then eval), each creating and destroying its group.
_GROUPS = {"created": 0}


def _create_group(backend: str) -> None:
    """The default group from torchrun's environment. A group created after another was destroyed
    meets the rendezvous keys the destroyed one left in torchrun's store and never connects (gloo:
    refused connections, then a hang), so every group after the first rendezvous under a prefix
    of its own."""
    created = _GROUPS["created"]
    if created == 0:
        dist.init_process_group(backend=backend)
    else:
        store, rank, world = next(dist.rendezvous("env://"))
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"golf_group_{created}", store), rank=rank,
                                world_size=world)
    _GROUPS["created"] = created + 1


def shutdown(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank is here (nothing to wait for when not distributed)."""
    if _distributed():
        dist.barrier()


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


# ---- tensor collectives for the training step ----
# Gradients travel in flat buckets of at most this many bytes: a few large all-reduces instead of one
# per parameter (collective launch latency dominates small tensors), small enough not to double memory.
BUCKET_BYTES = 32 * 2**20


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) when a multi-process group is running, else (0, 1)."""
    if _distributed() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Pending:
    """A collective in flight: ``wait()`` finishes it and returns its result. ``keep`` holds the
    tensors it reads until then, so the allocator cannot hand their memory out mid-transfer."""

    def __init__(self, work, finish, keep: tuple = ()):
        self.work, self.finish, self.keep = work, finish, keep

    def wait(self):
        if self.work is not None:
            self.work.wait()
        return self.finish()


def buckets(tensors: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[torch.Tensor]]:
    """``tensors`` split into runs of one dtype and device, each at most ``bucket_bytes`` (a larger
    tensor is a bucket of its own); the order within each dtype is kept."""
    runs: dict[tuple, list[list[torch.Tensor]]] = {}
    filled: dict[tuple, int] = {}
    for tensor in tensors:
        kind, size = (tensor.dtype, tensor.device), tensor.numel() * tensor.element_size()
        if kind not in runs or filled[kind] + size > bucket_bytes:
            runs.setdefault(kind, []).append([])
            filled[kind] = 0
        runs[kind][-1].append(tensor)
        filled[kind] += size
    return [run for kind_runs in runs.values() for run in kind_runs]


def start_mean(tensors: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[Pending]:
    """Begin averaging ``tensors`` in place over the ranks, one all-reduce per bucket; each pending
    result copies its bucket's mean back when waited on. SUM then divide: gloo has no AVG."""
    world = dist.get_world_size()
    pending = []
    for bucket in buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket])

        def finish(flat=flat, bucket=bucket):
            flat /= world
            torch._foreach_copy_(bucket, [chunk.view_as(t) for chunk, t in
                                          zip(flat.split([t.numel() for t in bucket]), bucket)])
        pending.append(Pending(dist.all_reduce(flat, async_op=True), finish))
    return pending


# torch 2.13 renamed the single-tensor collectives (the old names warn); torch 2.9 has only the old.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def tensor_collectives() -> bool:
    """Whether to reduce-scatter and all-gather single tensors natively: NCCL always can; gloo lacks
    them on some torch versions, so on gloo the same results come from all-reduce and list gathers."""
    return dist.get_backend() == "nccl"


def start_reduce_scatter_mean(stack: torch.Tensor) -> Pending:
    """Begin averaging ``stack`` (first dim a multiple of the world size) over the ranks, keeping only
    this rank's contiguous share of its first dim. NCCL reduce-scatters; gloo (no reduce-scatter on
    some torch versions) all-reduces the whole stack and slices, which gives the same share."""
    rank, world = rank_and_world()
    share = stack.size(0) // world
    if tensor_collectives():
        out = stack.new_empty(share, *stack.shape[1:])
        return Pending(_reduce_scatter(out, stack, async_op=True), lambda: out.div_(world), (stack,))
    work = dist.all_reduce(stack, async_op=True)
    return Pending(work, lambda: stack[rank * share:(rank + 1) * share].div_(world))


def start_all_gather(share: torch.Tensor) -> Pending:
    """Begin gathering every rank's ``share`` into one stack, rank order along the first dim."""
    _, world = rank_and_world()
    out, share = share.new_empty(world * share.size(0), *share.shape[1:]), share.contiguous()
    if tensor_collectives():
        work = _all_gather(out, share, async_op=True)
    else:
        work = dist.all_gather(list(out.chunk(world)), share, async_op=True)
    return Pending(work, lambda: out, (share,))
