"""The TTT settings: which mode, and each mode's hyperparameters at the records' values.

Chunk SGD defaults are those of records #1413/#1477/#1493 (docs/TTT_CASEOPS.md section B.1).
Document LoRA and the phased global SGD default to the top record's code defaults (sections C,
D and G.3: rank 96, alpha 144, AdamW betas (0, 0.999), weight decay 1.0, warm-start A, 3 phases
over 2,000 documents); each preset carries its own record's values (stages/train/presets.py).
Ships inside the artifact (stdlib and ``ranges`` only), so the shipped code checks the config it
runs with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ...ranges import ConfigError, check_ranges, ranged

TTTMode = Literal["none", "chunk-sgd", "lora", "phased"]
LoRATarget = Literal["q", "k", "v", "o", "mlp", "head"]


@dataclass(frozen=True)
class TTTConfig:
    """Test-time training during eval (score first, then adapt on the scored tokens)."""

    mode: TTTMode = "none"
    """'none' (plain scoring); 'chunk-sgd' (score a chunk of the stream, then SGD on it; #1413/#1477/#1493);
    'lora' (per-document LoRA: score a chunk of a document, then one AdamW step on it; #1530/#1667);
    'phased' ('lora' plus global SGD of the base weights on already-scored documents; #1610 lineage, top)."""

    # ---- chunk-sgd ----
    chunk_tokens: int = ranged(32768, ge=1)
    """chunk-sgd: targets per chunk: each chunk is scored, then (unless last) trained on."""
    lr: float = ranged(0.005, ge=0)
    """chunk-sgd: peak SGD learning rate, cosine-decayed over chunks to 0 at the last one (0: no learning)."""
    momentum: float = ranged(0.9, ge=0, lt=1)
    """chunk-sgd: SGD momentum; the buffer carries over from chunk to chunk (one optimizer for the whole eval)."""
    epochs: int = ranged(3, ge=0)
    """chunk-sgd: passes over each scored chunk (0: no learning)."""
    batch_seqs: int = ranged(32, ge=1)
    """chunk-sgd: training sequences (of the eval window length) per optimizer step, over all ranks."""
    grad_clip: float = ranged(1.0, gt=0, off=0)
    """chunk-sgd: clip the gradient norm over all trained parameters to this (0: no clipping)."""
    freeze_blocks: int = ranged(0, ge=0)
    """chunk-sgd: leave the first this many blocks untrained (0: train every weight, as the records do)."""

    # ---- lora (and phased) ----
    lora_chunk: int = ranged(48, ge=1)
    """lora: predictions of a document scored per step, each step then trains on them (48 since #1626)."""
    lora_batch_docs: int = ranged(64, ge=1)
    """lora: documents adapted side by side, each with its own adapters (batches of similar length)."""
    lora_rank: int = ranged(96, ge=1)
    """lora: adapter rank r."""
    lora_alpha: float = ranged(144.0, gt=0)
    """lora: the adapter's output is scaled by alpha / rank (#1767)."""
    lora_targets: tuple[LoRATarget, ...] = ("q", "k", "v", "o", "mlp", "head")
    """lora: where adapters go: q, k, v, o (attention, from the block's normed input), mlp, head."""
    lora_lr: float = ranged(1e-4, ge=0)
    """lora: AdamW learning rate (0: no learning)."""
    lora_beta1: float = ranged(0.0, ge=0, lt=1)
    """lora: AdamW beta1 (0: no first-moment smoothing, as the records)."""
    lora_beta2: float = ranged(0.999, ge=0, lt=1)
    """lora: AdamW beta2 (top: 0.99)."""
    lora_eps: float = ranged(1e-10, gt=0)
    """lora: AdamW epsilon."""
    lora_weight_decay: float = ranged(1.0, ge=0)
    """lora: AdamW weight decay (top: 0.5)."""
    memory_limit_gb: float = ranged(0.0, ge=0)
    """lora: device memory (GB, 10^9 bytes) the document batches must fit in: documents per batch become the
    most (up to lora_batch_docs) whose adapter step fits (batch_fit.py). 0: the CUDA device's own memory
    on CUDA, no limit elsewhere (lora_batch_docs stands)."""
    lora_warm_start_a: bool = True
    """lora: keep the A matrices from one batch of documents to the next (B and the optimizer state are
    reset either way, so each document starts from a zero delta; #1767). Off: documents are independent."""

    # ---- phased ----
    phase_docs: int = ranged(2000, ge=0)
    """phased: documents (in scoring order) the global SGD phases train on in total (top: 2500)."""
    phases: int = ranged(3, ge=1)
    """phased: global SGD phases; phase k trains on the first phase_docs * (k + 1) / phases scored documents."""
    global_lr: float = ranged(0.001, ge=0)
    """phased: peak SGD learning rate of each phase, cosine over its chunks (0: no global learning)."""
    global_momentum: float = ranged(0.9, ge=0, lt=1)
    """phased: SGD momentum (a fresh optimizer each phase)."""
    global_epochs: int = ranged(1, ge=0)
    """phased: passes over each phase's documents."""
    global_chunk_tokens: int = ranged(32768, ge=1)
    """phased: tokens per global SGD chunk (one learning-rate step each; the last chunk is not trained)."""
    global_batch_seqs: int = ranged(32, ge=1)
    """phased: training sequences per optimizer step, over all ranks."""
    global_grad_clip: float = ranged(1.0, gt=0, off=0)
    """phased: clip the global gradient norm to this (0: no clipping)."""
    global_doc_mask: bool = True
    """phased: attention stays inside each document while training on the packed documents."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.mode not in get_args(TTTMode):
            raise ConfigError("mode", f"must be one of {', '.join(get_args(TTTMode))}, got {self.mode!r}")
        unknown = [t for t in self.lora_targets if t not in get_args(LoRATarget)]
        if unknown:
            raise ConfigError("lora_targets", f"each must be one of {', '.join(get_args(LoRATarget))}, got {unknown[0]!r}")
        if not self.lora_targets and self.mode in ("lora", "phased"):  # no adapter: nothing to train
            raise ConfigError("lora_targets", f"needs at least one of {', '.join(get_args(LoRATarget))} "
                              f"for ttt.mode {self.mode}, got none")
