"""Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.

For each 2-D weight: buf = momentum * buf + grad; the direction is grad + momentum * buf
(Nesterov); MuonEq-R optionally normalizes its rows; Newton-Schulz maps it to roughly U V^T of
its SVD; it is scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike.
Decoupled weight decay shrinks the weight first: p *= 1 - lr * wd. Under torch.distributed each
rank orthogonalizes only its share of the matrices and the updates are then summed across ranks
(every other rank contributes zeros), so all ranks apply identical updates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# The baseline's quintic, used at every iteration (REFERENCE section 5).
STOCK_COEFFS = ((3.4445, -4.7750, 2.0315),)
# Polar Express: one (a, b, c) per iteration (REFERENCE section 6); the last repeats if more steps.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
COEFFICIENTS = {"stock": STOCK_COEFFS, "polar_express": POLAR_EXPRESS_COEFFS}
# Kept for callers that name the stock triple directly.
NS5_COEFFS = STOCK_COEFFS[0]


def newton_schulz(grad: torch.Tensor, steps: int, dtype: torch.dtype, coefficients=STOCK_COEFFS,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor of ``grad`` (2-D): iteration i uses coefficients[min(i, last)]."""
    x = grad.to(dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for i in range(steps):
        a, b, c = coefficients[min(i, len(coefficients) - 1)]
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(grad.dtype)


def normalize_rows(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: every row to unit L2 norm, so no row dominates the orthogonalization."""
    return x / (x.norm(dim=1, keepdim=True) + eps)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, nesterov: bool = True,
                 ns_dtype=None, coefficients: str = "stock", row_normalize: bool = False, weight_decay: float = 0.0):
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"unknown Newton-Schulz coefficients {coefficients!r}")
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov,
                        coefficients=coefficients, row_normalize=row_normalize, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype

    def _direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Momentum (Nesterov) direction of one weight, orthogonalized and shape-scaled."""
        grad = p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(grad)
        direction = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        if group["row_normalize"]:
            direction = normalize_rows(direction)
        dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
        update = newton_schulz(direction, group["ns_steps"], dtype, COEFFICIENTS[group["coefficients"]])
        return update * max(1.0, p.size(0) / p.size(1)) ** 0.5

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for index, p in enumerate(params):
                # Each rank orthogonalizes its share; the others' slots stay zero until the sum.
                owned = index % world == rank
                updates.append(self._direction(p, group) if owned else torch.zeros_like(p))
                if not owned:  # keep every rank's momentum identical (gradients are already averaged)
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
            if distributed and updates:
                flat = torch.cat([u.flatten() for u in updates])
                dist.all_reduce(flat)
                updates = [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]
            for p, update in zip(params, updates):
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
