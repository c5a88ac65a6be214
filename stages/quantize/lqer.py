"""LQER: a low-rank correction of the quantization error, stored in a few bits.

After GPTQ, E = W - Q s. For the matrices with the largest ||E||_F a rank-r SVD E = U S Vh gives
a correction A @ B stored in two low-bit factors (docs/REFERENCE.md sections 6 and 8: rank 4, the
top 3 matrices). Two storage formats:

- ``record`` (the top record's, the default): A = U_r S_r (rows x r) in signed ``a_bits`` codes
  with ONE fp16 scale for the whole matrix, B = Vh_r (r x cols) in signed ``b_bits`` codes with
  one fp16 scale per group of ``group`` consecutive elements of the flattened B. A scale is
  max|x| / (2^(bits-1) - 1/2) and a code clamp(round(x / scale), -2^(bits-1), 2^(bits-1) - 1):
  int2 codes lie in [-2, 1], int4 codes in [-8, 7]. Bytes: rows*r + 2 + r*cols + 2*ceil(r*cols/group).
- ``asymmetric``: A = U_r sqrt(S_r) and B = sqrt(S_r) Vh_r, each in unsigned codes over groups of
  ``group`` consecutive elements, value = code * scale + offset (fp16 scale and offset per group).
  Bytes: rows*r + r*cols + 4*(ceil(rows*r/group) + ceil(r*cols/group)).

Codes are rounded with the fp16 scales they are stored with, so dequant.py rebuilds exactly the
correction whose error the report gives.
"""

from __future__ import annotations

import math

import torch

from .dequant import LQER_ASYMMETRIC as ASYMMETRIC
from .dequant import LQER_RECORD as RECORD
from .dequant import grouped_rows
from .rows import _storable

FORMATS = (RECORD, ASYMMETRIC)


def svd_factors(error: torch.Tensor, rank: int, balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-``rank`` approximation of ``error``: S goes to A (the
    record's split) or sqrt(S) to each side (``balanced``)."""
    u, s, vh = torch.linalg.svd(error.float(), full_matrices=False)
    left = s[:rank].sqrt() if balanced else s[:rank]
    right = s[:rank].sqrt() if balanced else torch.ones_like(s[:rank])
    return u[:, :rank] * left[None, :], right[:, None] * vh[:rank]


def _fp16_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """absmax / (2^(bits-1) - 1/2) in fp16; a zero (or underflowing) scale becomes 1 (its codes are all 0)."""
    return _storable(absmax / (2 ** (bits - 1) - 0.5))


def _signed_codes(values: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(values / scale), -2^(bits-1), 2^(bits-1) - 1) as int8; ``scale`` broadcasts."""
    half = 2 ** (bits - 1)
    return torch.clamp(torch.round(values / scale.float()), -half, half - 1).to(torch.int8)


def quantize_per_matrix(values: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Signed codes (same shape as ``values``) and one fp16 scale (shape [1]) for the whole tensor."""
    values = values.detach().float()
    scale = _fp16_scale(values.abs().max().reshape(1), bits)
    return {"q": _signed_codes(values, scale, bits).contiguous(), "scale": scale}


def quantize_signed_groups(values: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    """Signed codes (same shape as ``values``) with one fp16 scale per ``group`` consecutive elements."""
    padded = grouped_rows(values.detach(), group)
    scale = _fp16_scale(padded.abs().max(dim=1).values, bits)
    codes = _signed_codes(padded, scale[:, None], bits).flatten()[: values.numel()]
    return {"q": codes.view(values.shape).contiguous(), "scale": scale}


def quantize_groups(values: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    """Asymmetric codes in [0, 2^bits - 1] over groups of ``group`` consecutive elements:
    value ~ code * scale + offset, scale and offset in fp16 (codes flattened, stored as int8)."""
    padded = grouped_rows(values.detach(), group)
    low, high = padded.min(dim=1).values, padded.max(dim=1).values
    levels = 2**bits - 1
    scale = _storable((high - low) / levels)
    offset = low.to(torch.float16)
    codes = torch.clamp(torch.round((padded - offset.float()[:, None]) / scale.float()[:, None]), 0, levels)
    return {"q": codes.to(torch.int8).flatten()[: values.numel()].contiguous(), "scale": scale, "offset": offset}


def lqer_correction(error: torch.Tensor, rank: int, a_bits: int, b_bits: int, group: int,
                    storage: str = RECORD) -> dict[str, torch.Tensor]:
    """The stored tensors of a correction, keyed 'a.q', 'a.scale', 'b.q', 'b.scale' (+ 'a.offset',
    'b.offset' in the asymmetric format)."""
    if storage not in FORMATS:
        raise ValueError(f"unknown LQER format {storage!r}; choose one of {', '.join(FORMATS)}")
    a, b = svd_factors(error, rank, balanced=storage == ASYMMETRIC)
    if storage == RECORD:
        parts = {"a": quantize_per_matrix(a, a_bits), "b": quantize_signed_groups(b, b_bits, group)}
    else:
        parts = {"a": quantize_groups(a, a_bits, group), "b": quantize_groups(b, b_bits, group)}
    return {f"{label}.{key}": tensor for label, stored in parts.items() for key, tensor in stored.items()}


def correction_bytes(rows: int, cols: int, rank: int, group: int, storage: str = RECORD) -> int:
    """Raw stored bytes of one correction (codes one per byte, fp16 scales and offsets)."""
    if storage == RECORD:
        return rows * rank + 2 + rank * cols + 2 * math.ceil(rank * cols / group)
    return rows * rank + rank * cols + 4 * (math.ceil(rows * rank / group) + math.ceil(rank * cols / group))
