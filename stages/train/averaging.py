"""Weight averaging: an EMA of every weight, and tight SWA over EMA snapshots late in training.

EMA (records: decay 0.997 or 0.9965) keeps a float32 shadow of each parameter and floating
buffer and is what the records export. Tight SWA (seed 003, PR #401: every 50 steps while the LR
scale is below 0.2, averaging the EMA weights) adds a second, orthogonal average on top.
"""

from __future__ import annotations

import torch


class EMA:
    """shadow = decay * shadow + (1 - decay) * weight after every optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: t.detach().float().clone() for name, t in model.state_dict().items()
                       if t.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, tensor in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(tensor.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own names (float32)."""
        return {name: t.clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {name: t.detach().float().clone() for name, t in state.items()}


class TightSWA:
    """Running mean of snapshots taken every ``every`` steps while the LR scale is under ``lr_scale``."""

    def __init__(self, every: int, lr_scale: float):
        self.every, self.lr_scale = every, lr_scale
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def maybe_collect(self, step: int, lr_scale: float, state: dict[str, torch.Tensor]) -> bool:
        """Add ``state`` to the mean if this step is on the cadence and late enough; say whether it did."""
        if lr_scale >= self.lr_scale or step % self.every:
            return False
        self.count += 1
        for name, tensor in state.items():
            value = tensor.detach().float()
            if name not in self.mean:
                self.mean[name] = value.clone()
            else:
                self.mean[name] += (value - self.mean[name]) / self.count
        return True

    def average(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.mean.items()}
