"""Training settings: the optimizer, schedule, budgets and data layout, and the run config that holds
them with the model's (the named presets that fill them are in ``presets.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import check_scoring_window
from ..errors import GolfError
from ..model.config import ModelConfig
from ..ranges import ConfigError, check_ranges, ranged


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer, schedule, budgets and data layout of one training run."""

    seed: int = ranged(1337, ge=0)
    """Seed for init and data order."""
    seq_len: int = ranged(1024, ge=1)
    """Tokens per training sequence (doc_packed: the longest stretch attention sees, as in the records)."""
    batch_tokens: int = ranged(524_288, ge=1)
    """Global tokens per optimizer step (all ranks and accumulation steps together)."""
    grad_accum: int = ranged(1, ge=0)
    """Micro-batches per step on each rank (the global batch stays batch_tokens). 0: 8 / world size,
    so a recipe made for 8 GPUs keeps its per-GPU micro-batch on fewer (the baseline's rule)."""
    max_steps: int = ranged(20_000, ge=1)
    """Step budget: training stops after this many optimizer steps."""
    max_seconds: float | None = ranged(600.0, gt=0)
    """Wall-clock budget of the timed loop in seconds (None: no wall-clock cap). Validation pauses the clock."""
    warmdown_frac: float = ranged(0.087, ge=0, le=1)
    """Share of the budget over which LR decays linearly towards 0 (records: 0.667-0.85)."""
    warmdown_steps: int = ranged(0, ge=0)
    """Warm-down length in steps instead of a share (seed 003: 3500): the share is then this over
    the run's projected step count (steps done / progress, as the seed estimates it from its mean
    step time). 0: use warmdown_frac."""
    min_lr: float = ranged(0.0, ge=0, le=1)
    """LR floor as a fraction of the peak: the multiplier is max(warm-down line, min_lr), so the
    line falls to 0 and is cut off at the floor (records: 0, or 0.1 in the top record)."""
    schedule: Literal["auto", "steps", "time"] = "auto"
    """What drives the warm-down: 'steps' (deterministic), 'time' (elapsed / usable seconds, as the
    records do) or 'auto' (whichever budget runs out first)."""
    gptq_reserve_seconds: float = ranged(0.0, ge=0)
    """Seconds kept back from max_seconds for GPTQ calibration on training data (records: 0.5-13)."""
    matrix_lr: float = ranged(0.04, ge=0)
    """Muon learning rate for the 2-D weights."""
    embed_lr: float = ranged(0.05, ge=0)
    """Adam learning rate of the embeddings (token, bigram, value)."""
    head_lr: float = ranged(0.008, ge=0)
    """Adam learning rate of an untied output head."""
    scalar_lr: float = ranged(0.04, ge=0)
    """Adam learning rate of vectors and control tensors (scales, mixes, gains, gates, skip weights)."""
    muon_momentum: float = ranged(0.95, ge=0, lt=1)
    """Muon momentum after warm-up."""
    muon_momentum_start: float = ranged(0.85, ge=0, lt=1)
    """Muon momentum at step 0, warmed linearly to muon_momentum."""
    muon_momentum_warmup_steps: int = ranged(500, ge=0)
    """Steps of the momentum warm-up."""
    muon_ns_steps: int = ranged(5, ge=1)
    """Newton-Schulz iterations per Muon update."""
    muon_coefficients: Literal["stock", "polar_express"] = "stock"
    """Newton-Schulz coefficients: the stock quintic, or Polar Express (one triple per iteration)."""
    muon_row_normalize: bool = False
    """MuonEq-R: normalize each row of the update before Newton-Schulz."""
    muon_weight_decay: float = ranged(0.0, ge=0)
    """Decoupled weight decay of Muon weights: p *= 1 - lr * wd (records: 0.085-0.095)."""
    embed_weight_decay: float = ranged(0.0, ge=0)
    """Decoupled (AdamW) weight decay of the embeddings (records: 0.085)."""
    scalar_weight_decay: float = ranged(0.0, ge=0)
    """Decoupled (AdamW) weight decay of the small tensors (records: 0.02)."""
    adam_beta1: float = ranged(0.9, ge=0, lt=1)
    """Adam beta1."""
    adam_beta2: float = ranged(0.95, ge=0, lt=1)
    """Adam beta2 (records: 0.95; 0.99 in the top record)."""
    adam_eps: float = ranged(1e-8, gt=0)
    """Adam epsilon."""
    grad_clip: float = ranged(0.0, ge=0)
    """Clip the global gradient norm to this value (0: off; records: 0.3)."""
    ema_decay: float = ranged(0.0, ge=0, lt=1)
    """EMA of all weights with this decay, exported instead of the raw weights (0: off; records 0.997/0.9965)."""
    swa_every: int = ranged(0, ge=0)
    """Tight SWA: average the EMA weights every N steps while the LR scale is below swa_lr_scale (0: off)."""
    swa_lr_scale: float = ranged(0.2, ge=0, le=1)
    """Tight SWA collects only below this LR scale."""
    qat_bits: int = ranged(0, ge=2, le=8, off=0)
    """Late QAT: straight-through fake quantization to this many bits (0: off; seed 003: 6)."""
    qat_lr_scale: float = ranged(0.15, ge=0, le=1)
    """Late QAT switches on once the LR scale falls below this."""
    loader: Literal["contiguous", "shuffled", "doc_packed"] = "contiguous"
    """Batches from contiguous spans in shard order (baseline), shuffled windows (seeded), or doc_packed:
    the stream cut into rows of pack_tokens, attention split at BOS and every seq_len tokens (the #1667
    lineage's varlen batches; needs model.doc_mask)."""
    pack_tokens: int = ranged(0, ge=1, off=0)
    """doc_packed: tokens per packed row, one varlen sequence each. 0: batch_tokens / 8, the records'
    per-GPU micro-batch (98,304)."""
    compile: bool = False
    """torch.compile the training loss (worth it on CUDA; the records all compile)."""
    warmup_steps: int = ranged(0, ge=0)
    """Untimed warm-up steps on random tokens before the timed loop (compile and allocator costs);
    weights, optimizer state and averages are restored afterwards (records: ~20 with and without looping)."""
    val_every: int = ranged(0, ge=0)
    """Validate every N steps with the clock paused (0: only at the end)."""
    val_tokens: int = ranged(0, ge=0)
    """Val tokens used by in-training validation (0: the whole val split)."""
    val_batch_windows: int = ranged(8, ge=1)
    """Sequences per forward pass during validation."""
    checkpoint_every: int = ranged(0, ge=0)
    """Save a resumable checkpoint (weights, optimizer, loader, averages) every N steps (0: off)."""
    log_every: int = ranged(50, ge=1)
    """Log a train-loss line every N steps."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        check_ranges(self)
        self._check_packing()
        row = "pack_tokens" if self.loader == "doc_packed" else "seq_len"
        if self.batch_tokens % (self.row_tokens * max(1, self.grad_accum)):
            raise ConfigError("batch_tokens", f"must be a multiple of {row} * grad_accum "
                                              f"({self.row_tokens} * {max(1, self.grad_accum)}), got {self.batch_tokens}")
        if self.max_seconds is not None and self.gptq_reserve_seconds >= self.max_seconds:
            raise ConfigError("gptq_reserve_seconds", f"must be below max_seconds {self.max_seconds:g}, "
                                                      f"got {self.gptq_reserve_seconds:g}")
        if self.schedule == "time" and self.max_seconds is None:
            raise ConfigError("schedule", "'time' needs a wall-clock budget: set max_seconds")
        check_scoring_window(self, "seq_len", "val_tokens")

    def _check_packing(self) -> None:
        if self.pack_tokens and self.loader != "doc_packed":
            raise ConfigError("pack_tokens", f"only applies to loader 'doc_packed' (this run's loader is '{self.loader}')")
        if self.loader == "doc_packed" and not self.pack_tokens and self.batch_tokens % REFERENCE_WORLD_SIZE:
            raise ConfigError("pack_tokens", f"0 takes batch_tokens / {REFERENCE_WORLD_SIZE}, but batch_tokens "
                                             f"{self.batch_tokens} is not a multiple of {REFERENCE_WORLD_SIZE}: set it")

    @property
    def row_tokens(self) -> int:
        """Tokens per batch row: a packed row for doc_packed, else one sequence."""
        if self.loader != "doc_packed":
            return self.seq_len
        return self.pack_tokens or self.batch_tokens // REFERENCE_WORLD_SIZE


REFERENCE_WORLD_SIZE = 8


def resolve_grad_accum(config: TrainConfig, world_size: int) -> int:
    """Micro-batches per rank per step; refuses a split that does not divide the global batch."""
    accum = config.grad_accum or max(1, REFERENCE_WORLD_SIZE // world_size)
    if config.batch_tokens % (config.row_tokens * accum * world_size):
        raise GolfError(f"batch_tokens {config.batch_tokens} does not split into {world_size} ranks x {accum} "
                         f"micro-batches of whole {config.row_tokens}-token rows")
    return accum


@dataclass(frozen=True)
class RunConfig:
    """Everything `golf train` resolves before it starts: the model and the training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimizer, schedule and budgets."""

    def __post_init__(self) -> None:
        if self.train.loader == "doc_packed" and not self.model.doc_mask:
            raise ConfigError("train.loader", "'doc_packed' needs model.doc_mask=true: a packed row holds many "
                                              "documents, and without the mask they attend to each other")
