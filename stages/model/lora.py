"""Batched LoRA adapters for document test-time training: one adapter per document of a batch.

Row b of every batch the model sees gets its own low-rank delta, (x A_b^T) B_b^T * alpha / r, with
A in R^{r x in} and B in R^{out x r}; B starts at zero, so a fresh adapter is an exact no-op. There
is one set per *virtual layer slot* (a position in ``config.layer_sequence``: a physical layer the
loop visits twice gets two adapters) plus one on the head (docs/TTT_CASEOPS.md section C.3-C.4).
Targets, each fed from a normed input of width model_dim:

- q, k, v: the block's normed input (the attention lane's in a two-lane block), added to the
  c_q / c_k / c_v outputs before QK-norm, RoPE and the gain; v before the value embedding's add;
- o: the same normed input, added to the attention sub-layer's output (in parallel to it);
- mlp: the MLP's normed input (the MLP lane's), added to the MLP output before mlp_scale;
- head: the final-normed hidden state, added to the logits before the softcap.

The model takes a ``LoRASet`` through its own forward (``GPT.forward(..., adapters=)``), so the
adapted forward cannot drift from the plain one. Ships inside the artifact: stdlib and torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .config import ModelConfig

BLOCK_TARGETS = ("q", "k", "v", "o", "mlp")
HEAD = "head"


def output_width(config: ModelConfig, target: str) -> int:
    """Width of the output an adapter on ``target`` adds to."""
    kv_dim = config.num_kv_heads * config.head_dim
    return {"q": config.model_dim, "k": kv_dim, "v": kv_dim, "o": config.model_dim, "mlp": config.model_dim,
            HEAD: config.vocab_size}[target]


class LoRASet(nn.Module):
    """The adapters of ``batch`` documents: per virtual layer slot one per block target, plus the head.

    Every adapter reads a model_dim-wide input, so all the A matrices live in one tensor
    ``a`` (batch, adapters, rank, model_dim): one draw per document fills all of its A's.
    """

    def __init__(self, config: ModelConfig, slots: int, batch: int, rank: int, alpha: float,
                 targets: Sequence[str], device: torch.device | str = "cpu"):
        super().__init__()
        block_targets = [t for t in BLOCK_TARGETS if t in targets]
        keys = [(slot, t) for slot in range(slots) for t in block_targets]
        if HEAD in targets:
            keys.append((slots, HEAD))  # the head is the slot after the last layer
        self.index = {key: j for j, key in enumerate(keys)}
        self.batch, self.rank, self.scale = batch, rank, alpha / rank
        self.bound = 1 / math.sqrt(config.model_dim)
        self.a = nn.Parameter(torch.empty(batch, len(keys), rank, config.model_dim, device=device))
        self.b = nn.ParameterList(
            nn.Parameter(torch.zeros(batch, output_width(config, t), rank, device=device)) for _, t in keys)
        self.head_slot = slots

    def slot(self, slot: int) -> "LoRASlot":
        """The adapters of one virtual layer slot (``self.head_slot``: the head's)."""
        return LoRASlot(self, slot)

    def delta(self, key: tuple[int, str], x: torch.Tensor) -> torch.Tensor:
        """(x A^T) B^T * alpha / r for every row of ``x`` (batch, seq, model_dim) with its own adapter."""
        j = self.index[key]
        a, b = self.a[:, j].to(x.dtype), self.b[j].to(x.dtype)
        return (x @ a.transpose(1, 2)) @ b.transpose(1, 2) * self.scale

    def factors(self, key: tuple[int, str], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x A^T * alpha / r, B) of the adapter on ``key`` for every row, so that its delta is their
        product (the fused head forms it chunk by chunk); None without such an adapter."""
        if key not in self.index:
            return None
        j = self.index[key]
        return (x @ self.a[:, j].to(x.dtype).transpose(1, 2)) * self.scale, self.b[j]

    @torch.no_grad()
    def zero_b(self) -> None:
        """Every adapter back to an exact no-op (A untouched)."""
        for b in self.b:
            b.zero_()

    @torch.no_grad()
    def draw_a(self, row: int, generator: torch.Generator) -> None:
        """Row ``row``'s A matrices ~ U(-1/sqrt(in), 1/sqrt(in)), from ``generator`` alone."""
        self.a[row].uniform_(-self.bound, self.bound, generator=generator)


@dataclass(frozen=True)
class LoRASlot:
    """What one virtual layer (or the head) sees of a ``LoRASet``."""

    adapters: LoRASet
    slot: int

    def add(self, target: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        key = (self.slot, target)
        return out + self.adapters.delta(key, x) if key in self.adapters.index else out


def adapted(out: torch.Tensor, adapters: LoRASlot | None, target: str, x: torch.Tensor) -> torch.Tensor:
    """``out`` plus the delta of the adapter on ``target`` fed ``x``; ``out`` itself without one."""
    return out if adapters is None else adapters.add(target, out, x)
