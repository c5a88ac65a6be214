"""Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.

For each 2-D weight: buf = momentum * buf + grad; the direction is grad + momentum * buf
(Nesterov); MuonEq-R optionally normalizes its rows; Newton-Schulz maps it to roughly U V^T of
its SVD; it is scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike.
Decoupled weight decay shrinks the weight first: p *= 1 - lr * wd. Under torch.distributed each
rank orthogonalizes only its share of the matrices (index % world_size == rank) and the updates
are then summed across ranks (every other rank contributes zeros, so the sum is exact), so all
ranks apply identical updates. With the default options this is the baseline's Muon, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

Coefficients = Sequence[tuple[float, float, float]]

# The baseline's quintic, used at every iteration (docs/REFERENCE.md section 5).
STOCK_COEFFS: Coefficients = ((3.4445, -4.7750, 2.0315),)
# Polar Express: one (a, b, c) per iteration (docs/REFERENCE.md section 6); the last repeats if more steps.
POLAR_EXPRESS_COEFFS: Coefficients = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
COEFFICIENTS: dict[str, Coefficients] = {"stock": STOCK_COEFFS, "polar_express": POLAR_EXPRESS_COEFFS}
# Kept for callers that name the stock triple directly.
NS5_COEFFS = STOCK_COEFFS[0]


def newton_schulz(grad: torch.Tensor, steps: int, dtype: torch.dtype, coefficients: Coefficients = STOCK_COEFFS,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor U V^T of ``grad`` (2-D).

    Iteration i applies x <- a x + (b G + c G^2) x with G = x x^T and (a, b, c) =
    coefficients[min(i, last)], so a single triple is used at every step and a per-step list
    (Polar Express) repeats its last entry if ``steps`` is longer.
    """
    x = grad.to(dtype)
    # Frobenius norm >= spectral norm: after this every singular value is in [0, 1], where the
    # polynomial pushes it towards 1. Both coefficient sets start from X / (||X||_F + eps): the top
    # record's Polar Express does too (the paper's extra 1.02 margin is not in any record).
    x = x / (x.norm() + eps)
    # Work on the wide orientation so the Gram matrix x x^T is the small one.
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


def sharding() -> tuple[int, int]:
    """(rank, world size) when a multi-process group is running, else (0, 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights; the keyword options default to the baseline's behaviour.

    coefficients: "stock" (one quintic at every step) or "polar_express" (one triple per step).
    row_normalize: MuonEq-R, unit-norm rows before Newton-Schulz.
    weight_decay: decoupled, p *= 1 - lr * wd before the update (records: 0.085-0.095).
    """

    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, nesterov: bool = True,
                 ns_dtype: torch.dtype | None = None, coefficients: str = "stock", row_normalize: bool = False,
                 weight_decay: float = 0.0):
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"unknown Newton-Schulz coefficients {coefficients!r}; "
                             f"choose from {sorted(COEFFICIENTS)}")
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov,
                        coefficients=coefficients, row_normalize=row_normalize, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype

    def _momentum_direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Advance the momentum buffer and return the (Nesterov) direction.

        Every rank runs this for every weight, owner or not: it is cheap, and it keeps the
        momentum state identical everywhere (gradients are already averaged), so a checkpoint
        from any rank resumes the same run.
        """
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        return p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _orthogonalize(self, direction: torch.Tensor, group: dict) -> torch.Tensor:
        """The expensive part, done only by the weight's owner: Newton-Schulz and the shape scale."""
        if group["row_normalize"]:
            direction = normalize_rows(direction)
        # bf16 matmuls are what make Newton-Schulz cheap on GPU; CPU bf16 is slow, so float32 there.
        dtype = self.ns_dtype or (torch.bfloat16 if direction.is_cuda else torch.float32)
        update = newton_schulz(direction, group["ns_steps"], dtype, COEFFICIENTS[group["coefficients"]])
        return update * max(1.0, direction.size(0) / direction.size(1)) ** 0.5

    @staticmethod
    def _share(params: list[torch.Tensor], updates: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum the per-rank updates in one flat all_reduce: each slot is non-zero on exactly one
        rank, so the sum is that rank's update exactly, and one collective beats one per weight."""
        flat = torch.cat([u.flatten() for u in updates])
        dist.all_reduce(flat)
        return [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = sharding()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for index, p in enumerate(params):
                direction = self._momentum_direction(p, group)
                owned = index % world == rank
                updates.append(self._orthogonalize(direction, group) if owned else torch.zeros_like(direction))
            if world > 1 and updates:
                updates = self._share(params, updates)
            for p, update in zip(params, updates):
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss
