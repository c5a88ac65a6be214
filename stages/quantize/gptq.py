"""GPTQ: round one column at a time and push each column's rounding error onto the columns not
yet rounded, weighted by the inverse Hessian of the layer's inputs (Frantar et al., 2022).

For a weight W (rows x cols) whose layer sees inputs X, the loss of a quantized Q is
tr((W - Q) H (W - Q)^T) with H = X^T X / n. As in the records (docs/REFERENCE.md section 6):
- dead columns (H_ii = 0: an input that is always zero) get H_ii = 1 and weight 0;
- damping adds ``damping * mean(diag H)`` to the diagonal;
- act-order rounds columns in order of decreasing H_ii, then un-permutes;
- the feedback uses the upper Cholesky factor of H^-1;
- columns go in blocks: exact feedback inside a block, one matrix product to the columns after it.
The grid (per-row fp16 scales) is fixed beforehand, so GPTQ only chooses which grid point each
weight takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GolfError
from .rows import round_to_grid

MAX_DAMPING_RETRIES = 6


@dataclass(frozen=True)
class GptqSettings:
    bits: int
    """Code width of the grid."""
    damping: float = 0.01
    """Fraction of mean(diag H) added to the diagonal."""
    act_order: bool = True
    """Round columns by decreasing diag H."""
    block_size: int = 128
    """Columns per block."""


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, settings: GptqSettings) -> torch.Tensor:
    """int8 codes of ``weight`` on the grid of per-row ``scale``, chosen against ``hessian``."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diagonal(h), descending=True) if settings.act_order else None
    if order is not None:
        w, h = w[:, order], h[order][:, order]
    h_inv_upper = _inverse_cholesky_upper(h, settings.damping)
    codes = _round_columns(w, h_inv_upper, scale.float()[:, None], settings)
    if order is not None:
        codes = codes[:, torch.argsort(order)]
    return codes.to(torch.int8)


def _inverse_cholesky_upper(h: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damping)^-1 (H^-1 = U^T U); damping grows until H is positive definite."""
    mean_diag = torch.diagonal(h).mean()
    damp = damping
    for _ in range(MAX_DAMPING_RETRIES):
        damped = h + damp * mean_diag * torch.eye(h.size(0), dtype=h.dtype, device=h.device)
        factor, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper
        damp = max(damp * 10, 1e-6)
    raise GolfError("GPTQ: the Hessian stays singular even with heavy damping (calibration data too small?)")


def _round_columns(w: torch.Tensor, h_inv_upper: torch.Tensor, scale: torch.Tensor, settings: GptqSettings) -> torch.Tensor:
    codes = torch.zeros_like(w)
    cols = w.size(1)
    for start in range(0, cols, settings.block_size):
        end = min(start + settings.block_size, cols)
        block = w[:, start:end].clone()
        block_inv = h_inv_upper[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            column = block[:, i]
            q = round_to_grid(column, scale[:, 0], settings.bits)
            codes[:, start + i] = q
            error = (column - q * scale[:, 0]) / block_inv[i, i]
            block[:, i:] -= error[:, None] * block_inv[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv_upper[start:end, end:]  # the lazy update of every later column
    return codes


def hessian_error(weight: torch.Tensor, restored: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T) / tr(W H W^T): the layer-output error GPTQ minimizes, relative."""
    delta = (weight.float() - restored.float())
    h = hessian.float()
    denominator = torch.einsum("ij,jk,ik->", weight.float(), h, weight.float()).clamp_min(1e-30)
    return float(torch.einsum("ij,jk,ik->", delta, h, delta) / denominator)
