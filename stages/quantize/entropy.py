"""How many bytes quantized codes will take once entropy-coded, predicted without compressing.

SDClip rounds w / s with s = k * std / R, so for roughly Gaussian rows the codes are a Gaussian
of standard deviation R / k rounded to integers, whose entropy is about
log2(sqrt(2 pi e) * R / k) bits (docs/REFERENCE.md section 6: within 0.5% of the top record's size).
The predictor used for sizing is the measured order-0 entropy of the actual codes, which also
holds for rows that are not Gaussian and for GPTQ's codes: `golf pack` codes them with an order-0
coder (rans, one table per matrix type) that lands within ~0.05% of it. The fp16 row scales are
predicted the same way, each distinct value a symbol (brotli gets within ~5% of that on them).
"""

from __future__ import annotations

import math

import torch

from .rows import code_max


def gaussian_bits(bits: int, clip_sigmas: float) -> float:
    """Bits per weight SDClip gives a Gaussian row (capped at the code width)."""
    return min(float(bits), max(0.0, math.log2(math.sqrt(2 * math.pi * math.e) * code_max(bits) / clip_sigmas)))


def code_entropy_bits(codes: torch.Tensor) -> float:
    """Order-0 entropy of the codes, in bits per code."""
    counts = torch.bincount((codes.flatten().long() + 128)).float()
    p = counts[counts > 0] / codes.numel()
    return float(-(p * p.log2()).sum())


def predicted_code_bytes(codes: torch.Tensor) -> float:
    """Bytes an ideal order-0 coder needs for these codes."""
    return codes.numel() * code_entropy_bits(codes) / 8


def predicted_value_bytes(values: torch.Tensor) -> float:
    """Bytes an ideal order-0 coder needs for these 16-bit values, each distinct bit pattern a symbol."""
    _, counts = torch.unique(values.flatten().view(torch.int16), return_counts=True)
    p = counts.double() / values.numel()
    return float(-(p * p.log2()).sum()) * values.numel() / 8
