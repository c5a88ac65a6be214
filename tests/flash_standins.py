"""Stand-ins for the flash-attn kernels on CPU: custom ops with flash_attn_func's and
flash_attn_varlen_func's signatures and layouts ((batch, seq, heads, dim); varlen: (total, heads,
dim) with int32 cu_seqlens), opaque to torch.compile as the real kernels are, computing exact
attention (and its gradient) by plain SDPA. They prove the flash calling convention and the
compiled graph without a GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.model.attention_backends import Backend


def dense_reference(q, k, v, causal: bool, mask=None):
    """Attention on (batch, seq, heads, dim) with GQA; ``mask`` (batch, seq, seq) when given."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    gqa = k.size(1) != q.size(1)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=gqa)
    return out.transpose(1, 2)


def varlen_reference(q, k, v, cu_seqlens, max_seqlen):
    """Varlen causal attention as one masked row: positions attend inside their segment only."""
    total = q.size(0)
    assert cu_seqlens.dtype == torch.int32 and int(cu_seqlens[-1]) == total
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    assert int(lengths.min()) >= 0 and int(lengths.max()) <= max_seqlen, "a segment is longer than max_seqlen"
    ids = torch.searchsorted(cu_seqlens, torch.arange(total, dtype=torch.int32), right=True)
    mask = (ids[:, None] == ids[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    return dense_reference(q[None], k[None], v[None], False, mask[None])[0]


def _gradients(reference, grad, q, k, v, *args):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        out = reference(*inputs, *args)
        return torch.autograd.grad(out, inputs, grad)


@torch.library.custom_op("golf_test::flash", mutates_args=())
def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return dense_reference(q, k, v, causal).contiguous()


@torch.library.custom_op("golf_test::flash_backward", mutates_args=())
def flash_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   causal: bool) -> list[torch.Tensor]:
    return list(_gradients(dense_reference, grad, q, k, v, causal))


@torch.library.custom_op("golf_test::flash_varlen", mutates_args=())
def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool) -> torch.Tensor:
    assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    return varlen_reference(q, k, v, cu_seqlens_q, max_seqlen_q).contiguous()


@torch.library.custom_op("golf_test::flash_varlen_backward", mutates_args=())
def flash_varlen_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          cu_seqlens: torch.Tensor, max_seqlen: int) -> list[torch.Tensor]:
    return list(_gradients(varlen_reference, grad, q, k, v, cu_seqlens, max_seqlen))


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
