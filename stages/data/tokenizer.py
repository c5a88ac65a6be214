"""The tokenizer file of a tokenize folder: a SentencePiece model, loaded from its bytes.

Tokenize writes it; every stage that scores (train, quantize, eval) reads it back through here,
so reading the val data never depends on the tokenize stage's training code.
"""

from __future__ import annotations

import sentencepiece as spm

from ..errors import GolfError


def load_processor(model_bytes: bytes, where: str = "tokenizer") -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model_bytes)
    except (RuntimeError, TypeError) as exc:
        raise GolfError(f"{where}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None
