"""The per-tensor report: real compressed bytes of each tensor, and one log line per tensor."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from ..artifact.encode import compress
from ..progress import Reporter
from .dequant import KIND_FLOAT
from .tensor_report import TensorReport


def stored_pieces(name: str, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Everything stored for one parameter: itself, or its codes, scales and LQER factors."""
    return [tensor for key, tensor in tensors.items() if key == name or key.startswith(name + ".")]


def compressed_sizes(tensors: dict[str, torch.Tensor], report: list[TensorReport], codec: str) -> list[int]:
    """Bytes of each parameter's stored tensors compressed on their own (threads: the codecs
    release the GIL, and brotli at quality 11 is slow)."""
    def size(name: str) -> int:
        raw = b"".join(t.contiguous().numpy().tobytes() for t in stored_pieces(name, tensors))
        return len(compress(raw, codec))

    with ThreadPoolExecutor() as pool:
        return list(pool.map(size, [row.name for row in report]))


def with_compressed_sizes(tensors: dict[str, torch.Tensor], report: list[TensorReport],
                          codec: str) -> list[TensorReport]:
    """The report with each row's compressed bytes filled in."""
    return [replace(row, compressed_bytes=size) for row, size in zip(report, compressed_sizes(tensors, report, codec))]


def log_report(report: list[TensorReport], reporter: Reporter) -> None:
    """One greppable line per quantized tensor (kept-float ones are in the manifest)."""
    for row in report:
        if row.kind == KIND_FLOAT:
            continue
        reporter.log(tensor=row.name, group=row.group, method=row.method, bits=row.bits,
                     k=row.clip_sigmas, rel_error=round(row.relative_error, 6),
                     h_error=round(row.hessian_error, 8) if row.hessian_error is not None else None,
                     bits_per_weight=round(row.predicted_bits_per_weight, 4),
                     predicted_bytes=round(row.predicted_bytes), compressed_bytes=row.compressed_bytes,
                     lqer_rank=row.lqer_rank or 0)
