"""The adapters of document LoRA TTT (lora and phased) and their optimizer: one LoRA adapter per
document in every virtual layer slot and on the head (stages/model/lora.py), reset for each batch
of documents, and one adapter step (the batch fit measures it, batch_fit.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...model.lora import LoRASet
from ...scoring.scorer import WindowScorer, model_nll
from .config import TTTConfig
from .documents import Document

# A document's A matrices come from a generator seeded with this plus its stream position: a run
# reproduces, and (without warm start) a document's scores depend on its own tokens alone.
A_SEED = 0x5EED_0000


class BatchAdapters:
    """The LoRA adapters and AdamW of the batch of documents in flight, one adapter per document
    in every virtual layer slot and on the head (stages/model/lora.py); reset for each batch.
    Compiled (``rows``: lora.batch_docs), every batch has ``rows`` adapters, a short batch's extra
    ones zero (they see only padding rows)."""

    def __init__(self, model: torch.nn.Module, config: TTTConfig, device: torch.device | str, rows: int = 0):
        self.model_config, self.config, self.device = model.config, config, torch.device(device)
        self.slots = len(model.config.layer_sequence(model.looping))
        self.rows = rows
        self.docs = 0  # documents of the batch in flight
        self.lora: LoRASet | None = None
        self.optimizer: torch.optim.AdamW | None = None

    def start_batch(self, docs: Sequence[Document]) -> None:
        """Adapters for ``docs``, row b for docs[b]; see ``reset``."""
        self.reset([A_SEED + doc.start for doc in docs])

    def reset(self, seeds: list[int]) -> None:
        """B <- 0 and a fresh AdamW (no moments, step 0), so every document starts from the base
        model; row b's A drawn from ``seeds[b]``, unless warm start keeps the last batch's A (a batch
        of another size gets new adapters, its A drawn)."""
        config = self.config
        reuse = self.lora is not None and self.docs == len(seeds)
        if reuse:
            self.lora.zero_b()
        else:
            self.lora = LoRASet(self.model_config, self.slots, max(self.rows, len(seeds)), config.lora.rank,
                                config.lora.alpha, config.lora.targets, self.device)
            with torch.no_grad():
                self.lora.a[len(seeds):].zero_()
        self.docs = len(seeds)
        if not (reuse and config.lora.warm_start_a):
            for row, seed in enumerate(seeds):
                self.lora.draw_a(row, torch.Generator(self.device).manual_seed(seed))
        self.optimizer = torch.optim.AdamW(
            self.lora.parameters(), lr=config.lora.lr, betas=(config.lora.beta1, config.lora.beta2),
            eps=config.lora.eps, weight_decay=config.lora.weight_decay, fused=self.device.type == "cuda")

    def rebuild(self) -> None:
        """Drop the adapters, so the next batch draws fresh A even with warm start (after a global
        phase has changed the base model the A's were learned on)."""
        self.lora = self.optimizer = None
        self.docs = 0

    def step(self, loss: torch.Tensor) -> None:
        """One AdamW step on ``loss`` over the adapters (the base takes no gradient: ``requires_grad``)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def batch_adapters(model: torch.nn.Module, config: TTTConfig, scorer: WindowScorer) -> BatchAdapters:
    """The pass's ``BatchAdapters``: compiled, every batch padded to lora.batch_docs documents."""
    rows = 0 if scorer.compile_backend is None else config.lora.batch_docs
    return BatchAdapters(model, config, scorer.device, rows)


def adapter_step(model: torch.nn.Module, adapters: BatchAdapters, tokens: torch.Tensor,
                 autocast_dtype: torch.dtype | None) -> None:
    """One eager adapter step at the scoring loop's cost on ``tokens`` (rows of inputs, then the next
    token): every target's NLL through the adapters, the rows' mean NLLs summed, backward, AdamW
    (the documents-per-batch rule measures it, batch_fit.py)."""
    nll = model_nll(model, tokens[:, :-1], tokens[:, 1:], autocast_dtype, adapters=adapters.lora)
    adapters.step(nll.mean(dim=1).sum())
