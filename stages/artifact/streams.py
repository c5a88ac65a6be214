"""Which stream (and so which ``weights.<stream>`` section) each stored tensor goes to, in what
order, and which codecs each stream may be coded with.

Each stream is a section of its own: groups are quantized with their own bits and clip widths,
and the codes of one matrix type share one distribution, so a coder does better on one
distribution at a time than on a stream whose statistics keep switching (and a pack may pick a
codec per section). With mode 'type' (the default) the int8 codes of every quantized matrix form
the code stream, ``codes``, ordered by matrix type (``attn.c_q``, ``mlp.fc``, ``tok_emb``, ...:
every layer's matrix of a type back to back, one segment per type, one 'rans' frequency table
each); the rest (row scales, LQER factors, float tensors) goes to one stream per tensor group.
Mode 'group' puts everything in one stream per tensor group (attention, mlp, embedding, other).
A new kind of stream is a new branch of ``stream_of`` and its place in ``_placement`` (and, if
it takes codecs of its own, a field of ``StreamCodecs``). Runs in golf, never shipped: the
reader needs only the stream names the header records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GolfError
from ..model.groups import GROUPS, tensor_group
from .encode import byte_shuffle
from .layout import NUMPY_DTYPES
from .schema import tensor_entry

# A matrix's int8 codes are stored as '<parameter>.q'; with mode 'type' they go to the code stream.
CODES_SUFFIX = ".weight.q"
CODE_STREAM = "codes"


@dataclass(frozen=True)
class StreamCodecs:
    """The codecs each stream may be coded with (of several, the smallest payload wins), and the level."""

    weights: tuple[str, ...] = ("brotli",)
    """Candidates for every stream but the code stream."""
    codes: tuple[str, ...] = ("rans",)
    """Candidates for the code stream (golf's order-0 coder 'rans': one frequency table per matrix type)."""
    level: int | None = None
    """Level of the ``weights`` codecs (None: each codec's strongest); the code stream is always coded
    at its codec's strongest."""

    def of(self, stream: str) -> tuple[str, ...]:
        return self.codes if is_code_stream(stream) else self.weights

    def level_of(self, stream: str) -> int | None:
        return None if is_code_stream(stream) else self.level


def is_code_stream(stream: str) -> bool:
    return stream == CODE_STREAM


def matrix_type(name: str) -> str:
    """The type of a stored code tensor: 'blocks.3.attn.c_q.weight.q' -> 'attn.c_q', 'tok_emb.weight.q' -> 'tok_emb'."""
    parts = name.removesuffix(CODES_SUFFIX).split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        parts = parts[2:]
    return ".".join(parts)


def stream_of(name: str, tensor: torch.Tensor, mode: str) -> str:
    """The stream (and so the section) a stored tensor goes to: with mode 'type', a matrix's
    int8 codes go to the code stream; everything else goes to its tensor group's."""
    if mode == "type" and tensor.dtype == torch.int8 and name.endswith(CODES_SUFFIX):
        return CODE_STREAM
    return tensor_group(name)


def _placement(name: str, stream: str) -> tuple:
    """Sort key: the code stream first, by matrix type then layer, then the tensor groups in order."""
    if is_code_stream(stream):
        return (0, matrix_type(name), _layer(name), name)
    return (1, GROUPS.index(stream), _layer(name), name)


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1


def tensor_streams(tensors: dict[str, torch.Tensor], shuffle: bool,
                   mode: str = "type") -> tuple[list[dict], dict[str, bytes], dict[str, list[int]]]:
    """Header entries (stream by stream), each stream's concatenated bytes, and its segments (the
    byte lengths of its parts of one statistics: the code stream's matrix types, else the whole)."""
    placed = {name: stream_of(name, tensor, mode) for name, tensor in tensors.items()}
    entries, chunks, segments = [], {}, {}
    for name in sorted(tensors, key=lambda name: _placement(name, placed[name])):
        stream = placed[name]
        array = _little_endian(name, tensors[name])
        shuffled = shuffle and array.itemsize > 1  # a 1-byte dtype has nothing to shuffle
        raw = array.tobytes()
        chunks.setdefault(stream, []).append(byte_shuffle(raw, array.itemsize) if shuffled else raw)
        part = matrix_type(name) if is_code_stream(stream) else stream
        segments.setdefault(stream, {}).setdefault(part, 0)
        segments[stream][part] += len(raw)
        entries.append(tensor_entry(name, str(array.dtype), list(array.shape), stream, shuffled))
    return (entries, {stream: b"".join(parts) for stream, parts in chunks.items()},
            {stream: list(parts.values()) for stream, parts in segments.items()})


def _little_endian(name: str, tensor: torch.Tensor):
    """The tensor as a little-endian numpy array; only dtypes the runtime decodes are accepted."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in NUMPY_DTYPES:
        raise GolfError(f"tensor {name} is {dtype}; an artifact stores only {', '.join(NUMPY_DTYPES)}")
    array = tensor.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"))
