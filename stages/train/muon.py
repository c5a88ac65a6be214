"""Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.

For each 2-D weight: buf = momentum * buf + grad; the update direction is
grad + momentum * buf (Nesterov); Newton-Schulz maps it to roughly U V^T of its SVD;
it is scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike.
"""

from __future__ import annotations

import torch

# Quintic iteration coefficients of the baseline (REFERENCE section 5).
NS5_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(grad: torch.Tensor, steps: int, dtype: torch.dtype, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor of ``grad`` (2-D) in ``steps`` quintic iterations."""
    a, b, c = NS5_COEFFS
    x = grad.to(dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(grad.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, nesterov: bool = True, ns_dtype=None):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad)
                direction = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
                update = newton_schulz(direction, group["ns_steps"], dtype)
                update *= max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(update, alpha=-group["lr"])
