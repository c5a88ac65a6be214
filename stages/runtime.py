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
from .pack.codecs import decompress
from .quantize.dequant import dequantize_state

NUMPY_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


def decode_tensors(header: dict, payload: bytes) -> dict[str, torch.Tensor]:
    """Split the decompressed weights section into tensors, in header order."""
    raw = decompress(payload, header["weights"]["codec"])
    tensors, offset = {}, 0
    for entry in header["weights"]["tensors"]:
        dtype = np.dtype(NUMPY_DTYPES[entry["dtype"]]).newbyteorder("<")
        count = int(np.prod(entry["shape"], dtype=np.int64))
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(entry["shape"])
        tensors[entry["name"]] = torch.from_numpy(array.astype(dtype.newbyteorder("=")))
        offset += count * dtype.itemsize
    if offset != len(raw):
        raise ValueError(f"weights section holds {len(raw)} bytes, tensors describe {offset}")
    return tensors


def build_model(header: dict, payload: bytes) -> GPT:
    """The dequantized float model an artifact describes, ready to score."""
    model = GPT(ModelConfig(**header["model_config"]))
    state = dequantize_state(decode_tensors(header, payload), header["quant_index"])
    model.load_state_dict(state)
    return model.eval()
