"""Per-row int8 round-to-nearest with the baseline's clipping rule.

For each row of a 2-D weight: clip at the ``clip_quantile`` of |w| (99.99984% in the baseline),
scale = clip / 127 stored as fp16, q = clamp(round(w / scale), -127, 127). Small tensors
(<= 65,536 elements) and non-matrices stay float: fp32 for the control tensors that steer the
residual stream, fp16 for the rest. Codes are rounded with the fp16 scale they are stored with,
so dequantization reproduces exactly the weights that were evaluated.
"""

from __future__ import annotations

import torch

from ..model.gpt import CONTROL_TENSOR_NAMES
from .config import QuantizeConfig
from .dequant import KIND_FLOAT, KIND_INT8_ROWS, dequantize_rows

INT8_MAX = 127
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def quantize_rows_int8(weight: torch.Tensor, clip_quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp16 per-row scales) of a 2-D weight."""
    w = weight.detach().float()
    clip = torch.quantile(w.abs(), clip_quantile, dim=1)
    scale = (clip / INT8_MAX).to(torch.float16)
    # All-zero rows (and scales that underflow fp16) get scale 1: their codes are all zero anyway.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / scale.float()[:, None]), -INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize_state(state: dict[str, torch.Tensor], config: QuantizeConfig):
    """Quantize a float state dict. Returns (stored tensors, index, per-tensor report)."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    report: list[dict] = []
    for name, weight in state.items():
        weight = weight.detach().float()
        if weight.ndim == 2 and weight.numel() > config.keep_float_max_numel:
            q, scale = quantize_rows_int8(weight, config.clip_quantile)
            tensors[name + ".q"], tensors[name + ".scale"] = q, scale
            index[name] = {"kind": KIND_INT8_ROWS, "shape": list(weight.shape)}
            restored = dequantize_rows(q, scale)
            stored_bytes = q.numel() + 2 * scale.numel()
        else:
            is_control = any(c in name for c in CONTROL_TENSOR_NAMES)
            dtype = DTYPES[config.control_dtype if is_control else config.other_float_dtype]
            tensors[name] = weight.to(dtype).contiguous()
            index[name] = {"kind": KIND_FLOAT, "shape": list(weight.shape), "dtype": str(dtype).removeprefix("torch.")}
            restored = tensors[name].float()
            stored_bytes = tensors[name].numel() * tensors[name].element_size()
        error = (restored - weight).norm() / weight.norm().clamp_min(1e-12)
        report.append({
            "name": name,
            "kind": index[name]["kind"],
            "shape": list(weight.shape),
            "bits": 8 if index[name]["kind"] == KIND_INT8_ROWS else 8 * (stored_bytes // max(1, weight.numel())),
            "relative_error": float(error),
            "stored_bytes": int(stored_bytes),
        })
    return tensors, index, report
