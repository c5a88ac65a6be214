"""Causal self-attention with every switch of the records: GQA, QK-norm, partial RoPE, QK-gain,
XSA, the attention output gate, a shared value embedding, and masking at document boundaries
(the kernels and the boundaries: attention_backends.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention_backends import AttentionPlan, attend
from .config import ModelConfig
from .layers import Linear, Rotary, rms_norm
from .lora import LoRASlot, adapted


def exclusive(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's output its component along its own normalized value vector."""
    v_hat = F.normalize(v, dim=-1)
    return y - (y * v_hat).sum(dim=-1, keepdim=True) * v_hat


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config = config
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = Linear(config.model_dim, config.model_dim)
        self.c_k = Linear(config.model_dim, kv_dim)
        self.c_v = Linear(config.model_dim, kv_dim)
        self.proj = Linear(config.model_dim, config.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.num_heads,), config.qk_gain_init))
        self.rotary = Rotary(config.rotary_dims, config.rope_base, config.rope_train_len)
        self.xsa = config.xsa_last_n > 0 and layer >= config.num_layers - config.xsa_last_n
        self.gate = Linear(config.attn_gate_width, self.num_heads, zero_init=True) if config.attn_gate_width else None
        uses_ve = config.value_embed_dim > 0 and layer in config.value_embed_layers
        # This layer's weight on the shared value embedding (PR #401: one learned scalar per layer).
        self.value_scale = nn.Parameter(torch.ones(1)) if uses_ve else None

    def forward(self, x: torch.Tensor, plan: AttentionPlan | None = None,
                value_embed: torch.Tensor | None = None, adapters: LoRASlot | None = None) -> torch.Tensor:
        """``plan``: this forward's backend and document boundaries (None: causal SDPA).
        ``adapters`` add their q, k, v (before the value embedding) and o deltas, all fed ``x``."""
        batch, seq_len, dim = x.shape
        q = adapted(self.c_q(x), adapters, "q", x)
        k = adapted(self.c_k(x), adapters, "k", x)
        q = q.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = adapted(self.c_v(x), adapters, "v", x)
        if self.value_scale is not None:
            v = v + self.value_scale.to(v.dtype) * value_embed
        v = v.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.config.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k = self.rotary(q), self.rotary(k)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = attend(q, k, v, plan)
        if self.xsa:
            y = exclusive(y, v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1))
        if self.gate is not None:
            y = y * self._gate(x).transpose(1, 2)[..., None]
        return adapted(self.proj(y.transpose(1, 2).reshape(batch, seq_len, dim)), adapters, "o", x)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head multiplier (batch, seq, heads): 2 sigmoid(W x[:w]) is 1 at init; sparse is not."""
        logits = self.gate(x[..., : self.config.attn_gate_width])
        if self.config.attn_gate_sparse:
            return torch.sigmoid(0.5 * logits)
        return 2 * torch.sigmoid(logits)
