"""Settings of `golf quantize`: the quantizer, per-group bits and clip widths, calibration, LQER."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..config import check_scoring_window
from ..errors import GolfError
from ..ranges import check_ranges, ranged


@dataclass(frozen=True)
class GroupQuant:
    """Bits and row-scale rule of one tensor group (attention, mlp, embedding, other)."""

    bits: int = ranged(6, ge=2, le=8)
    """Code width: codes lie in [-R, R] with R = 2^(bits-1) - 1, stored one per byte."""
    clip: Literal["sdclip", "quantile", "quantile_search"] = "sdclip"
    """Row scale rule: 'sdclip' (k * std / R, the records), 'quantile' (a quantile of |w| / R, the
    baseline) or 'quantile_search' (per matrix, the quantile of a fixed ladder whose round-to-nearest
    error is smallest: seed 003's int6 export)."""
    clip_sigmas: float = ranged(12.0, gt=0)
    """SDClip k: the row scale is k * std(row) / R, so k sets the step and the entropy."""
    clip_quantile: float = ranged(0.9999984, gt=0.5, le=1)
    """Per-row clip quantile of |w| for clip='quantile' (the baseline's 99.99984th percentile)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class CalibrationConfig:
    """Where the GPTQ Hessians come from. Reading training data counts toward the train budget."""

    source: Literal["train", "generated"] = "train"
    """'train': windows of the training shards; 'generated': text the model samples itself."""
    batches: int = ranged(16, ge=1)
    """Forward passes whose layer inputs are accumulated (the records use 16-64)."""
    batch_tokens: int = ranged(16_384, ge=1)
    """Tokens per calibration batch."""
    seq_len: int | None = ranged(None, ge=1)
    """Window length (None: the training sequence length)."""
    seed: int = ranged(4242, ge=0)
    """Seed of the calibration windows (or of the sampling for 'generated')."""
    temperature: float = ranged(1.0, gt=0)
    """Sampling temperature for 'generated' calibration text."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class QuantizeConfig:
    """How weights are quantized and how the pre/post-quant bpb is measured."""

    method: Literal["gptq", "rtn"] = "gptq"
    """'gptq': error-feedback rounding against calibration Hessians; 'rtn': round-to-nearest."""
    attention: GroupQuant = GroupQuant(bits=6, clip_sigmas=13.0)
    """Attention matrices (q, k, v, output, value projection): int6, k 12.85-13 in the records."""
    mlp: GroupQuant = GroupQuant(bits=6, clip_sigmas=12.0)
    """MLP matrices: int6, k 11.5-12.85 in the records."""
    embedding: GroupQuant = GroupQuant(bits=8, clip_sigmas=20.0)
    """Embedding tables (the tied head included): int7 or int8, k 14-20 in the records."""
    other: GroupQuant = GroupQuant(bits=8, clip_sigmas=20.0)
    """Any other large matrix (BigramHash projection, an untied head): int6 k 12.85 in the records from #1394 on."""
    gate_bits: int = ranged(0, ge=2, le=8, off=0)
    """Attention output gate weights (heads x width): per-row symmetric codes of this width with the
    row's max |w| as its clip, no Hessian (0: kept float like the other control tensors; top: 8)."""
    keep_float_max_numel: int = ranged(65_536, ge=0)
    """Tensors with at most this many elements (and all non-matrices) stay float."""
    control_dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of kept-float control tensors (scales, mixes, gains, skip weights)."""
    other_float_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the other kept-float tensors."""
    damping: float = ranged(0.01, ge=0, lt=1)
    """GPTQ damping: this fraction of mean(diag H) is added to the diagonal."""
    act_order: bool = True
    """GPTQ quantizes columns in order of decreasing diag H (largest activations first)."""
    block_size: int = ranged(128, ge=1)
    """GPTQ columns per block: exact error feedback inside a block, one lazy update after it."""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """Hessian collection (GPTQ only)."""
    lqer_rank: int = ranged(0, ge=0)
    """LQER: rank of the low-rank correction of the quantization error (0: off; the top record: 4)."""
    lqer_top_k: int = ranged(3, ge=0)
    """LQER corrects the k matrices with the largest ||W - Q||_F."""
    lqer_format: Literal["record", "asymmetric"] = "record"
    """LQER storage: 'record' (the top record's: A = U S with one scale, B = Vh with one scale per
    group, signed codes) or 'asymmetric' (sqrt(S) on each side, code * scale + offset per group, both)."""
    lqer_a_bits: int = ranged(2, ge=1, le=8)
    """Bits of the left factor A (the record: int2, codes in [-2, 1])."""
    lqer_b_bits: int = ranged(4, ge=1, le=8)
    """Bits of the right factor B (the record: int4, codes in [-8, 7])."""
    lqer_group: int = ranged(64, ge=1)
    """Consecutive elements per scale group: B's in the record format, both factors' in the asymmetric one."""
    target_bytes: int = ranged(0, ge=0)
    """Choose the clip widths so the packed artifact lands under this many bytes (0: use the k given)."""
    target_codec: Literal["brotli", "lzma", "zstd", "zlib"] = "brotli"
    """Codec of the sections other than the codes' when the target size is verified (pack's default;
    the codes go through pack's default codes_codec, rans)."""
    eval_stride: int | None = ranged(None, ge=1)
    """Scoring stride for the pre/post-quant bpb (None: non-overlapping windows)."""
    eval_seq_len: int | None = ranged(None, ge=1)
    """Scoring window length (None: the training sequence length)."""
    eval_batch_windows: int = ranged(8, ge=1)
    """Windows per forward pass while scoring."""
    eval_tokens: int = ranged(0, ge=0)
    """Score only a prefix of this many val tokens (0: the whole val split)."""
    device: str = "cpu"
    """Where calibration, GPTQ and scoring run: 'cpu', 'cuda' or 'auto' (cuda when available)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        check_scoring_window(self, "eval_seq_len", "eval_tokens", "eval_stride")

    def check_window(self, seq_len: int) -> None:
        """The window rule against the length scoring runs at (``seq_len``: the train run's when
        eval_seq_len is unset, known only once the train folder is read)."""
        check_scoring_window(self, "eval_seq_len", "eval_tokens", "eval_stride", length=seq_len)

    def group(self, name: str) -> GroupQuant:
        """The bits and clip width of a named group."""
        return getattr(self, name)


# Named quantization settings (`golf quantize --scheme NAME`); --set overrides any field after.
#
# - baseline-int8: the naive baseline's export: int8 round-to-nearest, rows clipped at a quantile.
# - rtn-int6: the records' int6/int8 SDClip grid, round-to-nearest (the reference for GPTQ).
# - gptq-int6: the records' export (PR #1776 on): full-Hessian GPTQ on the SDClip grid (the default).
# - gptq-lqer: gptq-int6 plus LQER rank 4 on the 3 worst matrices in the top record's storage (PR #1855:
#   A int2 with one scale per matrix, B int4 with one scale per group of 64).
BASELINE_INT8 = GroupQuant(bits=8, clip="quantile")

SCHEMES: dict[str, QuantizeConfig] = {
    "baseline-int8": QuantizeConfig(method="rtn", attention=BASELINE_INT8, mlp=BASELINE_INT8,
                                    embedding=BASELINE_INT8, other=BASELINE_INT8),
    "rtn-int6": QuantizeConfig(method="rtn"),
    "gptq-int6": QuantizeConfig(),
    "gptq-lqer": QuantizeConfig(lqer_rank=4, lqer_top_k=3, lqer_format="record"),
}
DEFAULT_SCHEME = "gptq-int6"


def get_scheme(name: str, **changes) -> QuantizeConfig:
    if name not in SCHEMES:
        raise GolfError(f"unknown quantization scheme {name!r}; available: {', '.join(SCHEMES)}")
    return replace(SCHEMES[name], **changes)
