"""What a packed artifact runs: rebuild the model from the shipped weights and score it.

`golf pack` ships this module and everything it imports (relatively) inside the artifact, and
`golf eval` imports it from there (after checking the shipped code is the code golf would ship:
``stages/artifact/verify.py``), so the code counted against the 16,000,000 bytes is the code
that produces the score. Eval always imports this module: the header cannot name another entry.
The test-time training (``evaluate/ttt``, ``TTT_ENTRY`` in ``artifact/schema.py``) ships beside
it unless packed with ``--no-ttt``, and eval imports it from the artifact only to score with ``--ttt``.
"""

from __future__ import annotations

from .artifact.layout import decode_tensors
from .scoring.bpb import build_byte_table  # noqa: F401  (re-exported for eval)
from .scoring.receipts import TokenReceipts, merge_receipts  # noqa: F401  (re-exported)
from .scoring.scorer import score_stream, warm_up_scoring  # noqa: F401  (re-exported)
from .model.config import ModelConfig
from .model.gpt import GPT
from .quantize.dequant import dequantize_state


def build_model(header: dict, sections: dict[str, bytes]) -> GPT:
    """The dequantized float model an artifact describes, ready to score."""
    model = GPT(ModelConfig(**header["model_config"]))
    state = dequantize_state(decode_tensors(header, sections), header["quant_index"])
    model.load_state_dict(state)
    return model.eval()
