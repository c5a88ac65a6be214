"""How `golf eval` scores an artifact: windows, device, test-time training, compiling and the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..config import check_scoring_window
from ..ranges import ConfigError, check_ranges, ranged
from .budget import OverBudget
from .ttt.config import TTTConfig

CompileSwitch = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class EvalConfig:
    """How the artifact is scored."""

    stride: int | None = ranged(None, ge=1)
    """Sliding-window stride (None: non-overlapping windows; the records use 64 with seq 2048)."""
    seq_len: int | None = ranged(None, ge=1)
    """Window length (None: the training sequence length recorded in the artifact)."""
    batch_windows: int = ranged(8, ge=1)
    """Windows per forward pass."""
    eval_tokens: int = ranged(0, ge=0)
    """Score only a prefix of this many val tokens (0: the whole val split)."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto' (cuda when available)."""
    use_sidecar: bool = True
    """Count bytes from the val byte sidecar when the data has one (audited exactly first; else from the
    tokenizer's table). CaseOps data is scored only with its sidecar."""
    ttt: TTTConfig = field(default_factory=TTTConfig)
    """Test-time training: mode and hyperparameters (ttt.mode 'none': plain scoring)."""
    compare_no_ttt: bool = False
    """Also score the same windows without adaptation first (val_bpb_no_ttt; a diagnostic, not budgeted)."""
    warmup: bool = True
    """Warm the TTT mode (or a compiled scoring forward) up before scoring: its shapes, random tokens only,
    weights unchanged, compiling done there (ledger 'warmup')."""
    compile: CompileSwitch = "auto"
    """torch.compile (fullgraph) the scoring forward and each TTT mode's adapted forward and loss, at static
    shapes (the LoRA width dynamic): 'on', 'off', or 'auto' (on for CUDA, off on CPU, where it would not pay)."""
    compile_backend: str = "inductor"
    """The torch.compile backend when compiling ('inductor'; 'aot_eager' traces the same graphs without
    generating kernels: the CPU tests)."""
    budget_s: float = ranged(600.0, gt=0)
    """Evaluation budget in seconds: every second from the stage start (load, warm-up, scoring, adaptation,
    global SGD phases) but the --compare-no-ttt diagnostic. Conservative: the records timed only their loop."""
    over_budget: OverBudget = "stop-adapting"
    """Past the budget: 'stop-adapting' (score every remaining target with no more updates; the metrics say
    where it stopped) or 'fail' (stop at the first check past it, one error line, nothing written)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        check_scoring_window(self, "seq_len", "eval_tokens", "stride")
        if self.over_budget not in get_args(OverBudget):
            allowed = ", ".join(get_args(OverBudget))
            raise ConfigError("over_budget", f"must be one of {allowed}, got {self.over_budget!r}")
        if self.compile not in get_args(CompileSwitch):
            raise ConfigError("compile", f"must be one of {', '.join(get_args(CompileSwitch))}, got {self.compile!r}")
        if self.compare_no_ttt and self.ttt.mode == "none":
            raise ConfigError("compare_no_ttt", "needs a test-time training mode (ttt.mode is 'none')")

    def check_window(self, seq_len: int) -> None:
        """The window rule against the length scoring runs at (``seq_len``: the artifact's
        train_seq_len when seq_len is unset, known only once the artifact is read)."""
        check_scoring_window(self, "seq_len", "eval_tokens", "stride", length=seq_len)
