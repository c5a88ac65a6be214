"""What the quantize stage records beside the codes, for the artifact to be built from.

``quantized.safetensors`` holds the stored tensors and, in its string-to-string metadata, the
fields the runtime rebuilds the model from (model config, quantization index, training sequence
length) and the run's lineage, each as JSON text (the sequence length as a decimal). Quantize
writes it with ``as_metadata``; pack and inspect read it with ``from_metadata``. Runs in golf,
never shipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import GolfError


@dataclass(frozen=True)
class QuantizedMetadata:
    """The quantize stage's record of the weights it stored: what an artifact's header is made of."""

    model_config: dict
    """The model's ModelConfig as a dict (the train run's lineage.model_config)."""
    lineage: dict
    """The train run's lineage (tokenizer hash, vocab size, model config, ...)."""
    train_seq_len: int
    """The sequence length the model was trained at (the default scoring window)."""
    quant_index: dict
    """Parameter name -> how it is stored (kind, bits, scales, LQER factors): what dequantization reads."""

    def as_metadata(self) -> dict[str, str]:
        """The safetensors metadata: every field as text, in the order quantize has always written them."""
        return {"model_config": json.dumps(self.model_config), "lineage": json.dumps(self.lineage),
                "train_seq_len": str(self.train_seq_len), "quant_index": json.dumps(self.quant_index)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str) -> QuantizedMetadata:
        """The record in a safetensors file's metadata; a field missing or unreadable is one line
        naming ``where`` (the file) and the field."""
        fields = {}
        for field, parse in _PARSE.items():
            try:
                fields[field] = parse(metadata[field])
            except (KeyError, ValueError):  # json.JSONDecodeError is a ValueError
                raise GolfError(f"{where} records no readable {field}") from None
        return cls(**fields)


# Each field's reading from its text, in the order a reader reports the first bad one.
_PARSE = {"model_config": json.loads, "quant_index": json.loads, "train_seq_len": int, "lineage": json.loads}
