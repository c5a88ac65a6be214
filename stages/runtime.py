"""What a packed artifact runs: rebuild the model from the shipped weights and score it.

`golf pack` ships this module and everything it imports (relatively) inside the artifact, and
`golf eval` imports it from there, so the code counted against the 16,000,000 bytes is the code
that produces the score.
"""

from __future__ import annotations

import numpy as np
import torch

from .evaluate.bpb import build_byte_table  # noqa: F401  (re-exported for eval)
from .evaluate.scoring import count_windows, score_stream  # noqa: F401  (re-exported for eval)
from .model.config import ModelConfig
from .model.gpt import GPT
from .pack.codecs import byte_unshuffle, decompress
from .quantize.dequant import dequantize_state

# The dtypes a stored tensor may have; `golf pack` refuses any other.
NUMPY_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


def weights_section(group: str) -> str:
    """The name of the section that holds one tensor group's bytes."""
    return f"weights.{group}"


def decode_tensors(header: dict, sections: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """Rebuild every stored tensor bit-exactly from the weights sections: {name: tensor}."""
    codecs = {entry["name"]: entry["codec"] for entry in header["sections"]}
    by_section: dict[str, list[dict]] = {}
    for entry in header["weights"]["tensors"]:
        by_section.setdefault(weights_section(entry["group"]), []).append(entry)
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


def build_model(header: dict, sections: dict[str, bytes]) -> GPT:
    """The dequantized float model an artifact describes, ready to score."""
    model = GPT(ModelConfig(**header["model_config"]))
    state = dequantize_state(decode_tensors(header, sections), header["quant_index"])
    model.load_state_dict(state)
    return model.eval()
