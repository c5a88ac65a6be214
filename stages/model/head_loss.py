"""The head and its cross-entropy in one pass over chunks of tokens: never all the logits at once.

``softcap(x W^T)`` followed by a float32 cross-entropy holds (tokens, vocab) logits in the compute
dtype, their float32 copy and the softmax's gradient of the same size: at 98,304 tokens x 8,192
words that is several GiB per micro-batch. ``head_nll`` computes the same numbers chunk by chunk:
per chunk the logits in the compute dtype, the softcap, a float32 log-sum-exp and the target's
log-probability. The backward saves only x, W, the targets and each token's log-sum-exp, and
recomputes each chunk's logits to form its share of grad x and grad W, so the peak holds one
chunk of logits.

Under autocast the matmul runs in autocast's dtype as ``F.linear`` would (the inputs are cast
before the Function, so their casts' gradients flow as usual); the Function itself runs with
autocast off, in that dtype, with the softmax in float32. Ships inside the artifact: torch only.
"""

from __future__ import annotations

import torch

# Tokens per chunk: 8,192 x 8,192 float32 logits are 256 MiB, small beside a 98,304-token row's
# activations, and large enough that each chunk's matmul stays efficient.
DEFAULT_CHUNK = 8192
IGNORE_INDEX = -100  # F.cross_entropy's: such targets add nothing and are not counted


def head_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0,
             reduction: str = "mean", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Cross-entropy of ``softcap * tanh(x W^T / softcap)`` (no cap when ``softcap`` is 0) against
    ``targets``: ``x`` (..., dim), ``weight`` (vocab, dim), ``targets`` shaped like x without its
    last dim. ``reduction`` 'mean' (over the counted targets) or 'none' (float32, shaped like
    ``targets``). Equals ``F.cross_entropy(logits.float(), targets)`` on the plain logits."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    dtype = compute_dtype(x)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    nll = ChunkedHeadNLL.apply(flat, weight.to(dtype), targets.reshape(-1), float(softcap), int(chunk))
    if reduction == "none":
        return nll.view(targets.shape)
    return nll.sum() / (targets != IGNORE_INDEX).sum()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in here: autocast's, when it is on for x's device."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def capped_logits(x: torch.Tensor, weight: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits after the softcap, tanh of the scaled logits or None without a cap), in x's dtype."""
    logits = x @ weight.t()
    if softcap <= 0:
        return logits, None
    tanh = torch.tanh(logits / softcap)
    return softcap * tanh, tanh


class ChunkedHeadNLL(torch.autograd.Function):
    """Per-token NLL (float32) of the capped head over flat tokens, one chunk of logits at a time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                chunk: int) -> torch.Tensor:
        counted = targets != IGNORE_INDEX
        safe_targets = torch.where(counted, targets, 0)
        nll, lse = [], []
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk):
                logits, _ = capped_logits(x[start:start + chunk], weight, softcap)
                logits = logits.float()
                chunk_lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe_targets[start:start + chunk, None]).squeeze(1)
                nll.append(chunk_lse - picked)
                lse.append(chunk_lse)
        ctx.save_for_backward(x, weight, safe_targets, counted, torch.cat(lse))
        ctx.softcap, ctx.chunk = softcap, chunk
        return torch.where(counted, torch.cat(nll), 0.0)

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        x, weight, targets, counted, lse = ctx.saved_tensors
        softcap, chunk = ctx.softcap, ctx.chunk
        scale = torch.where(counted, grad_nll.float(), 0.0)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # summed over chunks
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk):
                rows = slice(start, start + chunk)
                grad_logits = chunk_logit_grad(x[rows], weight, targets[rows], lse[rows], scale[rows], softcap)
                grad_x[rows] = grad_logits @ weight
                grad_weight += (grad_logits.t() @ x[rows]).float()
        return grad_x, grad_weight.to(weight.dtype), None, None, None


def chunk_logit_grad(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                     scale: torch.Tensor, softcap: float) -> torch.Tensor:
    """d(sum scale * nll) / d(x W^T) for one chunk, recomputing its logits: (softmax - onehot) * scale,
    through the softcap's derivative 1 - tanh^2; float32 math, returned in x's dtype."""
    logits, tanh = capped_logits(x, weight, softcap)
    grad = torch.exp(logits.float() - lse[:, None])
    grad.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
    grad *= scale[:, None]
    if tanh is not None:
        grad *= 1 - tanh.float().square()
    return grad.to(x.dtype)
