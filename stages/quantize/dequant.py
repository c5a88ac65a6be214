"""Turning stored codes back into float weights. Ships inside every artifact: stdlib and torch only.

Index entries (one per parameter) say how each was stored:
- {"kind": "rows", "bits": b}: int8 codes ``<name>.q`` times fp16 per-row scales ``<name>.scale``,
  plus, with an "lqer" entry, the low-rank correction A @ B from ``<name>.lqer.{a,b}.{q,scale}``:
  format "record": A = a.q * its one scale, B = b.q * one scale per group of consecutive elements;
  format "asymmetric" (or no format: older artifacts): code * scale + offset per group, both factors;
- {"kind": "float"}: the tensor ``<name>`` itself (fp16 or fp32).
"""

from __future__ import annotations

import torch

KIND_ROWS = "rows"
KIND_FLOAT = "float"
LQER_RECORD = "record"
LQER_ASYMMETRIC = "asymmetric"


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row codes times their fp16 scales, in float32."""
    return q.float() * scale.float()[:, None]


def grouped_rows(q: torch.Tensor, group: int) -> torch.Tensor:
    """The flattened tensor (codes, or values to quantize) as float rows of ``group``, the last row
    zero-padded."""
    flat = q.float().flatten()
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % group)).view(-1, group)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, shape, group: int) -> torch.Tensor:
    """Group codes back to a float32 tensor of ``shape``: code * scale (+ offset, when asymmetric)."""
    values = grouped_rows(q, group) * scale.float()[:, None]
    if offset is not None:
        values = values + offset.float()[:, None]
    return values.flatten()[: q.numel()].view(*shape)


def lqer_factors(name: str, lqer: dict, shape, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The float (A, B) of a stored LQER correction, A @ B being added to the weight."""
    prefix = f"{name}.lqer."
    rows, cols = shape
    rank, group = lqer["rank"], lqer["group"]
    if lqer.get("format", LQER_ASYMMETRIC) == LQER_RECORD:
        a = tensors[prefix + "a.q"].float().view(rows, rank) * tensors[prefix + "a.scale"].float()
        b = dequantize_groups(tensors[prefix + "b.q"], tensors[prefix + "b.scale"], None, (rank, cols), group)
        return a, b
    a = dequantize_groups(tensors[prefix + "a.q"], tensors[prefix + "a.scale"], tensors[prefix + "a.offset"],
                          (rows, rank), group)
    b = dequantize_groups(tensors[prefix + "b.q"], tensors[prefix + "b.scale"], tensors[prefix + "b.offset"],
                          (rank, cols), group)
    return a, b


def dequantize_entry(name: str, entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if entry["kind"] == KIND_FLOAT:
        return tensors[name].float()
    if entry["kind"] != KIND_ROWS:
        raise ValueError(f"unknown tensor kind {entry['kind']!r} for {name}")
    weight = dequantize_rows(tensors[name + ".q"], tensors[name + ".scale"])
    if entry.get("lqer"):
        a, b = lqer_factors(name, entry["lqer"], entry["shape"], tensors)
        weight = weight + a @ b
    return weight


def dequantize_state(tensors: dict[str, torch.Tensor], index: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Float32 state dict from stored tensors and their index."""
    return {name: dequantize_entry(name, entry, tensors) for name, entry in index.items()}
