"""Token-level extras around the embedding: SmearGate, BigramHash and the shared value embedding.

Each one looks at the previous token, so each one must stop at document boundaries: a BOS
token never receives anything from the token before it (the SmearGate leak of #1797).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Linear

SMEAR_WIDTH = 12
# Odd multiplier for the bigram hash: spreads (prev, cur) pairs over the buckets.
BIGRAM_HASH_MULT = 1_000_003


def previous(x: torch.Tensor) -> torch.Tensor:
    """x shifted one position to the right along dim 1, zeros at position 0."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


class SmearGate(nn.Module):
    """x_t += lambda * sigmoid(W x_t[:12]) * x_{t-1}; W and lambda zero-init (transparent)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bos_id = config.bos_id
        self.gate = Linear(SMEAR_WIDTH, 1, zero_init=True)
        self.smear_lambda = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x[..., :SMEAR_WIDTH]))
        gate = gate * (input_ids != self.bos_id)[..., None].to(gate.dtype)  # the BOS fix (#1851)
        return x + self.smear_lambda.to(x.dtype) * gate * previous(x)


class BigramHash(nn.Module):
    """Embedding of a hash of (previous token, token), projected to the model width (zero-init)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bos_id = config.bos_id
        self.buckets = config.bigram_hash_buckets
        self.embed = nn.Embedding(self.buckets, config.bigram_hash_dim)
        nn.init.normal_(self.embed.weight, std=config.tied_embed_init_std)
        self.proj = Linear(config.bigram_hash_dim, config.model_dim, zero_init=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        prev = previous(input_ids)
        bucket = (prev * BIGRAM_HASH_MULT + input_ids) % (self.buckets - 1)
        # The last bucket means "no previous token": window starts and BOS tokens.
        starts = torch.zeros_like(input_ids, dtype=torch.bool)
        starts[:, 0] = True
        bucket = torch.where(starts | (input_ids == self.bos_id), self.buckets - 1, bucket)
        return self.proj(self.embed(bucket))


class ValueEmbedding(nn.Module):
    """One token embedding shared by the layers that add it (projected per layer) to their values."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.value_embed_dim)
        nn.init.normal_(self.embed.weight, std=config.tied_embed_init_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)
