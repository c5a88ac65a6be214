"""Whether an artifact decodes to exactly the quantized tensors its pack folder was made from.

A pack folder's hashes pin its artifact only as firmly as an unkeyed hash can: an artifact of
another model, copied in with the pack manifest's hash fixed up, still verifies by hashes. What
does not follow from the hashes is re-derived here: the artifact's weights sections are decoded
(with golf's own decoder, never the artifact's code) and every stored tensor is compared byte for
byte with the quantize stage's ``quantized.safetensors``, as are the header fields the runtime
rebuilds the model from (model config, quantization index, training sequence length). Used by
`golf inspect` on pack folders. Runs in golf, never shipped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import GolfError
from .container import ContainerError
from .layout import decode_tensors
from .quantized import QuantizedMetadata
from .verify import Artifact

# The header fields the quantize stage's record must equal (each is what the runtime builds from).
HEADER_FROM_QUANTIZED = ("model_config", "quant_index", "train_seq_len")


def decoded_mismatch(artifact: Artifact, quantized: Path) -> str | None:
    """Why ``artifact`` is not the packing of ``quantized`` (a quantize stage's safetensors), or None."""
    try:
        with safe_open(str(quantized), framework="pt") as handle:
            metadata = handle.metadata() or {}
            expected = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for a file it cannot read
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot read the quantized tensors {quantized} ({reason})"
    try:
        recorded = QuantizedMetadata.from_metadata(metadata, str(quantized))
    except GolfError as exc:
        return str(exc)
    for field in HEADER_FROM_QUANTIZED:
        if artifact.header[field] != getattr(recorded, field):
            return f"its header's {field} is not the quantize stage's"
    try:
        decoded = decode_tensors(artifact.header, artifact.sections)
    except (ContainerError, ValueError, KeyError) as exc:
        return f"its weights do not decode ({exc})"
    return _tensor_mismatch(decoded, expected)


def _tensor_mismatch(decoded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first difference between two tensor sets (names, dtypes, shapes, then bytes), or None."""
    if decoded.keys() != expected.keys():
        extra, missing = sorted(decoded.keys() - expected.keys()), sorted(expected.keys() - decoded.keys())
        return f"its tensors are not the quantize stage's (extra {extra[:3]}, missing {missing[:3]})"
    for name in sorted(expected):
        a, b = decoded[name], expected[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"tensor {name} is {a.dtype} {tuple(a.shape)}, the quantize stage's is {b.dtype} {tuple(b.shape)}"
        if _raw(a) != _raw(b):
            return f"tensor {name} differs from the quantize stage's"
    return None


def _raw(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes (so that -0.0 differs from 0.0 and a NaN equals itself)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
