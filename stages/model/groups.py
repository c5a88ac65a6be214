"""Which quantization group a weight belongs to: attention, mlp, embedding or other.

A group follows from the parameter's role and where it sits (stages/model/roles.py): the lookup
tables and the head are the embedding group; a block's attention and MLP parameters are the
attention and mlp groups; everything else is other. The records give each group its own bits and
clip width (docs/REFERENCE.md section 6, "Quantization"), and `golf pack` compresses each group as
its own stream (the header records each tensor's group, so eval never needs this).
"""

from __future__ import annotations

from .roles import Role, block_part, owning_parameter, parameter_role

GROUPS = ("attention", "mlp", "embedding", "other")
# Tables read out by row: the embeddings and the head.
EMBEDDING_GROUP_ROLES = (Role.EMBEDDING, Role.HEAD)
# A block's submodule -> its group.
BLOCK_GROUPS = {"attn": "attention", "mlp": "mlp"}


def tensor_group(name: str) -> str:
    """The group of a parameter, or of a stored tensor by the parameter it holds ('.q', '.scale',
    '.lqer.*' suffixes)."""
    parameter = owning_parameter(name)
    if parameter_role(parameter) in EMBEDDING_GROUP_ROLES:
        return "embedding"
    inner = block_part(parameter)
    return "other" if inner is None else BLOCK_GROUPS.get(inner.split(".")[0], "other")
