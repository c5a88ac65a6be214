"""Token-level extras around the embedding: SmearGate (two forms), BigramHash and the shared value
embedding, each as the record that introduced it wrote it (docs/REFERENCE.md section 8).

SmearGate and BigramHash look at the previous token. With ``smear_bos_mask`` (the default) a BOS
token sees no previous token, exactly as the first position of a window does, so no document reads
the one before it (the leak #1851 fixed); the records before the fix ran without it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Linear

SMEAR_WIDTH = 12
# The odd multipliers of PR #401's bigram hash: bucket = (A * token) XOR (B * previous) mod (buckets - 1).
BIGRAM_HASH_CURRENT, BIGRAM_HASH_PREVIOUS = 36313, 27191
BIGRAM_SCALE_INIT = 0.05
VALUE_EMBED_INIT_STD = 0.01
VALUE_EMBED_SCALE_INIT = 0.1


def previous(x: torch.Tensor) -> torch.Tensor:
    """x shifted one position to the right along dim 1, zeros at position 0."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


def document_starts(input_ids: torch.Tensor, bos_id: int, mask_bos: bool) -> torch.Tensor:
    """(batch, seq) bool: positions with no previous token (the window start and, masked, every BOS)."""
    starts = (input_ids == bos_id) if mask_bos else torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 0] = True
    return starts


def previous_in_document(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """The previous position's vector, zero where a position has none."""
    return previous(x) * (~starts)[..., None].to(x.dtype)


def scaled_orthogonal_(linear: Linear, scale: float) -> bool:
    """The records' init of a non-output projection with both sides >= 64: orthogonal times
    ``scale``. Returns whether it applied (smaller projections keep their init)."""
    if min(linear.weight.shape) < 64:
        return False
    with torch.no_grad():
        nn.init.orthogonal_(linear.weight)
        linear.weight.mul_(scale)
    return True


class SmearGate(nn.Module):
    """#1667 lineage, on the raw embedding: x_t += lambda * sigmoid(W x_t[:12]) * x_{t-1};
    W and lambda zero-init (transparent)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = Linear(SMEAR_WIDTH, 1, zero_init=True)
        self.smear_lambda = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.gate(x[..., :SMEAR_WIDTH]))
        return x + gate * previous_in_document(x, starts)


class ChannelSmear(nn.Module):
    """PR #401, after the first norm: x = (1 - s) * x + s * x_prev, s = sigmoid(g) per channel,
    g zero-init (an even blend at init)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(config.model_dim))

    def forward(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        share = torch.sigmoid(self.gate.to(x.dtype))
        return torch.lerp(x, previous_in_document(x, starts), share)


def bigram_buckets(input_ids: torch.Tensor, starts: torch.Tensor, buckets: int) -> torch.Tensor:
    """PR #401's hash of (previous, current) token into buckets - 1 slots; the last bucket stands
    for "no previous token" (``starts``)."""
    current = input_ids.to(torch.int64)
    hashed = torch.bitwise_xor(BIGRAM_HASH_CURRENT * current, BIGRAM_HASH_PREVIOUS * previous(current)) % (buckets - 1)
    return torch.where(starts, buckets - 1, hashed)


class BigramHash(nn.Module):
    """Embedding of the bigram bucket, projected to the model width, times a learned scalar."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.buckets = config.bigram_hash_buckets
        self.embed = nn.Embedding(self.buckets, config.bigram_hash_dim)
        nn.init.normal_(self.embed.weight, std=config.tied_embed_init_std)
        self.proj = Linear(config.bigram_hash_dim, config.model_dim, zero_init=True)
        self.scale = nn.Parameter(torch.full((1,), BIGRAM_SCALE_INIT))

    def record_init(self, scale: float) -> None:
        """PR #401's init: a scaled orthogonal projection over a zero table. Where the projection is
        too small for it, it stays zero over a random table (both zero would never train)."""
        if scaled_orthogonal_(self.proj, scale):
            nn.init.zeros_(self.embed.weight)

    def forward(self, input_ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embed(bigram_buckets(input_ids, starts, self.buckets)))
        return h * self.scale.to(h.dtype)


class ValueEmbedding(nn.Module):
    """One token table projected once to the KV width and scaled; each layer that adds it to its
    values multiplies it by its own learned scale (CausalSelfAttention.value_scale)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.value_embed_dim)
        nn.init.normal_(self.embed.weight, std=VALUE_EMBED_INIT_STD)
        self.proj = Linear(config.value_embed_dim, config.num_kv_heads * config.head_dim, zero_init=True)
        self.scale = nn.Parameter(torch.full((1,), VALUE_EMBED_SCALE_INIT))

    def record_init(self, scale: float) -> None:
        scaled_orthogonal_(self.proj, scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embed(input_ids))
        return h * self.scale.to(h.dtype)
