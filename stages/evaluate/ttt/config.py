"""The TTT settings: which mode, and each mode's hyperparameters in a section of its own, at the
records' values (``ttt.chunk_sgd.lr``, ``ttt.lora.rank``, ``ttt.phased.global_lr``).

Chunk SGD defaults are those of records #1413/#1477/#1493 (docs/TTT_CASEOPS.md section B.1).
Document LoRA and the phased global SGD default to the top record's code defaults (sections C,
D and G.3: rank 96, alpha 144, AdamW betas (0, 0.999), weight decay 1.0, warm-start A, 3 phases
over 2,000 documents); each preset carries its own record's values (stages/train/presets.py).
The phased mode reads the lora section too (its documents are scored by document LoRA).
Ships inside the artifact (stdlib and ``ranges`` only), so the shipped code checks the config it
runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal, get_args

from ...ranges import ConfigError, check_ranges, ranged

ModeName = Literal["none", "chunk-sgd", "lora", "phased"]
LoRATarget = Literal["q", "k", "v", "o", "mlp", "head"]


@dataclass(frozen=True)
class ChunkSGDConfig:
    """chunk-sgd: score a chunk of the stream, then SGD of every weight on it (#1413/#1477/#1493)."""

    chunk_tokens: int = ranged(32768, ge=1)
    """Targets per chunk: each chunk is scored, then (unless last) trained on."""
    lr: float = ranged(0.005, ge=0)
    """Peak SGD learning rate, cosine-decayed over chunks to 0 at the last one (0: no learning)."""
    momentum: float = ranged(0.9, ge=0, lt=1)
    """SGD momentum; the buffer carries over from chunk to chunk (one optimizer for the whole eval)."""
    epochs: int = ranged(3, ge=0)
    """Passes over each scored chunk (0: no learning)."""
    batch_seqs: int = ranged(32, ge=1)
    """Training sequences (of the eval window length) per optimizer step, over all ranks."""
    grad_clip: float = ranged(1.0, gt=0, off=0)
    """Clip the gradient norm over all trained parameters to this (0: no clipping)."""
    freeze_blocks: int = ranged(0, ge=0)
    """Leave the first this many blocks untrained (0: train every weight, as the records do)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class LoRAConfig:
    """lora (and phased): per-document LoRA adapters, one AdamW step per scored chunk (#1530/#1667)."""

    chunk: int = ranged(48, ge=1)
    """Predictions of a document scored per step, each step then trains on them (48 since #1626)."""
    batch_docs: int = ranged(64, ge=1)
    """Documents adapted side by side, each with its own adapters (batches of similar length)."""
    rank: int = ranged(96, ge=1)
    """Adapter rank r."""
    alpha: float = ranged(144.0, gt=0)
    """The adapter's output is scaled by alpha / rank (#1767)."""
    targets: tuple[LoRATarget, ...] = ("q", "k", "v", "o", "mlp", "head")
    """Where adapters go: q, k, v, o (attention, from the block's normed input), mlp, head."""
    lr: float = ranged(1e-4, ge=0)
    """AdamW learning rate (0: no learning)."""
    beta1: float = ranged(0.0, ge=0, lt=1)
    """AdamW beta1 (0: no first-moment smoothing, as the records)."""
    beta2: float = ranged(0.999, ge=0, lt=1)
    """AdamW beta2 (top: 0.99)."""
    eps: float = ranged(1e-10, gt=0)
    """AdamW epsilon."""
    weight_decay: float = ranged(1.0, ge=0)
    """AdamW weight decay (top: 0.5)."""
    memory_limit_gb: float = ranged(0.0, ge=0)
    """Device memory (GB, 10^9 bytes) the document batches must fit in: documents per batch become the
    most (up to batch_docs) whose adapter step fits (batch_fit.py). 0: the CUDA device's own memory
    on CUDA, no limit elsewhere (batch_docs stands)."""
    warm_start_a: bool = True
    """Keep the A matrices from one batch of documents to the next (B and the optimizer state are
    reset either way, so each document starts from a zero delta; #1767). Off: documents are independent."""

    def __post_init__(self) -> None:
        check_ranges(self)
        unknown = [t for t in self.targets if t not in get_args(LoRATarget)]
        if unknown:
            raise ConfigError("targets", f"each must be one of {', '.join(get_args(LoRATarget))}, got {unknown[0]!r}")


@dataclass(frozen=True)
class PhasedConfig:
    """phased: lora plus global SGD phases of the base weights on already-scored documents (#1610 lineage, top)."""

    docs: int = ranged(2000, ge=0)
    """Documents (in scoring order) the global SGD phases train on in total (top: 2500)."""
    phases: int = ranged(3, ge=1)
    """Global SGD phases; phase k trains on the first docs * (k + 1) / phases scored documents."""
    global_lr: float = ranged(0.001, ge=0)
    """Peak SGD learning rate of each phase, cosine over its chunks (0: no global learning)."""
    global_momentum: float = ranged(0.9, ge=0, lt=1)
    """SGD momentum (a fresh optimizer each phase)."""
    global_epochs: int = ranged(1, ge=0)
    """Passes over each phase's documents."""
    global_chunk_tokens: int = ranged(32768, ge=1)
    """Tokens per global SGD chunk (one learning-rate step each; the last chunk is not trained)."""
    global_batch_seqs: int = ranged(32, ge=1)
    """Training sequences per optimizer step, over all ranks."""
    global_grad_clip: float = ranged(1.0, gt=0, off=0)
    """Clip the global gradient norm to this (0: no clipping)."""
    global_doc_mask: bool = True
    """Attention stays inside each document while training on the packed documents."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class TTTConfig:
    """Test-time training during eval (score first, then adapt on the scored tokens)."""

    mode: ModeName = "none"
    """'none' (plain scoring); 'chunk-sgd' (score a chunk of the stream, then SGD on it; #1413/#1477/#1493);
    'lora' (per-document LoRA: score a chunk of a document, then one AdamW step on it; #1530/#1667);
    'phased' ('lora' plus global SGD of the base weights on already-scored documents; #1610 lineage, top)."""
    chunk_sgd: ChunkSGDConfig = field(default_factory=ChunkSGDConfig)
    """The chunk-sgd mode's settings."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The document LoRA settings of the lora and phased modes."""
    phased: PhasedConfig = field(default_factory=PhasedConfig)
    """The phased mode's global SGD phases (its LoRA is the lora section)."""

    # The flat keys of golf before the sections (old manifests, old --set lines): refused by
    # stages/config.py with the key that replaced them.
    RENAMED: ClassVar[dict[str, str]] = {
        **{key: f"chunk_sgd.{key}" for key in ("chunk_tokens", "lr", "momentum", "epochs", "batch_seqs",
                                                "grad_clip", "freeze_blocks")},
        **{f"lora_{key}": f"lora.{key}" for key in ("chunk", "batch_docs", "rank", "alpha", "targets", "lr", "beta1",
                                                     "beta2", "eps", "weight_decay", "warm_start_a")},
        "memory_limit_gb": "lora.memory_limit_gb", "phase_docs": "phased.docs", "phases": "phased.phases",
        **{key: f"phased.{key}" for key in ("global_lr", "global_momentum", "global_epochs", "global_chunk_tokens",
                                            "global_batch_seqs", "global_grad_clip", "global_doc_mask")},
    }

    def __post_init__(self) -> None:
        if self.mode not in get_args(ModeName):
            raise ConfigError("mode", f"must be one of {', '.join(get_args(ModeName))}, got {self.mode!r}")
        if not self.lora.targets and self.mode in ("lora", "phased"):  # no adapter: nothing to train
            raise ConfigError("lora.targets", f"needs at least one of {', '.join(get_args(LoRATarget))} "
                              f"for ttt.mode {self.mode}, got none")

    @classmethod
    def from_json(cls, data: dict) -> "TTTConfig":
        """The config from its dict form (``to_dict``, JSON): each section rebuilt (a missing one, or
        field, takes its default), JSON's lists back to tuples."""
        sections = {f.name: f.default_factory for f in fields(cls) if f.name != "mode"}
        values = dict(data)
        for name, section in data.items():
            if name in sections:
                try:
                    values[name] = sections[name](**{key: tuple(value) if isinstance(value, list) else value
                                                     for key, value in section.items()})
                except ConfigError as exc:
                    raise exc.under(name) from None
        return cls(**values)
