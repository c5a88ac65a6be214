"""Causal self-attention with every switch of the records: GQA, QK-norm, partial RoPE, QK-gain,
XSA, the attention output gate, a shared value embedding, and masking at document boundaries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import Linear, Rotary, rms_norm
from .lora import LoRASlot, adapted


def flash_functions():
    """(flash_attn_func, flash_attn_varlen_func) when flash-attn is installed, else None."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_func, flash_attn_varlen_func


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None,
           flash=None) -> torch.Tensor:
    """Causal attention over (batch, heads, seq, head_dim); with ``doc_ids`` no position attends to
    an earlier document. flash-attn runs on CUDA in half precision when it is importable (``flash``
    overrides the choice, for tests); PyTorch SDPA with native GQA everywhere else."""
    if flash is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        flash = flash_functions()
    if flash is not None:
        return _attend_flash(q, k, v, doc_ids, *flash)
    gqa = k.size(1) != q.size(1)
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    seq_len = q.size(-2)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(causal & same_doc)[:, None], enable_gqa=gqa)


def _attend_flash(q, k, v, doc_ids, flash_func, flash_varlen_func) -> torch.Tensor:
    """flash-attn wants (batch, seq, heads, dim); documents become varlen segments."""
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    batch, seq_len, heads, dim = q.shape
    if doc_ids is None:
        return flash_func(q, k, v, causal=True).transpose(1, 2)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]  # a new segment at every BOS and every row start
    begin = torch.nonzero(starts.flatten()).flatten()
    cu_seqlens = torch.cat((begin, begin.new_tensor([batch * seq_len]))).to(torch.int32)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    flat = [t.reshape(batch * seq_len, t.size(2), dim) for t in (q, k, v)]
    out = flash_varlen_func(*flat, cu_seqlens, cu_seqlens, max_len, max_len, causal=True)
    return out.view(batch, seq_len, heads, dim).transpose(1, 2)


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

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None,
                value_embed: torch.Tensor | None = None, adapters: LoRASlot | None = None) -> torch.Tensor:
        """``adapters`` add their q, k, v (before the value embedding) and o deltas, all fed ``x``."""
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
        y = attend(q, k, v, doc_ids)
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
