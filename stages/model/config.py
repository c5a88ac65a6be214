"""The model's shape and switches: everything needed to rebuild the network from an artifact."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """A GPT of the naive-baseline family (REFERENCE section 5)."""

    vocab_size: int = 1024
    """Embedding rows; at least the tokenizer's vocab size."""
    num_layers: int = 9
    """Transformer blocks. The first half push U-Net skips, the second half pop them."""
    model_dim: int = 512
    """Residual stream width."""
    num_heads: int = 8
    """Query heads."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention when fewer than num_heads)."""
    mlp_mult: float = 2.0
    """MLP hidden width as a multiple of model_dim."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    logit_softcap: float = 30.0
    """Logits become softcap * tanh(z / softcap); 0 disables the cap."""
    qk_gain_init: float = 1.5
    """Initial value of the learned per-head query scale (after QK RMSNorm)."""
    tie_embeddings: bool = True
    """Use the token embedding as the output head."""
    tied_embed_init_std: float = 0.005
    """Init std of the (tied) embedding."""

    def __post_init__(self) -> None:
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if (self.model_dim // self.num_heads) % 2:
            raise ValueError("head dim must be even for RoPE")
        if self.num_layers < 1 or self.vocab_size < 2:
            raise ValueError("need at least one layer and two tokens")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)
