"""Turning stored codes back into float weights. Ships inside every artifact: stdlib and torch only.

Index entries (one per parameter) say how each was stored:
- {"kind": "rows", "bits": b}: int8 codes ``<name>.q`` times fp16 per-row scales ``<name>.scale``,
  plus, with an "lqer" entry, the low-rank correction A @ B from ``<name>.lqer.{a,b}.{q,scale,offset}``;
- {"kind": "float"}: the tensor ``<name>`` itself (fp16 or fp32).
"""

from __future__ import annotations

import torch

KIND_ROWS = "rows"
KIND_FLOAT = "float"


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row codes times their fp16 scales, in float32."""
    return q.float() * scale.float()[:, None]


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, shape, group: int) -> torch.Tensor:
    """Asymmetric group codes back to a float32 tensor of ``shape``: code * scale + offset."""
    count = q.numel()
    padded = torch.nn.functional.pad(q.float(), (0, (-count) % group)).view(-1, group)
    values = padded * scale.float()[:, None] + offset.float()[:, None]
    return values.flatten()[:count].view(*shape)


def dequantize_entry(name: str, entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if entry["kind"] == KIND_FLOAT:
        return tensors[name].float()
    if entry["kind"] != KIND_ROWS:
        raise ValueError(f"unknown tensor kind {entry['kind']!r} for {name}")
    weight = dequantize_rows(tensors[name + ".q"], tensors[name + ".scale"])
    lqer = entry.get("lqer")
    if lqer:
        part = {key: tensors[f"{name}.lqer.{key}"] for key in ("a.q", "a.scale", "a.offset", "b.q", "b.scale", "b.offset")}
        rows, cols = entry["shape"]
        a = dequantize_groups(part["a.q"], part["a.scale"], part["a.offset"], (rows, lqer["rank"]), lqer["group"])
        b = dequantize_groups(part["b.q"], part["b.scale"], part["b.offset"], (lqer["rank"], cols), lqer["group"])
        weight = weight + a @ b
    return weight


def dequantize_state(tensors: dict[str, torch.Tensor], index: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Float32 state dict from stored tensors and their index."""
    return {name: dequantize_entry(name, entry, tensors) for name, entry in index.items()}
