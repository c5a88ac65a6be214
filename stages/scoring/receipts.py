"""What a scored pass commits: each batch of scored targets (``ScoredTargets``) and the per-target
receipts ``golf eval --token-nll`` saves (``TokenReceipts``), from which anyone can recompute val_bpb."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ScoredTargets:
    """One batch of scored targets, as committed: each target's score is final once it is here."""

    positions: torch.Tensor
    """Index of each target in the val token stream (int64; the first target is position 1)."""
    nll: torch.Tensor
    """Its NLL in nats (float32, as the loss computes it)."""
    bytes: torch.Tensor
    """Its bytes (int64)."""


class TokenReceipts:
    """Every committed target, in commit order: the per-target record ``golf eval --token-nll`` saves.

    ``order`` is the scoring step (one batch of windows) that committed a target; a test-time
    trainer also notes each update, so that anyone can check it used committed targets only.

    Under W ranks each rank keeps its own receipts and counts its own steps; a rank's step k is
    global step k, and ``order`` = step * W + rank, so the orders of all ranks form one sequence
    (W = 1: the step). Ranks meet only at an update (a gradient all-reduce): before one, each
    rank ``catch_up``s to the steps the busiest rank has scored, so that an update's
    ``update_after_order`` (the last order it may use) covers what every rank committed before it,
    and every target committed after it has a larger order. An update all ranks take together (one
    averaged gradient) is noted by rank 0 alone. ``merge_receipts`` joins the ranks' receipts.
    """

    def __init__(self) -> None:
        self.batches: list[ScoredTargets] = []
        self.batch_steps: list[int] = []  # the step that committed each batch
        self.updates: list[tuple[int, int, int]] = []  # (steps taken before it, first, last position)
        self.steps = 0  # scoring steps taken so far (by the busiest rank, after a catch_up)

    def commit(self, scored: ScoredTargets) -> None:
        self.batches.append(ScoredTargets(scored.positions.cpu(), scored.nll.cpu(), scored.bytes.cpu()))
        self.batch_steps.append(self.steps)
        self.steps += 1

    def catch_up(self, steps: int) -> None:
        """Every rank has taken ``steps`` scoring steps by now; this rank's next step comes after them."""
        self.steps = max(self.steps, steps)

    def note_update(self, first_position: int, last_position: int) -> None:
        """An optimizer step that trained on targets ``first_position..last_position``, after the
        scoring steps taken so far."""
        self.updates.append((self.steps, first_position, last_position))

    def tensors(self, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Rows per target (position, nll, bytes, order) and per update (update_*), as saved."""
        sizes = torch.tensor([len(b.positions) for b in self.batches], dtype=torch.int64)
        steps = torch.tensor(self.batch_steps, dtype=torch.int64)
        updates = torch.tensor(self.updates, dtype=torch.int64).reshape(-1, 3)
        batches = self.batches or [ScoredTargets(torch.zeros(0, dtype=torch.int64), torch.zeros(0),
                                                 torch.zeros(0, dtype=torch.int64))]
        return {
            "position": torch.cat([b.positions for b in batches]),
            "nll": torch.cat([b.nll for b in batches]).float(),
            "bytes": torch.cat([b.bytes for b in batches]).int(),
            "order": torch.repeat_interleave(steps * world_size + rank, sizes),
            "update_after_order": (updates[:, 0] * world_size - 1).contiguous(),
            "update_first_position": updates[:, 1].contiguous(),
            "update_last_position": updates[:, 2].contiguous(),
        }


def merge_receipts(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One receipts table from every rank's ``tensors``: targets and updates each in order (an
    optimizer step that all ranks take together is noted by rank 0 alone)."""
    merged = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    targets = torch.sort(merged["order"], stable=True).indices
    updates = torch.sort(merged["update_after_order"], stable=True).indices
    return {name: column[updates if name.startswith("update_") else targets] for name, column in merged.items()}
