"""The head and its cross-entropy in one pass over chunks of tokens: never all the logits at once.

``softcap(x W^T)`` followed by a float32 cross-entropy holds (tokens, vocab) logits in the compute
dtype, their float32 copy and the softmax's gradient of the same size: at 98,304 tokens x 8,192
words that is several GiB per micro-batch. ``head_nll`` computes the same numbers chunk by chunk:
per chunk the logits in the compute dtype, the softcap, a float32 log-sum-exp and the target's
log-probability. The backward saves only x, W, the targets and each token's log-sum-exp, and
recomputes each chunk's logits to form its share of grad x and grad W, so the peak holds one
chunk of logits. The head's LoRA (document test-time training) adds a per-row low-rank term to
the logits before the cap; it is formed chunk by chunk too, from its two factors.

Under autocast the matmul runs in autocast's dtype as ``F.linear`` would (the inputs are cast
before the Function, so their casts' gradients flow as usual); the Function itself runs with
autocast off, in that dtype, with the softmax in float32. Ships inside the artifact: torch only.
"""

from __future__ import annotations

import torch

from .layers import compute_dtype

# Tokens per chunk: 8,192 x 8,192 float32 logits are 256 MiB, small beside a 98,304-token row's
# activations, and large enough that each chunk's matmul stays efficient.
DEFAULT_CHUNK = 8192
IGNORE_INDEX = -100  # F.cross_entropy's: such targets add nothing and are not counted


def head_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0,
             reduction: str = "mean", chunk: int = DEFAULT_CHUNK,
             low_rank: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy of ``softcap * tanh(z / softcap)`` (no cap when ``softcap`` is 0), z = x W^T,
    against ``targets``: ``x`` (..., dim), ``weight`` (vocab, dim), ``targets`` shaped like x without
    its last dim. ``low_rank`` = (h, b), h (batch, seq, r) and b (batch, vocab, r), adds h[i] b[i]^T
    to row i's z (the head's LoRA, h = x A^T * alpha / r; x then (batch, seq, dim)). ``reduction``
    'mean' (over the counted targets) or 'none' (float32, shaped like ``targets``). Equals
    ``F.cross_entropy(logits.float(), targets)`` on the plain logits."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    dtype = compute_dtype(x.device, x.dtype)  # what F.linear would compute in here
    h, b = (None, None) if low_rank is None else (t.to(dtype) for t in low_rank)
    rows = x.reshape(-1, x.shape[-1])[None] if low_rank is None else x  # one row unless each row has its own b
    nll = ChunkedHeadNLL.apply(rows.to(dtype), weight.to(dtype), targets.reshape(rows.shape[:-1]), h, b,
                               float(softcap), int(chunk))
    if reduction == "none":
        return nll.view(targets.shape)
    return nll.sum() / (targets != IGNORE_INDEX).sum()


def pieces(rows: int, seq: int, chunk: int):
    """(row, columns) of every chunk: at most ``chunk`` tokens of one row. A row that fits one chunk
    is one piece without a range over its length: compiled with a dynamic width (document LoRA),
    ``seq <= chunk`` is a guard where ``range(0, seq, chunk)`` would pin the width to a constant."""
    for row in range(rows):
        if seq <= chunk:
            yield row, slice(None)
            continue
        for start in range(0, seq, chunk):
            yield row, slice(start, start + chunk)


def capped_logits(x: torch.Tensor, weight: torch.Tensor, h: torch.Tensor | None, b: torch.Tensor | None,
                  softcap: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits after the softcap, tanh of the scaled logits or None without a cap), in x's dtype;
    ``h b^T`` added before the cap when given."""
    logits = x @ weight.t()
    if h is not None:
        logits = logits + h @ b.t()
    if softcap <= 0:
        return logits, None
    tanh = torch.tanh(logits / softcap)
    return softcap * tanh, tanh


class ChunkedHeadNLL(torch.autograd.Function):
    """Per-token NLL (float32) of the capped head over (rows, seq) tokens, one chunk of logits at a time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, h: torch.Tensor | None,
                b: torch.Tensor | None, softcap: float, chunk: int) -> torch.Tensor:
        counted = targets != IGNORE_INDEX
        safe_targets = torch.where(counted, targets, 0)
        lse = torch.empty(targets.shape, dtype=torch.float32, device=x.device)
        nll = torch.empty_like(lse)
        with torch.autocast(x.device.type, enabled=False):
            for row, cols in pieces(*targets.shape, chunk):
                low = (None, None) if h is None else (h[row, cols], b[row])
                logits = capped_logits(x[row, cols], weight, *low, softcap)[0].float()
                lse[row, cols] = torch.logsumexp(logits, dim=-1)
                nll[row, cols] = lse[row, cols] - logits.gather(1, safe_targets[row, cols, None]).squeeze(1)
        ctx.save_for_backward(x, weight, safe_targets, counted, lse, h, b)
        ctx.softcap, ctx.chunk = softcap, chunk
        return torch.where(counted, nll, 0.0)

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        x, weight, targets, counted, lse, h, b = ctx.saved_tensors
        scale = torch.where(counted, grad_nll.float(), 0.0)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # summed over chunks
        grad_h = None if h is None else torch.empty_like(h)
        grad_b = None if b is None else torch.zeros(b.shape, dtype=torch.float32, device=b.device)
        with torch.autocast(x.device.type, enabled=False):
            for row, cols in pieces(*targets.shape, ctx.chunk):
                low = (None, None) if h is None else (h[row, cols], b[row])
                grad_logits = chunk_logit_grad(x[row, cols], weight, *low, targets[row, cols], lse[row, cols],
                                               scale[row, cols], ctx.softcap)
                grad_x[row, cols] = grad_logits @ weight
                grad_weight += (grad_logits.t() @ x[row, cols]).float()
                if h is not None:
                    grad_h[row, cols] = grad_logits @ b[row]
                    grad_b[row] += (grad_logits.t() @ h[row, cols]).float()
        grad_b = None if b is None else grad_b.to(b.dtype)
        return grad_x, grad_weight.to(weight.dtype), None, grad_h, grad_b, None, None


def chunk_logit_grad(x: torch.Tensor, weight: torch.Tensor, h: torch.Tensor | None, b: torch.Tensor | None,
                     targets: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, softcap: float) -> torch.Tensor:
    """d(sum scale * nll) / d(logits before the cap) for one chunk, recomputing its logits:
    (softmax - onehot) * scale, through the softcap's derivative 1 - tanh^2; float32 math,
    returned in x's dtype."""
    logits, tanh = capped_logits(x, weight, h, b, softcap)
    grad = torch.exp(logits.float() - lse[:, None])
    grad.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
    grad *= scale[:, None]
    if tanh is not None:
        grad *= 1 - tanh.float().square()
    return grad.to(x.dtype)
