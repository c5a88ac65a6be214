"""Which quantization group a weight belongs to: attention, mlp, embedding or other.

The groups are named from the model's parameter names. The records give each group its own bits
and clip width (docs/REFERENCE.md section 6, "Quantization"), and `golf pack` compresses each group as its
own stream (the header records each tensor's group, so eval never needs this). Stdlib only.
"""

from __future__ import annotations

GROUPS = ("attention", "mlp", "embedding", "other")
EMBEDDING_NAMES = ("tok_emb.", "bigram.embed.", "value_embed.embed.", "lm_head.")


def tensor_group(name: str) -> str:
    """The group of a parameter (a stored tensor's base name, before any '.q'/'.scale' suffix)."""
    if name.startswith(EMBEDDING_NAMES):
        return "embedding"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"
