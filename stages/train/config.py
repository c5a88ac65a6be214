"""Training settings and the named presets (each says where its numbers come from)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GolfError
from ..model.config import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer, schedule, budgets and data layout of one training run."""

    seed: int = 1337
    """Seed for init and data order."""
    seq_len: int = 1024
    """Tokens per training sequence."""
    batch_tokens: int = 524_288
    """Global tokens per optimizer step (all ranks and accumulation steps together)."""
    grad_accum: int = 1
    """Micro-batches per step on each rank (the global batch stays batch_tokens)."""
    max_steps: int = 20_000
    """Step budget: training stops after this many optimizer steps."""
    max_seconds: float = 600.0
    """Wall-clock budget of the timed loop in seconds (0: none). Validation pauses the clock."""
    warmdown_frac: float = 0.087
    """Share of the budget (steps or seconds, whichever runs out first) over which LR decays linearly to 0."""
    matrix_lr: float = 0.04
    """Muon learning rate for the 2-D block weights."""
    embed_lr: float = 0.05
    """Adam learning rate of the (tied) embedding."""
    head_lr: float = 0.008
    """Adam learning rate of an untied output head."""
    scalar_lr: float = 0.04
    """Adam learning rate of vectors and control tensors (scales, mixes, gains, skip weights)."""
    muon_momentum: float = 0.95
    """Muon momentum after warm-up."""
    muon_momentum_start: float = 0.85
    """Muon momentum at step 0, warmed linearly to muon_momentum."""
    muon_momentum_warmup_steps: int = 500
    """Steps of the momentum warm-up."""
    muon_ns_steps: int = 5
    """Newton-Schulz iterations per Muon update."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: off)."""
    val_every: int = 0
    """Validate every N steps with the clock paused (0: only at the end)."""
    val_tokens: int = 0
    """Val tokens used by in-training validation (0: the whole val split)."""
    val_batch_windows: int = 8
    """Sequences per forward pass during validation."""
    log_every: int = 50
    """Log a train-loss line every N steps."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_tokens % (self.seq_len * self.grad_accum):
            raise ValueError(f"batch_tokens {self.batch_tokens} must be a multiple of seq_len * grad_accum")
        if not 0 <= self.warmdown_frac <= 1:
            raise ValueError("warmdown_frac must be in [0, 1]")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")


@dataclass(frozen=True)
class RunConfig:
    """Everything `golf train` resolves before it starts: the model and the training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimizer, schedule and budgets."""


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    config: RunConfig


PRESETS: dict[str, Preset] = {
    "baseline": Preset(
        "baseline",
        "The challenge's naive baseline (REFERENCE section 5): 9x512, sp1024, Muon 0.04, "
        "524,288 tokens/step at seq 1024, 600 s; warm-down ~1200 of ~13,780 steps (0.087).",
        RunConfig(ModelConfig(), TrainConfig()),
    ),
    "tiny": Preset(
        "tiny",
        "The baseline architecture shrunk for 2 CPU cores and the embedded news corpus: "
        "4x128, seq 256, 4,096 tokens/step, a step budget for reproducible runs.",
        RunConfig(
            ModelConfig(vocab_size=1024, num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2),
            TrainConfig(
                seq_len=256,
                batch_tokens=4096,
                max_steps=500,
                max_seconds=300.0,
                warmdown_frac=0.3,
                muon_momentum_warmup_steps=100,
                val_tokens=65_536,
                log_every=50,
                device="cpu",
            ),
        ),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise GolfError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
