"""Lineage checks: stages refuse to combine artifacts made from different tokenizers or models."""

from __future__ import annotations

from ..errors import GolfError


def require_same_tokenizer(a: dict, a_name: str, b: dict, b_name: str) -> None:
    """Both lineages must name the same tokenizer (by sha256 of its model file) and vocab size."""
    sha_a, sha_b = a.get("tokenizer_sha256"), b.get("tokenizer_sha256")
    if not sha_a or not sha_b:
        raise GolfError(f"lineage: {a_name if not sha_a else b_name} records no tokenizer hash")
    if sha_a != sha_b:
        raise GolfError(
            f"lineage: {a_name} was made with tokenizer {sha_a[:12]}, {b_name} with tokenizer {sha_b[:12]}; "
            "they cannot be combined"
        )
    if a.get("vocab_size") != b.get("vocab_size"):
        raise GolfError(f"lineage: vocab size {a.get('vocab_size')} ({a_name}) != {b.get('vocab_size')} ({b_name})")
