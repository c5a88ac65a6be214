"""Quantize a float state dict tensor by tensor: matrices to per-row int codes (GPTQ or RTN on an
SDClip or quantile grid, optionally with an LQER correction), small tensors kept float.

Returns the stored tensors, the index dequant.py reads, and a per-tensor report (bits, k, errors,
predicted bits per weight). Every reported error is measured on exactly the weights the artifact
will rebuild (dequant.dequantize_entry).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..model.groups import tensor_group
from ..model.roles import Role, parameter_role
from .config import GroupQuant, QuantizeConfig
from .dequant import KIND_FLOAT, KIND_ROWS, dequantize_entry, dequantize_rows
from .entropy import code_entropy_bits, gaussian_bits, predicted_code_bytes, predicted_value_bytes
from .gptq import hessian_error
from .lqer import lqer_correction
from .methods import METHODS, method_for
from .rows import quantile_scales, rtn_codes, sdclip_scales, searched_quantile_scales
from .tensor_report import TensorReport

FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
GATE_SUFFIX = ".attn.gate.weight"


def is_quantized(name: str, tensor: torch.Tensor, config: QuantizeConfig) -> bool:
    """Matrices above the size threshold get codes; control tensors and everything else stay float."""
    return tensor.ndim == 2 and tensor.numel() > config.keep_float_max_numel and not is_control(name)


def is_control(name: str) -> bool:
    """Scales, mixes, gains and gates that steer the residual stream: kept float (gates: unless gate_bits)."""
    return parameter_role(name) is Role.CONTROL


def is_coded_gate(name: str, tensor: torch.Tensor, config: QuantizeConfig) -> bool:
    """An attention output gate stored as codes: the top record's int8 rows, whatever its size."""
    return bool(config.gate_bits) and tensor.ndim == 2 and name.endswith(GATE_SUFFIX)


def storage_grid(name: str, tensor: torch.Tensor, config: QuantizeConfig) -> GroupQuant | None:
    """The grid a tensor's codes lie on: its group's for a quantized matrix, max-|w| rows for a coded
    gate; None for a tensor kept float."""
    if is_quantized(name, tensor, config):
        return config.group(tensor_group(name))
    if is_coded_gate(name, tensor, config):
        return GroupQuant(bits=config.gate_bits, clip="quantile", clip_quantile=1.0)
    return None


def row_scales(weight: torch.Tensor, settings: GroupQuant, clip_sigmas: float) -> torch.Tensor:
    if settings.clip == "quantile":
        return quantile_scales(weight, settings.bits, settings.clip_quantile)
    if settings.clip == "quantile_search":
        return searched_quantile_scales(weight, settings.bits)
    return sdclip_scales(weight, settings.bits, clip_sigmas)


def _clip_sigmas(settings: GroupQuant, clip_scale: float) -> float | None:
    """The group's k scaled by the --target-bytes knob (None for quantile-clipped groups)."""
    return settings.clip_sigmas * clip_scale if settings.clip == "sdclip" else None


def _float_dtype(name: str, config: QuantizeConfig) -> torch.dtype:
    return FLOAT_DTYPES[config.control_dtype if is_control(name) else config.other_float_dtype]


def _predicted_row_bytes(codes: torch.Tensor, scale: torch.Tensor) -> float:
    """Entropy-coded codes plus their entropy-coded fp16 scales."""
    return predicted_code_bytes(codes) + predicted_value_bytes(scale)


def predicted_rtn_bytes(state: dict[str, torch.Tensor], config: QuantizeConfig, clip_scale: float) -> float:
    """The report's predicted bytes summed, with round-to-nearest codes, and nothing else computed
    (no dequantization, no errors): what --target-bytes evaluates at every probe of its search."""
    total = 0.0
    for name, weight in state.items():
        weight = weight.detach().float()
        settings = storage_grid(name, weight, config)
        if settings is not None:
            scale = row_scales(weight, settings, _clip_sigmas(settings, clip_scale))
            total += _predicted_row_bytes(rtn_codes(weight, scale, settings.bits), scale)
        else:
            total += weight.numel() * _float_dtype(name, config).itemsize
    return total


def quantize_state(state: dict[str, torch.Tensor], config: QuantizeConfig,
                   hessians: dict[str, torch.Tensor] | None = None, device="cpu",
                   clip_scale: float = 1.0):
    """(stored tensors, index, report). ``clip_scale`` multiplies the k of every SDClip group
    (the knob --target-bytes turns; quantile-clipped groups keep their grid)."""
    hessians = hessians or {}
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    report: list[TensorReport] = []
    for name, weight in state.items():
        weight = weight.detach().float()
        settings = storage_grid(name, weight, config)
        if settings is not None:
            entry, stored, row = _quantize_matrix(name, weight, settings, config, hessians.get(name), device,
                                                  clip_scale)
        else:
            entry, stored, row = _keep_float(name, weight, config)
        index[name] = entry
        tensors.update(stored)
        report.append(row)
    if config.lqer_rank:
        report = _add_lqer(state, tensors, index, report, config, hessians)
    return tensors, index, report


def _quantize_matrix(name, weight, settings: GroupQuant, config: QuantizeConfig, hessian, device, clip_scale):
    group = tensor_group(name)
    clip_sigmas = _clip_sigmas(settings, clip_scale)
    sdclip = clip_sigmas is not None
    scale = row_scales(weight, settings, clip_sigmas)
    method = method_for(config.method, hessian)
    codes = METHODS[method].codes(weight, scale, settings.bits, hessian, config, device)
    entry = {"kind": KIND_ROWS, "shape": list(weight.shape), "bits": settings.bits}
    stored = {name + ".q": codes.contiguous(), name + ".scale": scale.contiguous()}
    restored = dequantize_entry(name, entry, stored)
    row = TensorReport(
        name=name, group=group, kind=KIND_ROWS, shape=list(weight.shape),
        method=method, bits=settings.bits,
        clip=settings.clip, clip_sigmas=round(clip_sigmas, 6) if sdclip else None,
        relative_error=_relative_error(weight, restored),
        predicted_bits_per_weight=code_entropy_bits(codes),
        gaussian_bits_per_weight=gaussian_bits(settings.bits, clip_sigmas) if sdclip else None,
        predicted_bytes=_predicted_row_bytes(codes, scale),
        stored_bytes=codes.numel() + 2 * scale.numel(),
    )
    if hessian is not None:
        rtn_restored = dequantize_rows(rtn_codes(weight, scale, settings.bits), scale)
        row = replace(row, hessian_error=hessian_error(weight, restored, hessian),
                      rtn_hessian_error=hessian_error(weight, rtn_restored, hessian))
    return entry, stored, row


def _keep_float(name, weight, config: QuantizeConfig):
    dtype = _float_dtype(name, config)
    stored = weight.to(dtype).contiguous()
    entry = {"kind": KIND_FLOAT, "shape": list(weight.shape), "dtype": str(dtype).removeprefix("torch.")}
    row = TensorReport(
        name=name, group=tensor_group(name), kind=KIND_FLOAT, shape=list(weight.shape),
        method="float", bits=8 * stored.element_size(), clip=None, clip_sigmas=None,
        relative_error=_relative_error(weight, stored.float()),
        predicted_bits_per_weight=float(8 * stored.element_size()), gaussian_bits_per_weight=None,
        predicted_bytes=float(stored.numel() * stored.element_size()),
        stored_bytes=stored.numel() * stored.element_size(),
    )
    return entry, {name: stored}, row


def _add_lqer(state, tensors, index, report: list[TensorReport], config: QuantizeConfig,
              hessians) -> list[TensorReport]:
    """Correct the ``lqer_top_k`` matrices with the largest ||W - Q||_F by a low-rank A @ B (their
    factors join ``tensors`` and ``index``); the report with the corrected rows."""
    rows = {row.name: row for row in report}
    candidates = []
    for name, entry in index.items():
        if entry["kind"] == KIND_ROWS and is_quantized(name, state[name], config):  # not the coded gates
            error = state[name].float() - dequantize_entry(name, entry, tensors)
            candidates.append((float(error.norm()), name, error))
    candidates.sort(key=lambda item: item[0], reverse=True)
    for norm, name, error in candidates[: config.lqer_top_k]:
        rank = min(config.lqer_rank, *error.shape)
        stored = lqer_correction(error, rank, config.lqer_a_bits, config.lqer_b_bits, config.lqer_group,
                                 config.lqer_format)
        for key, tensor in stored.items():
            tensors[f"{name}.lqer.{key}"] = tensor
        entry = index[name]
        entry["lqer"] = {"rank": rank, "group": config.lqer_group, "a_bits": config.lqer_a_bits,
                         "b_bits": config.lqer_b_bits, "format": config.lqer_format}
        restored = dequantize_entry(name, entry, tensors)
        extra = sum(t.numel() * t.element_size() for t in stored.values())
        rows[name] = _corrected_row(rows[name], rank, extra, state[name].float(), restored, hessians.get(name))
    return list(rows.values())


def _corrected_row(row: TensorReport, rank: int, extra_bytes: int, weight: torch.Tensor, restored: torch.Tensor,
                   hessian: torch.Tensor | None) -> TensorReport:
    """A matrix's row once its LQER factors (``extra_bytes``) are stored: errors of the corrected
    weights, the uncorrected ones kept beside them."""
    row = replace(row, lqer_rank=rank, relative_error_before_lqer=row.relative_error,
                  relative_error=_relative_error(weight, restored), stored_bytes=row.stored_bytes + extra_bytes,
                  predicted_bytes=row.predicted_bytes + extra_bytes)
    if hessian is None:
        return row
    return replace(row, hessian_error_before_lqer=row.hessian_error,
                   hessian_error=hessian_error(weight, restored, hessian))


def _relative_error(weight: torch.Tensor, restored: torch.Tensor) -> float:
    return float((restored - weight).norm() / weight.norm().clamp_min(1e-12))
