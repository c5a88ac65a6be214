"""Stand-ins for the flash-attn kernels on CPU: custom ops with flash_attn_func's and
flash_attn_varlen_func's signatures and layouts ((batch, seq, heads, dim); varlen: (total, heads,
dim) with int32 cu_seqlens), opaque to torch.compile as the real kernels are, computing exact
attention (and its gradient) by plain SDPA. They prove the flash calling convention and the
compiled graph without a GPU."""

from __future__ import annotations

import torch

from stages.model.attention_backends import Backend


def causal_mask(seq_len: int) -> torch.Tensor:
    return torch.ones(seq_len, seq_len, dtype=torch.bool).tril()


def varlen_mask(cu_seqlens: torch.Tensor, total: int, max_seqlen: int) -> torch.Tensor:
    """(total, total): causal inside each segment of ``cu_seqlens``."""
    assert cu_seqlens.dtype == torch.int32 and int(cu_seqlens[-1]) == total
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    assert int(lengths.min()) >= 0 and int(lengths.max()) <= max_seqlen, "a segment is longer than max_seqlen"
    ids = torch.searchsorted(cu_seqlens, torch.arange(total, dtype=torch.int32), right=True)
    return (ids[:, None] == ids[None, :]) & causal_mask(total)


def _scores(q, k, mask):
    """Attention probabilities (batch, heads, Tq, Tk) of (batch, seq, heads, dim) inputs, GQA expanded."""
    k = k.repeat_interleave(q.size(2) // k.size(2), dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.size(-1) ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def reference(q, k, v, mask):
    """Exact attention on (batch, seq, heads, dim) under ``mask`` (Tq, Tk)."""
    probs = _scores(q, k, mask)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.repeat_interleave(q.size(2) // v.size(2), dim=2))


def reference_backward(grad, q, k, v, mask):
    """dq, dk, dv of ``reference`` by hand (inside a custom op autograd does not record)."""
    group = q.size(2) // k.size(2)
    probs = _scores(q, k, mask)
    k_full, v_full = (t.repeat_interleave(group, dim=2) for t in (k, v))
    d_v = torch.einsum("bhqk,bqhd->bkhd", probs, grad)
    d_probs = torch.einsum("bqhd,bkhd->bhqk", grad, v_full)
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True)) / q.size(-1) ** 0.5
    d_q = torch.einsum("bhqk,bkhd->bqhd", d_scores, k_full)
    d_k = torch.einsum("bhqk,bqhd->bkhd", d_scores, q)

    def fold(t):  # sum each kv head's group of query heads
        return t.unflatten(2, (k.size(2), group)).sum(3)

    return [d_q, fold(d_k), fold(d_v)]


@torch.library.custom_op("golf_test::flash", mutates_args=())
def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    assert causal
    return reference(q, k, v, causal_mask(q.size(1))).contiguous()


@torch.library.custom_op("golf_test::flash_backward", mutates_args=())
def flash_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   causal: bool) -> list[torch.Tensor]:
    return reference_backward(grad, q, k, v, causal_mask(q.size(1)))


@torch.library.custom_op("golf_test::flash_varlen", mutates_args=())
def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool) -> torch.Tensor:
    assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    return reference(q[None], k[None], v[None], varlen_mask(cu_seqlens_q, q.size(0), max_seqlen_q))[0].contiguous()


@torch.library.custom_op("golf_test::flash_varlen_backward", mutates_args=())
def flash_varlen_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          cu_seqlens: torch.Tensor, max_seqlen: int) -> list[torch.Tensor]:
    mask = varlen_mask(cu_seqlens, q.size(0), max_seqlen)
    return [t[0] for t in reference_backward(grad[None], q[None], k[None], v[None], mask)]


def _like_inputs(grad, q, k, v, *rest):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]


flash.register_fake(lambda q, k, v, causal: torch.empty_like(q))
flash_varlen.register_fake(lambda q, k, v, *rest: torch.empty_like(q))
flash_backward.register_fake(_like_inputs)
flash_varlen_backward.register_fake(_like_inputs)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.rest = inputs[3:]


def _flash_grad(ctx, grad):
    return (*flash_backward(grad, *ctx.saved_tensors, ctx.rest[0]), None)


def _varlen_grad(ctx, grad):
    cu_seqlens, max_seqlen = ctx.rest[0], ctx.rest[2]  # rest: cu_q, cu_k, max_q, max_k, causal
    return (*flash_varlen_backward(grad, *ctx.saved_tensors, cu_seqlens, max_seqlen), None, None, None, None, None)


flash.register_autograd(_flash_grad, setup_context=_save_inputs)
flash_varlen.register_autograd(_varlen_grad, setup_context=_save_inputs)


def flash_func(q, k, v, causal=True):
    return flash(q, k, v, causal)


def flash_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True):
    return flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal)


STAND_IN = Backend("flash-stand-in", flash_func, flash_varlen_func)
# FlashAttention 3 returns (out, lse) in some versions.
STAND_IN_WITH_LSE = Backend("flash-stand-in-lse", lambda *a, **kw: (flash_func(*a, **kw), None),
                            lambda *a, **kw: (flash_varlen_func(*a, **kw), None))
