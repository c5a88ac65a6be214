"""Weight averaging: an EMA of every weight, and tight SWA over EMA snapshots late in training.

EMA (records: decay 0.997 or 0.9965) keeps a float32 shadow of each parameter and floating
buffer; the records export it instead of the raw weights.

Tight SWA (seed 003, PR #401): every 50 steps while the LR scale is below 0.2, add the *EMA*
weights to a running mean; that mean is what gets exported. Averaging only late, low-LR points
keeps them in one basin ("tight"), and averaging EMA snapshots smooths a second time.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]

# Seed 003's tight-SWA settings (docs/REFERENCE.md section 6).
SEED_003_SWA_EVERY = 50
SEED_003_SWA_LR_SCALE = 0.2


class EMA:
    """shadow = decay * shadow + (1 - decay) * weight after every optimizer step.

    Shadows are float32 even for bf16 weights: with decay 0.997 each step moves the average by
    0.3% of the gap, which bf16's 8-bit mantissa would round away.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        # state_dict covers parameters and (persistent) buffers under the names export uses;
        # integer buffers (counters, masks) are not averaged.
        self.shadow: State = {name: t.detach().float().clone() for name, t in model.state_dict().items()
                              if t.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights into the shadows (call after each optimizer step)."""
        state = model.state_dict()
        # lerp is shadow + (1 - decay) * (weight - shadow): the same average, one kernel, and the
        # foreach form does every tensor in one call (one launch per chunk of tensors on CUDA).
        # .float() copies only the bf16 weights; float32 ones are read in place.
        torch._foreach_lerp_(list(self.shadow.values()), [state[name].detach().float() for name in self.shadow],
                             1 - self.decay)

    def state_dict(self) -> State:
        """The averaged weights under the model's own names (float32 copies)."""
        return {name: t.clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: State) -> None:
        """Replace the shadows (e.g. from a checkpoint), keeping each shadow's device and float32:
        a checkpoint read on the CPU resumes a run on the GPU."""
        if set(state) != set(self.shadow):
            raise ValueError(f"EMA holds {len(self.shadow)} tensors, the state {len(state)} (names differ)")
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)


class TightSWA:
    """Running mean of snapshots taken every ``every`` steps while the LR scale is under a threshold.

    Seed 003: every 50 steps once the LR scale is below 0.2, averaging the EMA weights
    (``SEED_003_SWA_EVERY``, ``SEED_003_SWA_LR_SCALE``). ``count`` is how many snapshots it holds.
    """

    def __init__(self, every: int = SEED_003_SWA_EVERY, lr_scale_threshold: float = SEED_003_SWA_LR_SCALE):
        if every < 1:
            raise ValueError(f"tight SWA cadence must be at least 1 step, got {every}")
        self.every = every
        self.lr_scale_threshold = lr_scale_threshold
        self.count = 0
        self.mean: State = {}

    def due(self, step: int, lr_scale: float) -> bool:
        """Whether ``step`` is a collection step: on the cadence and late enough in the warm-down.

        Callers can check this before building the source state, which costs a copy of the weights.
        """
        return lr_scale < self.lr_scale_threshold and step % self.every == 0

    @torch.no_grad()
    def maybe_collect(self, step: int, lr_scale: float, state: State) -> bool:
        """Add ``state`` to the mean if this step is due; say whether it did."""
        if not self.due(step, lr_scale):
            return False
        self.count += 1
        for name, tensor in state.items():
            value = tensor.detach().float()
            if name not in self.mean:
                self.mean[name] = value.clone()
            else:
                # Incremental mean: no sum that grows with the count, same result as sum / count.
                self.mean[name] += (value - self.mean[name]) / self.count
        return True

    def average(self) -> State:
        """A copy of the averaged weights, for export."""
        return {name: t.clone() for name, t in self.mean.items()}

    def load_state_dict(self, mean: State, count: int, device: torch.device) -> None:
        """Resume from a checkpoint's mean and count, as float32 on ``device`` (the model's)."""
        self.mean = {name: t.to(device=device, dtype=torch.float32) for name, t in mean.items()}
        self.count = count
