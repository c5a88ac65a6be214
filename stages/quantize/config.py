"""Settings of `golf quantize`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class QuantizeConfig:
    """How weights are quantized and how the pre/post-quant bpb is measured."""

    method: Literal["rtn_int8"] = "rtn_int8"
    """Quantizer: per-row int8 round-to-nearest (the baseline's export)."""
    clip_quantile: float = 0.9999984
    """Per-row clip at this quantile of |w| (the baseline's 99.99984th percentile)."""
    keep_float_max_numel: int = 65_536
    """Tensors with at most this many elements (and all non-matrices) stay float."""
    control_dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of kept-float control tensors (scales, mixes, gains, skip weights)."""
    other_float_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the other kept-float tensors."""
    eval_stride: int | None = None
    """Scoring stride for the pre/post-quant bpb (None: non-overlapping windows)."""
    eval_seq_len: int | None = None
    """Scoring window length (None: the training sequence length)."""
    eval_batch_windows: int = 8
    """Windows per forward pass while scoring."""
    eval_tokens: int = 0
    """Score only a prefix of this many val tokens (0: the whole val split)."""
    device: str = "cpu"
    """Where the pre/post-quant scoring runs: 'cpu', 'cuda' or 'auto' (cuda when available)."""

    def __post_init__(self) -> None:
        if not 0.5 < self.clip_quantile <= 1.0:
            raise ValueError("clip_quantile must be in (0.5, 1]")
