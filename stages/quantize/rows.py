"""Per-row scales and round-to-nearest: the reference quantizer, and the grid GPTQ rounds onto.

Every quantized matrix stores int codes in [-R, R] (R = 2^(bits-1) - 1, one code per byte) and
one fp16 scale per row. Two rules choose the scale:
- SDClip (the records): s = k * std(row) / R. k fixes the step in units of the row's spread, so
  it also fixes the code entropy (see entropy.py) and with it the compressed size.
- quantile (the baseline): s = quantile(|row|, q) / R, clipping only the rarest outliers.
- quantile search (seed 003): the quantile rule at each q of a fixed ladder, keeping the one whose
  round-to-nearest reconstruction has the smallest mean squared error over the whole matrix.
Codes are rounded with the fp16 scale they are stored with, so dequantization reproduces exactly
the weights that were scored.
"""

from __future__ import annotations

import torch

from .dequant import dequantize_rows


def code_max(bits: int) -> int:
    """R: the largest code magnitude of a symmetric ``bits``-bit grid."""
    return 2 ** (bits - 1) - 1


def _storable(scale: torch.Tensor) -> torch.Tensor:
    """fp16 scales; rows whose scale is 0 or underflows get 1 (their codes are all 0 anyway)."""
    scale = scale.to(torch.float16)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def sdclip_scales(weight: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """fp16 per-row scales k * std(row) / R."""
    std = weight.float().std(dim=1, correction=0)
    return _storable(clip_sigmas * std / code_max(bits))


def quantile_scales(weight: torch.Tensor, bits: int, quantile: float) -> torch.Tensor:
    """fp16 per-row scales quantile(|row|) / R."""
    clip = torch.quantile(weight.float().abs(), quantile, dim=1)
    return _storable(clip / code_max(bits))


# Seed 003's ladder; 1.0 is the row's max |w| (no clipping at all).
SEARCH_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)


def searched_quantile_scales(weight: torch.Tensor, bits: int, quantiles=SEARCH_QUANTILES) -> torch.Tensor:
    """The quantile_scales of the ladder entry whose RTN reconstruction error is smallest (first on a tie)."""
    best, best_error = None, float("inf")
    for quantile in quantiles:
        scale = quantile_scales(weight, bits, quantile)
        restored = dequantize_rows(rtn_codes(weight, scale, bits), scale)
        error = float((weight.float() - restored).pow(2).mean())
        if error < best_error:
            best, best_error = scale, error
    return best


def round_to_grid(values: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(values / scale), -R, R); ``scale`` broadcasts against ``values``."""
    limit = code_max(bits)
    return torch.clamp(torch.round(values / scale.float()), -limit, limit)


def rtn_codes(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes of a 2-D weight rounded to nearest on its per-row grid."""
    return round_to_grid(weight.float(), scale[:, None], bits).to(torch.int8)
