"""The eval's forwards, eager or compiled with ``torch.compile(fullgraph=True)``: the per-target
NLL every scorer reads (plain windows, and each document's LoRA-adapted rows) and the mean loss
a TTT training step takes (chunk SGD, the phased global SGD).

Compiled, each is one graph with no break (the top record compiles its eval model with
fullgraph=True and its LoRA forward apart). The warm-ups run them at the shapes the timed pass
uses, so compiling lands in the eval ledger's 'warmup' bucket and the pass recompiles nothing:

- plain windows: every batch holds ``batch_windows`` rows (the last one padded, its extra rows
  dropped after the forward), static;
- LoRA rows: ``lora_batch_docs`` rows (a short batch padded with empty rows that score and
  train nothing); the width, which grows chunk by chunk, is marked dynamic (as the record's
  ``dynamic=True``) and right-padded to a multiple of ``WIDTH_MULTIPLE`` (causal attention keeps
  the padding out of every scored position);
- training rows: a fixed count per step, short steps padded with rows whose targets are
  ``IGNORE`` (the loss's mean skips them, so the step is the same).

One compiled function per (function, backend) per process, so the warm-up and the timed pass
share their graphs. Ships inside the artifact: stdlib and torch only.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

WIDTH_MULTIPLE = 8  # LoRA rows are padded to a multiple of this: never width 1 (which would specialize)
IGNORE = -100  # cross-entropy's ignore_index: a padded training row's targets

_COMPILED: dict[tuple[Callable, str], Callable] = {}


def token_nll(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, **forward) -> torch.Tensor:
    """Per-target NLL (float32, shaped like ``targets``) of the model's own forward; ``forward``
    goes to the model (document TTT passes its adapters). A model with its own ``nll`` (the GPT:
    head and loss fused, never every logit at once) computes it; any other model returns logits."""
    if hasattr(model, "nll"):
        return model.nll(inputs, targets, **forward)
    logits = model(inputs, **forward)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def mean_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, **forward) -> torch.Tensor:
    """The model's own mean training loss (targets ``IGNORE`` left out of the mean)."""
    return model.loss(inputs, targets, **forward)


def compiled(fn: Callable, backend: str | None) -> Callable:
    """``fn(model, inputs, targets, **forward)`` compiled whole (fullgraph) by ``backend``
    ('inductor'; 'aot_eager' traces without generating kernels), the same ``CompiledForward`` each
    time; ``fn`` itself for None."""
    if backend is None:
        return fn
    if (fn, backend) not in _COMPILED:
        _COMPILED[fn, backend] = CompiledForward(torch.compile(fn, backend=backend, fullgraph=True))
    return _COMPILED[fn, backend]


class CompiledForward:
    """A compiled ``fn(model, inputs, targets, **forward)`` fed contiguous inputs: strides are
    guarded, so a view (``rows[:, :-1]``) and a padded copy of the same shape would compile twice."""

    def __init__(self, graph: Callable):
        self.graph = graph

    def __call__(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 dynamic_width: bool = False, **forward) -> torch.Tensor:
        """``dynamic_width``: the width (dim 1) varies from call to call, one graph serves them all."""
        inputs, targets = inputs.contiguous(), targets.contiguous()
        if dynamic_width:
            torch._dynamo.mark_dynamic(inputs, 1)
            torch._dynamo.mark_dynamic(targets, 1)
        return self.graph(model, inputs, targets, **forward)


def forget_compiled() -> None:
    """Drop every compiled function and dynamo's caches (tests that count compilations)."""
    _COMPILED.clear()
    torch._dynamo.reset()


def pad_rows(rows: torch.Tensor, count: int, fill: int) -> torch.Tensor:
    """``rows`` (n, ...) followed by rows of ``fill`` up to ``count`` rows (n <= count)."""
    if len(rows) >= count:
        return rows
    return torch.cat([rows, rows.new_full((count - len(rows), *rows.shape[1:]), fill)])


def padded_width(width: int) -> int:
    """``width`` rounded up to a multiple of ``WIDTH_MULTIPLE``."""
    return -(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
