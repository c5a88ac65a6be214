"""Where an artifact keeps what: the code section, the weights sections, and decoding the stored
tensors back out of those sections.

The header lists every stored tensor (name, dtype, shape, stream, shuffled) section by section; the
section ``weights.<stream>`` holds the tensors whose entry names that stream (a tensor group such as
``mlp``, or ``codes``: every matrix's int8 codes, by matrix type; ``streams.py`` decides) back to
back, little-endian, each byte-shuffled when its entry says so, compressed with the codec its
section entry names. Ships inside the artifact (the runtime reads the weights with it): stdlib,
numpy and torch only.
"""

from __future__ import annotations

import numpy as np
import torch

from .codecs import byte_unshuffle, decompress

CODE_SECTION = "code"
# The dtypes a stored tensor may have; `golf pack` refuses any other.
NUMPY_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


def weights_section(stream: str) -> str:
    """The name of the section that holds one stream's bytes."""
    return f"weights.{stream}"


def decode_tensors(header: dict, sections: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Rebuild every stored tensor bit-exactly from the weights sections: {name: tensor}."""
    codecs = {entry["name"]: entry["codec"] for entry in header["sections"]}
    by_section: dict[str, list[dict]] = {}
    for entry in header["weights"]["tensors"]:
        by_section.setdefault(weights_section(entry["stream"]), []).append(entry)
    tensors = {}
    for section, entries in by_section.items():
        raw = decompress(sections[section], codecs[section])
        tensors.update(_split_section(raw, entries, section))
    return tensors


def _split_section(raw: bytes, entries: list[dict], section: str) -> dict[str, torch.Tensor]:
    """Cut one decompressed section into its tensors (little-endian, each byte-shuffled or not)."""
    tensors, offset = {}, 0
    for entry in entries:
        dtype = np.dtype(NUMPY_DTYPES[entry["dtype"]]).newbyteorder("<")
        size = int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
        chunk = raw[offset : offset + size]
        if len(chunk) != size:
            raise ValueError(f"section {section} ends inside tensor {entry['name']}")
        if entry["shuffled"]:
            chunk = byte_unshuffle(chunk, dtype.itemsize)
        array = np.frombuffer(chunk, dtype=dtype).reshape(entry["shape"])
        tensors[entry["name"]] = torch.from_numpy(array.astype(dtype.newbyteorder("=")))
        offset += size
    if offset != len(raw):
        raise ValueError(f"section {section} holds {len(raw)} bytes, its tensors describe {offset}")
    return tensors
