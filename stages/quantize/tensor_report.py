"""One row of the per-tensor quantization report: what quantizing one parameter cost and stored.

The manifest keeps the rows as ``metrics.tensors``. A row has every required field; an optional
field (None by default) appears in the manifest only once it has a value: the Hessian errors for a
tensor GPTQ saw, the LQER fields for a corrected matrix, the compressed bytes once measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TensorReport:
    """The report of one parameter, as quantize_state measured it."""

    name: str
    """Parameter name in the state dict."""
    group: str
    """Its tensor group: attention, mlp, embedding or other."""
    kind: str
    """How it is stored: 'rows' (per-row int codes and scales) or 'float' (kept float)."""
    shape: list[int]
    """Its shape."""
    method: str
    """What produced it: 'gptq', 'rtn' (round-to-nearest) or 'float'."""
    bits: int
    """Code width, or the float dtype's width for a kept-float tensor."""
    clip: str | None
    """Row scale rule ('sdclip', 'quantile', 'quantile_search'); None for a kept-float tensor."""
    clip_sigmas: float | None
    """SDClip k after the --target-bytes scale (rounded to 6 places); None unless clip is 'sdclip'."""
    relative_error: float
    """||restored - W|| / ||W|| of the weights the artifact rebuilds (with the LQER correction if any)."""
    predicted_bits_per_weight: float
    """Order-0 entropy of the codes (the dtype's width for a kept-float tensor)."""
    gaussian_bits_per_weight: float | None
    """The Gaussian formula's entropy at this bits and k; None unless clip is 'sdclip'."""
    predicted_bytes: float
    """Entropy-coded bytes of the codes and scales (raw bytes for floats and LQER factors)."""
    stored_bytes: int
    """Raw bytes stored: one byte per code, fp16 scales, LQER factors, or the float tensor."""
    hessian_error: float | None = None
    """tr((W - Q) H (W - Q)^T) / tr(W H W^T) with its calibration Hessian (only where it had one)."""
    rtn_hessian_error: float | None = None
    """The same error of round-to-nearest codes on the same grid (only where it had a Hessian)."""
    lqer_rank: int | None = None
    """Rank of its LQER correction (only for a corrected matrix)."""
    relative_error_before_lqer: float | None = None
    """relative_error without the correction (only for a corrected matrix)."""
    hessian_error_before_lqer: float | None = None
    """hessian_error without the correction (only for a corrected matrix with a Hessian)."""
    compressed_bytes: int | None = None
    """Bytes of its stored tensors compressed on their own (once the stage has measured them)."""

    def to_dict(self) -> dict:
        """The manifest's row: every field in order, less the optional ones that have no value."""
        return {key: value for key, value in asdict(self).items() if key not in OPTIONAL or value is not None}

    @classmethod
    def from_dict(cls, row: dict) -> TensorReport:
        """A row read back from a manifest."""
        return cls(**row)


OPTIONAL = frozenset(field.name for field in fields(TensorReport) if field.default is None)
