"""What each parameter of the GPT is for, in one table: its role decides how it trains
(stages/train/optim.py: Muon or Adam, at which learning rate), whether it is quantized or kept float
(stages/quantize/quantizer.py) and, with its name, its quantization group (stages/model/groups.py).

Every parameter name is declared here, exactly (a block's parameters once, for every layer). A
parameter no entry names is an error that names it: a new learned tensor gets no Muon and no int6
codes by accident. Not shipped in artifacts (eval never asks).
"""

from __future__ import annotations

from enum import Enum

import torch

from ..errors import GolfError

BLOCKS = "blocks"


class Role(Enum):
    """What a parameter is for."""

    MATRIX = "matrix"
    """A 2-D weight inside the network: Muon at matrix_lr; quantized on its group's grid."""
    EMBEDDING = "embedding"
    """A lookup table (token, bigram-hash, value embedding): Adam at embed_lr, bf16 on CUDA; quantized
    in the embedding group. The tied token embedding is also the head."""
    HEAD = "head"
    """The untied output head: Adam at head_lr; quantized in the embedding group."""
    CONTROL = "control"
    """A small tensor that steers the residual stream (scales, mixes, gains, gates): Adam at scalar_lr;
    kept float (attention gates: unless the scheme's gate_bits)."""


MATRIX, EMBEDDING, HEAD, CONTROL = Role.MATRIX, Role.EMBEDDING, Role.HEAD, Role.CONTROL

# Parameters outside the blocks (gpt.py, embeddings.py), by full name.
MODEL_ROLES = {
    "tok_emb.weight": EMBEDDING,
    "lm_head.weight": HEAD,
    "bigram.embed.weight": EMBEDDING, "bigram.proj.weight": MATRIX, "bigram.scale": CONTROL,
    "value_embed.embed.weight": EMBEDDING, "value_embed.proj.weight": MATRIX, "value_embed.scale": CONTROL,
    "smear.gate.weight": CONTROL, "smear.smear_lambda": CONTROL,  # SmearGate
    "smear.gate": CONTROL,  # ChannelSmear
    "skip_weights": CONTROL, "skip_gates": CONTROL,
}
# Parameters of every block (gpt.py Block and MLP, attention.py), named inside it: blocks.<layer>.<name>.
BLOCK_ROLES = {
    "attn.c_q.weight": MATRIX, "attn.c_k.weight": MATRIX, "attn.c_v.weight": MATRIX, "attn.proj.weight": MATRIX,
    "attn.q_gain": CONTROL, "attn.gate.weight": CONTROL, "attn.value_scale": CONTROL,
    "mlp.fc.weight": MATRIX, "mlp.proj.weight": MATRIX,
    "attn_scale": CONTROL, "mlp_scale": CONTROL, "resid_mix": CONTROL, "lane_resid": CONTROL, "lane_post": CONTROL,
}


def parameter_role(name: str, tensor: torch.Tensor | None = None) -> Role:
    """The role of the parameter ``name`` (as ``named_parameters`` and the state dict spell it). With
    ``tensor``, also checks that a matrix, embedding or head is 2-D."""
    role = _declared(name)
    if role is None:
        raise GolfError(f"parameter {name} has no role; declare it in stages/model/roles.py")
    if tensor is not None and role is not CONTROL and tensor.ndim != 2:
        raise GolfError(f"parameter {name} is a {role.value} of shape {list(tensor.shape)}; a {role.value} is 2-D")
    return role


def owning_parameter(stored: str) -> str:
    """The parameter a stored tensor holds (part of): its own name, or the longest dotted prefix of
    it that names a parameter ('blocks.0.mlp.fc.weight.lqer.a.q' -> 'blocks.0.mlp.fc.weight')."""
    parts = stored.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if _declared(name) is not None:
            return name
    raise GolfError(f"stored tensor {stored} belongs to no parameter with a role (stages/model/roles.py)")


def block_part(name: str) -> str | None:
    """A block parameter's name inside its block ('blocks.3.attn.c_q.weight' -> 'attn.c_q.weight');
    None outside the blocks."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == BLOCKS and parts[1].isdigit():
        return parts[2]
    return None


def _declared(name: str) -> Role | None:
    inner = block_part(name)
    return MODEL_ROLES.get(name) if inner is None else BLOCK_ROLES.get(inner)
