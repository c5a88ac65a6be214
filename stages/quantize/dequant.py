"""Turning stored codes back into float weights. Ships inside every artifact: stdlib and torch only."""

from __future__ import annotations

import torch

KIND_INT8_ROWS = "int8_rows"
KIND_FLOAT = "float"


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row codes times their fp16 scales, in float32."""
    return q.float() * scale.float()[:, None]


def dequantize_state(tensors: dict[str, torch.Tensor], index: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Float32 state dict from stored tensors and their index ({name: {"kind": ...}})."""
    state = {}
    for name, entry in index.items():
        if entry["kind"] == KIND_INT8_ROWS:
            state[name] = dequantize_rows(tensors[name + ".q"], tensors[name + ".scale"])
        elif entry["kind"] == KIND_FLOAT:
            state[name] = tensors[name].float()
        else:
            raise ValueError(f"unknown tensor kind {entry['kind']!r} for {name}")
    return state
