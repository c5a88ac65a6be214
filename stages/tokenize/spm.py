"""SentencePiece BPE training with named specs.

- ``challenge``: the challenge's trainer settings (nmt_nfkc normalization). About 14% of
  documents no longer decode to their original text, so bpb is measured on normalized text.
- ``exact`` (the default for non-challenge data): identical except for identity normalization
  without whitespace cleanup, so every document decodes back to exactly its original bytes.
"""

from __future__ import annotations

import io
import os

import sentencepiece as spm

from ..errors import GolfError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MIN_VOCAB_SIZE = 260  # the 256 byte-fallback pieces + the 4 specials
MAX_VOCAB_SIZE = 65536  # shards store ids as uint16

_COMMON = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    character_coverage=0.999,
    add_dummy_prefix=False,
    hard_vocab_limit=False,
    pad_id=PAD_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    # The default (4192) silently drops longer documents from training.
    max_sentence_length=1 << 20,
)

SPECS: dict[str, dict] = {
    "challenge": {**_COMMON, "normalization_rule_name": "nmt_nfkc"},
    "exact": {**_COMMON, "normalization_rule_name": "identity", "remove_extra_whitespaces": False},
}


def train_tokenizer(documents: list[str], vocab_size: int, spec: str) -> bytes:
    """Train a BPE model on whole documents (one per 'sentence'); return the model file bytes."""
    if spec not in SPECS:
        raise GolfError(f"unknown tokenizer spec {spec!r}; choose one of {', '.join(SPECS)}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise GolfError(f"vocab size must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (256 byte pieces + 4 specials; "
                        f"uint16 shards), got {vocab_size}")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(documents),
            model_writer=writer,
            vocab_size=vocab_size,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **SPECS[spec],
        )
    except RuntimeError as exc:
        raise GolfError(f"SentencePiece training failed: {str(exc).splitlines()[0]}") from None
    return writer.getvalue()


def load_processor(model_bytes: bytes, where: str = "tokenizer") -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model_bytes)
    except (RuntimeError, TypeError) as exc:
        raise GolfError(f"{where}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None


# Text that only an identity normalizer without whitespace cleanup gives back unchanged:
# doubled spaces, a tab, a newline and a ligature that NFKC rewrites.
_ROUND_TRIP_PROBE = "A  b\n\tc \ufb01ne 12\u00b2"


def spec_of(sp: spm.SentencePieceProcessor) -> str:
    """'exact' when the model gives back text unchanged, else 'normalizing' (bpb on normalized text)."""
    exact = sp.decode(sp.encode(_ROUND_TRIP_PROBE)) == _ROUND_TRIP_PROBE
    return "exact" if exact else "normalizing"
