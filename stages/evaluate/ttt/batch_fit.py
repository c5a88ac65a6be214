"""Documents per batch that fit the device (lora and phased): the adapter step's memory grows with
the documents side by side, and ``ttt.lora.batch_docs`` = 64 at the records' shapes can outgrow a GPU.

The rule, measured rather than assumed: run the adapter step (two steps, so AdamW's state is there
as it is from a batch's second chunk on) at the eval window's width on random tokens and take the
peak bytes it allocated above what was resident before; do it with 1 and 2 documents, extrapolate
along the line through the two largest counts measured so far to the most documents that fit
``HEADROOM * limit``, measure that count, and repeat (up to ``REFINEMENTS`` times: the peak is
the largest of several phases' lines, so a line measured at small counts can be too shallow).
The choice is the largest measured count that fit, at most ``batch_docs`` (at least 1). On
CUDA the peaks are the allocator's (``max_memory_allocated``) and the limit the device's memory;
elsewhere they are counted op by op (stages/model/live_bytes.py) and only ``ttt.lora.memory_limit_gb``
sets a limit. Every rank takes the smallest rank's choice, so all plan the same batches. Ships inside the
artifact: torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from ...model.live_bytes import LiveBytes
from .adapters import A_SEED, BatchAdapters, adapter_step
from .common import requires_grad
from .config import TTTConfig

# Why the 'batch_fit' ledger bucket counts (the lora and phased modes declare it).
BATCH_FIT_NOTE = "document TTT: measuring the adapter step's memory to choose the documents per batch"
HEADROOM = 0.9  # the share of the limit a batch's measured peak may take: the allocator needs the rest
PROBE_DOCS = (1, 2)
REFINEMENTS = 3  # probes after the first two: each at the count the last line predicts


@dataclass(frozen=True)
class BatchFit:
    """Documents per batch, and why."""

    docs: int
    """Documents adapted side by side (at most ``configured``)."""
    configured: int
    """The config's lora.batch_docs."""
    rule: str
    """How ``docs`` was chosen, in words (the eval manifest keeps it)."""
    limit_bytes: int = 0
    """The memory the batches must fit in (0: none)."""
    per_doc_bytes: int = 0
    """Peak bytes each document adds to the adapter step, between the two largest counts measured."""
    fixed_bytes: int = 0
    """The step's peak bytes less per_doc_bytes per document, at the largest count measured."""

    def facts(self) -> dict:
        return {"ttt_batch_docs": self.docs, "ttt_batch_docs_configured": self.configured, "ttt_batch_docs_rule": self.rule, "ttt_memory_limit_bytes": self.limit_bytes,
                "ttt_bytes_per_doc": self.per_doc_bytes, "ttt_fixed_bytes": self.fixed_bytes}


def fit_batch_docs(model: torch.nn.Module, config: TTTConfig, seq_len: int, device: torch.device | str,
                   autocast_dtype: torch.dtype | None) -> BatchFit:
    """The documents per batch the rule allows on ``device`` (see the module docstring)."""
    device = torch.device(device)
    limit = memory_limit(config, device)
    if not limit:
        return BatchFit(config.lora.batch_docs, config.lora.batch_docs, f"configured: no memory limit on {device.type}")
    budget = int(HEADROOM * limit) - resident_bytes(model, device)  # what the step may allocate
    measured = {docs: probe_peak(model, config, docs, seq_len, device, autocast_dtype) for docs in PROBE_DOCS}
    for _ in range(REFINEMENTS):
        guess = extrapolated(measured, budget, config.lora.batch_docs)
        if guess in measured:
            break
        measured[guess] = probe_peak(model, config, guess, seq_len, device, autocast_dtype)
    fitting = [docs for docs, peak in measured.items() if peak <= budget and docs <= config.lora.batch_docs]
    docs = agreed(max(fitting, default=1), device)
    per_doc, high, high_peak = last_line(measured)
    rule = (f"measured: the most documents (of {sorted(measured)}, up to ttt.lora.batch_docs {config.lora.batch_docs}) "
            f"whose adapter step peaked within {HEADROOM:g} x limit less the resident bytes; at least 1; the "
            f"smallest over the ranks")
    return BatchFit(docs, config.lora.batch_docs, rule, limit, round(per_doc), round(high_peak - per_doc * high))


def with_batch_docs(config: TTTConfig, docs: int) -> TTTConfig:
    """``config`` with ``docs`` documents per batch (what the rule chose)."""
    return replace(config, lora=replace(config.lora, batch_docs=docs))


def extrapolated(measured: dict[int, int], budget: int, most: int) -> int:
    """The documents at which the line through the two largest measured counts reaches ``budget``,
    within [1, most]."""
    per_doc, high, high_peak = last_line(measured)
    return max(1, min(most, math.floor(high + (budget - high_peak) / per_doc)))


def last_line(measured: dict[int, int]) -> tuple[float, int, int]:
    """(peak bytes per document, count, its peak) of the line through the two largest counts measured."""
    (low, low_peak), (high, high_peak) = sorted(measured.items())[-2:]
    return max((high_peak - low_peak) / (high - low), 1.0), high, high_peak


def memory_limit(config: TTTConfig, device: torch.device) -> int:
    """Bytes the batches must fit in: ``memory_limit_gb`` when set, else the CUDA device's memory, else 0."""
    if config.lora.memory_limit_gb:
        return int(config.lora.memory_limit_gb * 1e9)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return 0


def resident_bytes(model: torch.nn.Module, device: torch.device) -> int:
    """What is allocated before the step: the allocator's count on CUDA, the model's tensors elsewhere."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    storages = {id(s): s for s in (t.untyped_storage() for t in (*model.parameters(), *model.buffers()))}
    return sum(s.nbytes() for s in storages.values())


def probe_peak(model: torch.nn.Module, config: TTTConfig, docs: int, seq_len: int, device: torch.device,
               autocast_dtype: torch.dtype | None, steps: int = 2) -> int:
    """Peak bytes allocated above the start by ``steps`` adapter steps of ``docs`` rows of ``seq_len``
    random tokens, with throw-away adapters (the base weights are left as they were)."""
    generator = torch.Generator().manual_seed(A_SEED)
    rows = [torch.randint(model.config.vocab_size, (docs, seq_len + 1), generator=generator) for _ in range(steps)]
    adapters = BatchAdapters(model, config, device)
    was_training = model.training
    model.eval()
    with requires_grad(model, False), PeakMeter(device) as meter:
        adapters.reset(list(range(docs)))
        for tokens in rows:
            adapter_step(model, adapters, tokens.to(device), autocast_dtype)
    model.train(was_training)
    return meter.peak


class PeakMeter:
    """``with PeakMeter(device) as m:`` then ``m.peak``: bytes allocated above the start at the block's peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.counter = None if device.type == "cuda" else LiveBytes()
        self.peak = 0

    def __enter__(self) -> "PeakMeter":
        if self.counter is not None:
            self.counter.__enter__()
        else:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.counter is not None:
            self.counter.__exit__(*exc)
            self.peak = self.counter.peak
        else:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start


def agreed(docs: int, device: torch.device) -> int:
    """The smallest ``docs`` over the ranks (``docs`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return docs
    value = torch.tensor([docs], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())
