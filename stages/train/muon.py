"""Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.

For each 2-D weight: buf = momentum * buf + grad; the direction is grad + momentum * buf
(Nesterov); MuonEq-R optionally normalizes its rows; Newton-Schulz maps it to roughly U V^T of
its SVD; it is scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike.
Decoupled weight decay shrinks the weight first: p *= 1 - lr * wd.

As the records run it, the weights are grouped by shape and each group is orthogonalized as one
(n, rows, cols) stack: one batched Newton-Schulz per shape instead of one per matrix. Under
torch.distributed the trainer first reduce-scatters each stack's gradients (``reduce_gradients``),
so every rank holds the mean gradient of only its contiguous share of the stack; it advances the
momentum of that share, orthogonalizes it and all-gathers the updates, so every rank applies
identical updates. Each rank keeps momentum for its share only; ``gather_momentum`` brings every
rank's copy up to date before a checkpoint. With the default options on one process this is the
baseline's Muon (float32 on CPU, equal to the per-matrix loop to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..distributed import Pending, rank_and_world, start_all_gather, start_reduce_scatter_mean

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
    """Approximate the orthogonal factor U V^T of ``grad``: one matrix (rows, cols) or a stack of them
    (n, rows, cols), each orthogonalized on its own.

    Iteration i applies x <- a x + (b G + c G^2) x with G = x x^T and (a, b, c) =
    coefficients[min(i, last)], so a single triple is used at every step and a per-step list
    (Polar Express) repeats its last entry if ``steps`` is longer.
    """
    x = grad.to(dtype)
    # Frobenius norm >= spectral norm: after this every singular value is in [0, 1], where the
    # polynomial pushes it towards 1. Both coefficient sets start from X / (||X||_F + eps): the top
    # record's Polar Express does too (the paper's extra 1.02 margin is not in any record).
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    # Work on the wide orientation so the Gram matrix x x^T is the small one.
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    for i in range(steps):
        a, b, c = coefficients[min(i, len(coefficients) - 1)]
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if transposed else x).to(grad.dtype)


def normalize_rows(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: every row to unit L2 norm, so no row dominates the orthogonalization."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def shape_stacks(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The weights grouped by shape, in first-seen order: each group is one batched Newton-Schulz."""
    stacks: dict[torch.Size, list[torch.Tensor]] = {}
    for p in params:
        stacks.setdefault(p.shape, []).append(p)
    return list(stacks.values())


def share_of(count: int, rank: int, world: int) -> range:
    """The indices of a stack of ``count`` that ``rank`` owns: contiguous, ceil(count / world) each,
    so the stack padded to world * that many splits evenly (the last ranks may own fewer, or none)."""
    per = math.ceil(count / world)
    return range(min(rank * per, count), min((rank + 1) * per, count))


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
        # (group index, stack index) -> this rank's mean gradient share, in flight or arrived.
        self._shares: dict[tuple[int, int], Pending | torch.Tensor] = {}

    def _stacks(self) -> list[tuple[tuple[int, int], dict, list[torch.Tensor]]]:
        """((group, stack) key, group, weights of one shape) for every weight with a gradient."""
        return [((g, s), group, stack) for g, group in enumerate(self.param_groups)
                for s, stack in enumerate(shape_stacks([p for p in group["params"] if p.grad is not None]))]

    # ---- gradients: reduce-scattered by shape ----
    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Multi-rank: begin averaging every stack's gradients over the ranks, each rank receiving
        only its own share (reduce-scatter); ``step`` waits for them. One process: nothing to do."""
        _, world = rank_and_world()
        if world == 1:
            return
        for key, _, stack in self._stacks():
            per = math.ceil(len(stack) / world)
            padded = stack[0].grad.new_zeros(world * per, *stack[0].shape)
            torch.stack([p.grad for p in stack], out=padded[:len(stack)])
            self._shares[key] = start_reduce_scatter_mean(padded)

    def gradient_shares(self) -> list[torch.Tensor]:
        """This rank's mean gradient shares (after ``reduce_gradients``), waiting for them: what a
        multi-rank gradient clip measures and scales in place."""
        for key, share in self._shares.items():
            if isinstance(share, Pending):
                self._shares[key] = share.wait()
        return list(self._shares.values())

    def _gradient_share(self, key, stack: list[torch.Tensor], owned: range) -> torch.Tensor:
        if not self._shares:  # not reduce-scattered (one process): this rank's own gradients
            return torch.stack([p.grad for p in stack[owned.start:owned.stop]]) if len(owned) else None
        share = self._shares.pop(key)
        return (share.wait() if isinstance(share, Pending) else share)[:len(owned)]

    # ---- the update ----
    def _buffers(self, stack: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every weight's momentum buffer (made for all, so a gathered state covers every weight)."""
        for p in stack:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return [self.state[p]["momentum_buffer"] for p in stack]

    def _direction(self, grad: torch.Tensor, buffers: list[torch.Tensor], group: dict) -> torch.Tensor:
        """Advance the owned momentum buffers by ``grad`` (a stack) and return the (Nesterov) direction."""
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, list(grad.unbind(0)))
        momentum = torch.stack(buffers)
        return grad.add(momentum, alpha=group["momentum"]) if group["nesterov"] else momentum

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        # bf16 matmuls are what make Newton-Schulz cheap on GPU; CPU bf16 is slow, so float32 there.
        return self.ns_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    def _orthogonalize(self, direction: torch.Tensor, group: dict) -> torch.Tensor:
        """The expensive part, for this rank's share only: batched Newton-Schulz, in its own dtype."""
        if group["row_normalize"]:
            direction = normalize_rows(direction)
        dtype = self._ns_dtype(direction.device)
        return newton_schulz(direction.to(dtype), group["ns_steps"], dtype, COEFFICIENTS[group["coefficients"]])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = rank_and_world()
        updates = []
        for key, group, stack in self._stacks():
            owned = share_of(len(stack), rank, world)
            buffers = self._buffers(stack)
            grad = self._gradient_share(key, stack, owned)
            if len(owned):
                update = self._orthogonalize(self._direction(grad, buffers[owned.start:owned.stop], group), group)
            else:  # a rank that owns none of this stack still takes part in the gather
                update = stack[0].new_zeros(0, *stack[0].shape, dtype=self._ns_dtype(stack[0].device))
            if world > 1:  # pad to the even share, gather every rank's (runs while the next stack computes)
                per = math.ceil(len(stack) / world)
                padded = update.new_zeros(per, *update.shape[1:])
                padded[:len(owned)] = update
                update = start_all_gather(padded)
            updates.append((group, stack, update))
        for group, stack, update in updates:
            update = update.wait()[:len(stack)] if isinstance(update, Pending) else update
            self._apply(stack, update, group)
        self._shares.clear()
        return loss

    @staticmethod
    def _apply(stack: list[torch.Tensor], update: torch.Tensor, group: dict) -> None:
        """Decay then step every weight of the stack; the shape scale sqrt(max(1, rows / cols)) in
        the weights' dtype, after the gather (the Newton-Schulz dtype is exact to travel in)."""
        rows, cols = stack[0].shape
        update = update.to(stack[0].dtype) * max(1.0, rows / cols) ** 0.5
        if group["weight_decay"]:
            torch._foreach_mul_(stack, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(stack, list(update.unbind(0)), alpha=-group["lr"])

    # ---- checkpoints ----
    @torch.no_grad()
    def gather_momentum(self) -> None:
        """Multi-rank: copy every share's momentum from its owner to all ranks, so any rank's state
        (a checkpoint) holds the whole optimizer. Every rank must call it; one process: no-op."""
        rank, world = rank_and_world()
        if world == 1:
            return
        # The stacks of the last step (weights with gradients), so each share has the owner it had.
        for _, _, stack in self._stacks():
            buffers = self._buffers(stack)
            owned = share_of(len(stack), rank, world)
            per = math.ceil(len(stack) / world)
            padded = buffers[0].new_zeros(per, *buffers[0].shape)
            if len(owned):
                torch.stack(buffers[owned.start:owned.stop], out=padded[:len(owned)])
            gathered = start_all_gather(padded).wait()
            torch._foreach_copy_(buffers, list(gathered[:len(stack)].unbind(0)))
