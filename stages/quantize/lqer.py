"""LQER: a low-rank correction of the quantization error, stored in a few bits.

After GPTQ, E = W - Q s. For the matrices with the largest ||E||_F a rank-r SVD gives
E ~ A B with A = U_r sqrt(S_r) (rows x r) and B = sqrt(S_r) V_r^T (r x cols). A is stored in
int2 and B in int4, each asymmetric over groups of consecutive elements (docs/REFERENCE.md section 6:
rank 4, top 3 matrices, groups of 64): tens of KB for a visible error reduction.
"""

from __future__ import annotations

import torch


def low_rank_factors(error: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-``rank`` approximation of ``error``."""
    u, s, vh = torch.linalg.svd(error.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root[None, :], root[:, None] * vh[:rank]


def quantize_groups(values: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    """Asymmetric codes in [0, 2^bits - 1] over groups of ``group`` consecutive elements:
    value ~ code * scale + offset, scale and offset in fp16 (codes stored as int8)."""
    flat = values.detach().float().flatten()
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % group)).view(-1, group)
    low, high = padded.min(dim=1).values, padded.max(dim=1).values
    levels = 2**bits - 1
    scale = ((high - low) / levels).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    offset = low.to(torch.float16)
    codes = torch.clamp(torch.round((padded - offset.float()[:, None]) / scale.float()[:, None]), 0, levels)
    return {"q": codes.to(torch.int8).flatten()[: flat.numel()].contiguous(), "scale": scale, "offset": offset}


def lqer_correction(error: torch.Tensor, rank: int, a_bits: int, b_bits: int, group: int) -> dict[str, torch.Tensor]:
    """The stored tensors of a correction: 'a.q', 'a.scale', 'a.offset', 'b.q', 'b.scale', 'b.offset'."""
    a, b = low_rank_factors(error, rank)
    stored = {}
    for label, factor, bits in (("a", a, a_bits), ("b", b, b_bits)):
        for key, tensor in quantize_groups(factor, bits, group).items():
            stored[f"{label}.{key}"] = tensor
    return stored
