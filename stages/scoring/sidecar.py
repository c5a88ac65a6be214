"""The val byte sidecar, audited exactly: it must count the bytes of the text its tokens rebuild.

A sidecar holds one byte count per val token, and bpb divides by their sum, so it is checked
against what the tokens themselves say, with no allowance:

- the text of each document is rebuilt from its tokens: the tokenizer's decode, then for CaseOps
  data the CaseOps decode (stages/data/caseops.py, an exact inverse that refuses anything
  malformed);
- per document the sidecar sums to the UTF-8 length of that text, and the BOS counts 0;
- per token it counts what the token adds to that text: the byte table's count, 0 for a CaseOps
  marker or escape; a run of byte-fallback pieces is compared as a whole (a character's bytes may
  sit on its last piece).

For a tokenizer that round-trips ('exact') the rebuilt text is the original text, so this proves
the sidecar counts the original bytes. A normalizing tokenizer (nmt_nfkc) rebuilds normalized
text, so a sidecar of original bytes (the challenge's CaseOps exports) fails there; it is checked
against the original val text instead (``audit_against_text``, the data's ``val_text.jsonl``):
the text must encode to the val tokens, each token count the original bytes its piece covers
(the exporters' rule), each document sum to the text's UTF-8 length. Tokenize, import and every
reader of the val data (train, quantize, eval) run the audit; data whose sidecar fails is refused.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..data import caseops
from ..data.tokenizer import piece_spans
from ..errors import GolfError
from .bpb import ByteTable, token_bytes


VAL_TEXT_FILE = "val_text.jsonl"
"""The original val documents, one JSON object {"text": ...} a line, kept where the sidecar needs them."""
# A CaseOps control character in UTF-8 (U+E001 to U+E004): its bytes count 0 where it is a marker.
_CONTROL_UTF8 = re.compile(b"\xee\x80[\x81-\x84]")
_ESC_UTF8 = caseops.ESC.encode("utf-8")


class SidecarMismatch(GolfError):
    """The sidecar does not count the bytes of the text its tokens rebuild."""


def control_ids(sp) -> np.ndarray | None:
    """Token ids of the CaseOps controls (TITLE, ALLCAPS, CAPNEXT, ESC) when the tokenizer reserves
    each as a piece of its own (CaseOps data), else None."""
    ids = [sp.piece_to_id(char) for char in caseops.CONTROLS]
    if any(token == sp.unk_id() or sp.id_to_piece(token) != char for token, char in zip(ids, caseops.CONTROLS)):
        return None
    return np.asarray(ids, dtype=np.int64)


def rebuilt_token_bytes(sp, table: ByteTable, stream: np.ndarray, is_caseops: bool) -> np.ndarray:
    """Per token, the bytes it adds to the rebuilt text: the table's count, with each CaseOps marker
    and escape 0 (an escaped control character keeps its 3 bytes: it is text)."""
    counts = token_bytes(table, stream)
    if is_caseops:
        counts[_marker_positions(stream, control_ids(sp))] = 0
    return counts


def _marker_positions(stream: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Positions of control tokens that act as markers: all but those right after an escape marker."""
    positions = np.flatnonzero(np.isin(stream, controls))
    escape = int(controls[3])
    markers = []
    escaping_until = -1  # the position an escape marker makes literal
    for position in positions.tolist():
        if position == escaping_until:
            continue
        markers.append(position)
        if int(stream[position]) == escape:
            escaping_until = position + 1
    return np.asarray(markers, dtype=np.int64)


def document_starts(stream: np.ndarray, bos_id: int) -> np.ndarray:
    """Index of each document's BOS; the stream must begin with one."""
    starts = np.flatnonzero(stream == bos_id)
    if stream.size and (not starts.size or starts[0] != 0):
        raise SidecarMismatch(f"the val tokens do not begin with BOS ({bos_id})")
    return starts


def rebuilt_lengths(sp, stream: np.ndarray, starts: np.ndarray, is_caseops: bool) -> np.ndarray:
    """UTF-8 length of each document's text rebuilt from its tokens (BOS dropped)."""
    docs = [doc[1:].tolist() for doc in np.split(stream, starts[1:])] if stream.size else []
    texts = sp.decode(docs) if docs else []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for index, text in enumerate(texts):
        if is_caseops:
            try:
                text = caseops.decode(text)
            except caseops.CaseOpsError as exc:
                raise SidecarMismatch(f"val document {index}: its tokens are {exc}") from None
        lengths[index] = len(text.encode("utf-8"))
    return lengths


def audit_sidecar(sp, table: ByteTable, stream: np.ndarray, sidecar: np.ndarray, is_caseops: bool) -> dict:
    """Check ``sidecar`` against the text ``stream`` rebuilds; SidecarMismatch at the first difference,
    else the audit for the manifest."""
    stream = np.asarray(stream, dtype=np.int64)
    sidecar = np.asarray(sidecar, dtype=np.int64)
    if sidecar.size != stream.size:
        raise SidecarMismatch(f"the byte sidecar has {sidecar.size:,} entries for {stream.size:,} val tokens")
    starts = document_starts(stream, sp.bos_id())
    lengths = rebuilt_lengths(sp, stream, starts, is_caseops)
    sums = np.add.reduceat(sidecar, starts) if starts.size else np.zeros(0, dtype=np.int64)
    _check_documents(sidecar, starts, lengths)
    _check_tokens(sp, sidecar, rebuilt_token_bytes(sp, table, stream, is_caseops), stream)
    return {"rule": "exact: per document the UTF-8 length of the text rebuilt from its tokens"
                    + (" (CaseOps-decoded)" if is_caseops else "") + "; per token its bytes of that text",
            "val_docs": int(starts.size), "sidecar_bytes": int(sidecar.sum()), "rebuilt_bytes": int(lengths.sum()),
            "passed": True}


def audit_against_text(sp, stream: np.ndarray, sidecar: np.ndarray, texts: list[str], is_caseops: bool) -> dict:
    """Check ``sidecar`` against the original val documents ``texts``: they must encode (CaseOps-encoded
    first, for CaseOps) to ``stream``, and each token count the original bytes its piece covers."""
    stream = np.asarray(stream, dtype=np.int64)
    sidecar = np.asarray(sidecar, dtype=np.int64)
    if sidecar.size != stream.size:
        raise SidecarMismatch(f"the byte sidecar has {sidecar.size:,} entries for {stream.size:,} val tokens")
    starts = document_starts(stream, sp.bos_id())
    if len(texts) != starts.size:
        raise SidecarMismatch(f"{len(texts):,} original val documents for {starts.size:,} in the val tokens")
    expected = []
    for index, (text, doc) in enumerate(zip(texts, np.split(stream, starts[1:]))):
        tokens, counts = text_token_bytes(sp, text, is_caseops)
        if not np.array_equal(tokens, doc):
            raise SidecarMismatch(f"original val document {index} does not encode to val document {index}'s tokens")
        expected.append(counts)
    lengths = np.asarray([len(text.encode("utf-8")) for text in texts], dtype=np.int64)
    _check_documents(sidecar, starts, lengths)
    _check_tokens(sp, sidecar, np.concatenate(expected) if expected else sidecar, stream)
    return {"rule": "original text: it encodes to the val tokens; per document its UTF-8 length; per token the "
                    "original bytes its piece covers" + (" (CaseOps markers 0)" if is_caseops else ""),
            "val_docs": int(starts.size), "sidecar_bytes": int(sidecar.sum()), "original_bytes": int(lengths.sum()),
            "passed": True}


def text_token_bytes(sp, text: str, is_caseops: bool) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] + the tokens of one original document, and each token's original bytes: those of the input
    its piece covers, CaseOps markers and escapes 0 (an escaped control keeps its 3), BOS 0. A character
    spelled with byte pieces lands on its last piece (SentencePiece gives it the whole surface)."""
    encoded = (caseops.encode(text) if is_caseops else text).encode("utf-8")
    weights = np.ones(len(encoded) + 1, dtype=np.int64)
    weights[0] = 0  # cumulative sums start at 0
    if is_caseops:
        literal_at = -1  # where an escape marker makes the next control literal
        for match in _CONTROL_UTF8.finditer(encoded):
            if match.start() == literal_at:
                continue
            weights[match.start() + 1 : match.end() + 1] = 0
            if match.group() == _ESC_UTF8:
                literal_at = match.end()
    before = np.cumsum(weights)
    spans = np.asarray(piece_spans(sp, encoded.decode("utf-8")), dtype=np.int64).reshape(-1, 3)
    tokens = np.concatenate([[sp.bos_id()], spans[:, 0]])
    return tokens, np.concatenate([[0], before[spans[:, 2]] - before[spans[:, 1]]])


def read_val_text(path) -> list[str]:
    """The documents of a ``val_text.jsonl``."""
    with open(path, "rb") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def val_text_bytes(texts: list[str]) -> bytes:
    """The ``val_text.jsonl`` of ``texts``."""
    return b"".join(json.dumps({"text": text}, ensure_ascii=False).encode("utf-8") + b"\n" for text in texts)


def _check_documents(sidecar: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Per document the sidecar sums to ``lengths``; each BOS counts 0."""
    sums = np.add.reduceat(sidecar, starts) if starts.size else np.zeros(0, dtype=np.int64)
    wrong_docs = np.flatnonzero(sums != lengths)
    if wrong_docs.size:
        first = int(wrong_docs[0])
        raise SidecarMismatch(
            f"byte sidecar: {wrong_docs.size:,} of {starts.size:,} val documents do not sum to the UTF-8 length of "
            f"their text (sidecar {int(sidecar.sum()):,} bytes, text {int(lengths.sum()):,}); "
            f"first: document {first} (val token {int(starts[first])}): sidecar {int(sums[first]):,}, "
            f"text {int(lengths[first]):,}")
    if sidecar[starts].any():
        first = int(starts[np.flatnonzero(sidecar[starts])[0]])
        raise SidecarMismatch(f"byte sidecar: the BOS at val token {first} counts {int(sidecar[first])} bytes, not 0")


def _check_tokens(sp, sidecar: np.ndarray, expected: np.ndarray, stream: np.ndarray) -> None:
    """Token by token (a run of byte pieces as one): no bytes moved between tokens of a document."""
    is_byte = np.asarray([sp.is_byte(token) for token in range(sp.vocab_size())], dtype=bool)
    byte_piece = is_byte[np.minimum(stream, sp.vocab_size() - 1)]
    continues_run = np.concatenate([[False], byte_piece[1:] & byte_piece[:-1]])
    starts = np.flatnonzero(~continues_run)
    wrong = np.flatnonzero(np.add.reduceat(sidecar, starts) != np.add.reduceat(expected, starts))
    if wrong.size:
        first = int(starts[wrong[0]])
        raise SidecarMismatch(
            f"byte sidecar: {wrong.size:,} val tokens count bytes other than their text's; first: val token "
            f"{first} ({sp.id_to_piece(int(stream[first]))!r}): sidecar {int(sidecar[first])}, "
            f"text {int(expected[first])}")
