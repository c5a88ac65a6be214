"""The byte audit: prove that the bytes bpb divides by are the bytes of the text.

Three independent counts over the val documents must agree exactly:
- the byte table (the challenge's scoring rule) summed over the val token stream,
- the UTF-8 length of the decoded val text,
- the per-token sidecar (piece surface text, written next to the val shards),
and, for exact (round-trip) tokenizers, the UTF-8 length of the original val text.
Each historical bpb bug (docs/REFERENCE.md section 4) breaks one of these equalities.

The sidecar is also audited exactly against the text its tokens rebuild, token by token and
document by document (``scoring/sidecar.py``, which eval runs again on the data it reads).
"""

from __future__ import annotations

import numpy as np

from ..errors import GolfError
from ..scoring.bpb import SPACE_MARK, ByteTable, space_piece_id, stream_bytes


def surface_bytes(sp, vocab_size: int | None = None) -> np.ndarray:
    """Bytes each token adds to decoded text, counted from its surface ('▁' is one space byte)."""
    size = max(sp.vocab_size(), vocab_size or 0)
    out = np.zeros(size, dtype=np.int64)
    for token in range(sp.vocab_size()):
        if sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token):
            continue
        if sp.is_byte(token):
            out[token] = 1
        else:
            out[token] = len(sp.id_to_piece(token).replace(SPACE_MARK, " ").encode("utf-8"))
    return out


def audit_val_bytes(
    sp,
    table: ByteTable,
    doc_tokens: list[np.ndarray],
    documents: list[str] | None,
    sidecar: np.ndarray | None,
    origins: list[str] | None = None,
) -> dict:
    """Compare the byte counts of the val split; raise GolfError on any mismatch.

    ``doc_tokens`` are the val documents as written (each starting with BOS), ``sidecar`` the
    per-token byte counts of the same stream (None when there is none to check), ``documents`` the original texts when the
    tokenizer is exact (None otherwise), ``origins`` where each document came from (for messages).
    """
    if space_piece_id(sp) is None:
        raise GolfError("byte audit failed: the tokenizer has no standalone '▁' piece (spaces would be scored as 3 byte tokens)")
    stream = np.concatenate(doc_tokens) if doc_tokens else np.zeros(0, dtype=np.int64)
    table_bytes = stream_bytes(table, stream)
    sidecar_bytes = None if sidecar is None else int(np.asarray(sidecar, dtype=np.int64).sum())
    decoded_bytes = 0
    decoded_mismatch = 0
    first_difference = ""
    for index, tokens in enumerate(doc_tokens):
        decoded = sp.decode(tokens[1:].tolist())
        decoded_bytes += len(decoded.encode("utf-8"))
        if documents is not None and decoded != documents[index]:
            decoded_mismatch += 1
            first_difference = first_difference or _describe_difference(index, origins, documents[index], decoded)
    result = {
        "val_docs": len(doc_tokens),
        "val_tokens": int(stream.size),
        "table_bytes": table_bytes,
        "decoded_bytes": decoded_bytes,
        "sidecar_bytes": sidecar_bytes,
        "space_piece": True,
    }
    problems = []
    if table_bytes != decoded_bytes:
        problems.append(f"table {table_bytes} != decoded {decoded_bytes}")
    if sidecar_bytes is not None and sidecar_bytes != decoded_bytes:
        problems.append(f"sidecar {sidecar_bytes} != decoded {decoded_bytes}")
    if documents is not None:
        original_bytes = sum(len(doc.encode("utf-8")) for doc in documents)
        result["original_bytes"] = original_bytes
        result["docs_not_round_tripping"] = decoded_mismatch
        if original_bytes != decoded_bytes:
            problems.append(f"original {original_bytes} != decoded {decoded_bytes}")
        if decoded_mismatch:
            problems.append(f"{decoded_mismatch} val documents do not decode to their original text ({first_difference})")
    if problems:
        raise GolfError("byte audit failed: " + "; ".join(problems))
    result["passed"] = True
    return result


def _describe_difference(index: int, origins: list[str] | None, original: str, decoded: str) -> str:
    """'first: val document 3 (a.txt), character 17 is U+000D, decoded as U+000A'."""
    where = f"val document {index}" + (f" ({origins[index]})" if origins else "")
    offset = next((i for i, (a, b) in enumerate(zip(original, decoded)) if a != b), min(len(original), len(decoded)))
    was = f"U+{ord(original[offset]):04X}" if offset < len(original) else "the end"
    got = f"U+{ord(decoded[offset]):04X}" if offset < len(decoded) else "the end"
    return f"first: {where}, character {offset} is {was}, decoded as {got}"
