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

from ..data.tokenizer import load_processor, proto_fields  # noqa: F401  (the tokenize stages use them from here)
from ..errors import GolfError
from ..scoring.bpb import SPACE_MARK

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


def train_tokenizer(documents: list[str], vocab_size: int, spec: str, reserved: tuple[str, ...] = ()) -> bytes:
    """Train a BPE model on whole documents (one per 'sentence'); return the model file bytes.

    ``reserved`` characters become user-defined pieces, ids 4 on in order, each always a piece of its
    own (CaseOps reserves its four controls so: ids 4 to 7, as the records' tokenizer)."""
    if spec not in SPECS:
        raise GolfError(f"unknown tokenizer spec {spec!r}; choose one of {', '.join(SPECS)}")
    smallest = MIN_VOCAB_SIZE + len(reserved)
    if not smallest <= vocab_size <= MAX_VOCAB_SIZE:
        raise GolfError(f"vocab size must be in [{smallest}, {MAX_VOCAB_SIZE}] (256 byte pieces + 4 specials"
                        f"{f' + {len(reserved)} reserved' if reserved else ''}; uint16 shards), got {vocab_size}")
    extra = {"user_defined_symbols": list(reserved)} if reserved else {}
    if not any(document.strip() for document in documents):  # SentencePiece would fail with an INTERNAL check
        raise GolfError("no text to train the tokenizer on: every train document is empty")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(documents),
            model_writer=writer,
            vocab_size=vocab_size,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **SPECS[spec],
            **extra,
        )
    except RuntimeError as exc:
        raise GolfError(f"SentencePiece training failed: {str(exc).splitlines()[0]}") from None
    return writer.getvalue()


# Text that only an identity normalizer without whitespace cleanup gives back unchanged:
# doubled spaces, a tab, a newline and a ligature that NFKC rewrites.
_ROUND_TRIP_PROBE = "A  b\n\tc \ufb01ne 12\u00b2"


def spec_of(sp: spm.SentencePieceProcessor) -> str:
    """'exact' when the model gives back text unchanged, else 'normalizing' (bpb on normalized text)."""
    exact = sp.decode(sp.encode(_ROUND_TRIP_PROBE)) == _ROUND_TRIP_PROBE
    return "exact" if exact else "normalizing"


def encode_documents(sp: spm.SentencePieceProcessor, texts: list[str], origins: list[str], exact: bool) -> list[list[int]]:
    """Token ids of each text; for an exact tokenizer a literal '▁' (U+2581) is kept as its three
    UTF-8 byte pieces.

    SentencePiece writes spaces as '▁', so it reads a '▁' in the input as a space and decodes it
    as one: the text would lose two bytes and the byte table would disagree with it. Byte pieces
    decode to the character itself and the table counts them as its three bytes. A normalizing
    tokenizer is left to read it as a space, like the rest of the whitespace it rewrites
    (encoding around the mark would let it trim the real spaces next to it).
    """
    out = sp.encode(texts, out_type=int)
    for index, text in enumerate(texts):
        if exact and SPACE_MARK in text:
            out[index] = _encode_keeping_space_marks(sp, text, origins[index])
    return out


def _encode_keeping_space_marks(sp: spm.SentencePieceProcessor, text: str, origin: str) -> list[int]:
    mark_ids = [sp.piece_to_id(f"<0x{byte:02X}>") for byte in SPACE_MARK.encode("utf-8")]
    if not all(sp.is_byte(token) for token in mark_ids):
        offset = text.index(SPACE_MARK)
        raise GolfError(
            f"document {origin}: U+2581 at character {offset} cannot be represented: SentencePiece reads it "
            "as a space and this tokenizer has no byte fallback pieces to keep it"
        )
    ids: list[int] = []
    for number, segment in enumerate(text.split(SPACE_MARK)):
        if number:
            ids += mark_ids
        ids += sp.encode(segment, out_type=int)
    return ids
