"""Small building blocks shared by the attention, MLP and embedding code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in on ``device``: autocast's when it is on there, else ``dtype``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without weights over the last dim."""
    return F.rms_norm(x, (x.size(-1),))


def fake_quantize_rows(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each row to a symmetric int grid with the row's max |w| as the top level."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / levels
    return torch.clamp(torch.round(weight / scale), -levels, levels) * scale


class Linear(nn.Linear):
    """Bias-free linear layer that can train through fake quantization (late QAT).

    With ``fake_quant_bits`` set, the forward pass uses the quantized weight while gradients flow
    to the float weight unchanged (straight-through estimator).
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.fake_quant_bits = 0
        # Zero-init output projections make a new block the identity; orthogonal init skips them.
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.fake_quant_bits:
            weight = weight + (fake_quantize_rows(weight, self.fake_quant_bits) - weight).detach()
        return F.linear(x, weight.to(x.dtype))


class Rotary(nn.Module):
    """Rotary position embedding over the first ``dims`` dims of each head, cached per length.

    With ``train_len`` set, a sequence longer than it gets a stretched base,
    base * (L / train_len)^(dims / (dims - 2)), as PR #401 did when training at twice its length.
    """

    def __init__(self, dims: int, base: float, train_len: int = 0):
        super().__init__()
        self.dims, self.base, self.train_len = dims, base, train_len
        self.register_buffer("inv_freq", self.inverse_frequencies(base), persistent=False)
        self._cache: tuple | None = None

    def inverse_frequencies(self, base: float) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dims, 2, dtype=torch.float32) / self.dims))

    def base_for(self, seq_len: int) -> float:
        """The base used at ``seq_len``: stretched beyond the built length, else as given."""
        if not self.train_len or seq_len <= self.train_len:
            return self.base
        return self.base * (seq_len / self.train_len) ** (self.dims / (self.dims - 2))

    def cos_sin(self, seq_len: int, device: torch.device, dtype: torch.dtype):
        if torch.compiler.is_compiling():  # inside a graph: no Python cache to guard on (one graph for every length)
            cos, sin = self.tables(seq_len, device)
            return cos.to(dtype), sin.to(dtype)
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            self._cache = (seq_len, device, *self.tables(seq_len, device))
        return self._cache[2].to(dtype), self._cache[3].to(dtype)

    def tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (1, 1, seq_len, dims / 2) in float32."""
        base = self.base_for(seq_len)
        inv_freq = self.inv_freq if base == self.base else self.inverse_frequencies(base)
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq.to(device))
        return freqs.cos()[None, None], freqs.sin()[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate the first ``dims`` dims of x (batch, heads, seq, head_dim); the rest pass through."""
        cos, sin = self.cos_sin(x.size(-2), x.device, x.dtype)
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        half = self.dims // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        rotated = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return torch.cat((rotated, rest), dim=-1) if rest.numel() else rotated


def document_ids(input_ids: torch.Tensor, bos_id: int, max_doc_len: int = 0) -> torch.Tensor:
    """Running segment index per position: increments at every BOS, and with ``max_doc_len`` also
    every max_doc_len tokens inside a document, counted from its BOS (from the row start for the
    document a row begins inside). Attention never crosses a change of index: these are the
    cu_seqlens the doc-packed records give flash-attn varlen."""
    is_bos = input_ids == bos_id
    if not max_doc_len:
        return torch.cumsum(is_bos.to(torch.int32), dim=-1)
    positions = torch.arange(input_ids.size(-1), device=input_ids.device).expand_as(input_ids)
    doc_start = torch.where(is_bos, positions, torch.zeros_like(positions)).cummax(dim=-1).values
    return torch.cumsum(((positions - doc_start) % max_doc_len == 0).to(torch.int32), dim=-1)
