"""The GPT of the naive baseline (REFERENCE section 5), written to be read top-down.

Embedding -> RMSNorm -> blocks with U-Net skips (first half push, second half pop) -> RMSNorm
-> tied head -> logit softcap. Each block mixes its input with the first embedding (resid_mix),
then adds scaled attention and scaled relu^2-MLP outputs. Output projections start at zero, so
every block is the identity at init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# Small learned tensors that steer the residual stream; optimizers give them Adam, not Muon,
# and quantizers keep them in float.
CONTROL_TENSOR_NAMES = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary position embedding over the full head dim, cached per sequence length."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, seq_len: int, device: torch.device, dtype: torch.dtype):
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            positions = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(positions, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def zero_init_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


class CausalSelfAttention(nn.Module):
    """GQA attention with QK RMSNorm, RoPE and a learned per-head query gain."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = nn.Linear(config.model_dim, config.model_dim, bias=False)
        self.c_k = nn.Linear(config.model_dim, kv_dim, bias=False)
        self.c_v = nn.Linear(config.model_dim, kv_dim, bias=False)
        self.proj = zero_init_linear(config.model_dim, config.model_dim)
        self.q_gain = nn.Parameter(torch.full((self.num_heads,), config.qk_gain_init))
        self.rotary = Rotary(self.head_dim, config.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, dim = x.shape
        q = self.c_q(x).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary.cos_sin(seq_len, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.proj(y.transpose(1, 2).reshape(batch, seq_len, dim))


class MLP(nn.Module):
    """relu(x W_up)^2 W_down."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.model_dim, config.mlp_hidden, bias=False)
        self.proj = zero_init_linear(config.mlp_hidden, config.model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.model_dim
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # Row 0 weighs the running stream, row 1 the first embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=config.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.num_encoder_layers = config.num_layers // 2
        self.num_decoder_layers = config.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.model_dim))
        self.lm_head = None if config.tie_embeddings else zero_init_linear(config.model_dim, config.vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab) after the softcap."""
        x = rms_norm(self.tok_emb(input_ids))
        x0 = x
        skips = []
        for block in self.blocks[: self.num_encoder_layers]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.num_encoder_layers :]):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0)
        x = rms_norm(x)
        head = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, head.to(x.dtype))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in fp32 over every target."""
        logits = self(input_ids)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
