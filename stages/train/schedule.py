"""Learning-rate and momentum schedules.

Progress is the larger of step / max_steps and elapsed / max_seconds, so whichever budget runs
out first drives the warm-down. With the step budget binding the schedule is deterministic;
with the clock binding, step counts vary a little between identical runs (as in the records).
"""

from __future__ import annotations

from .config import TrainConfig


def progress(config: TrainConfig, step: int, elapsed: float) -> float:
    by_steps = step / config.max_steps
    by_time = elapsed / config.max_seconds if config.max_seconds > 0 else 0.0
    return min(1.0, max(by_steps, by_time))


def lr_multiplier(config: TrainConfig, frac: float) -> float:
    """1 until the warm-down starts, then linear to 0 at the end of the budget."""
    if config.warmdown_frac <= 0 or frac < 1 - config.warmdown_frac:
        return 1.0
    return max(0.0, (1.0 - frac) / config.warmdown_frac)


def muon_momentum(config: TrainConfig, step: int) -> float:
    if config.muon_momentum_warmup_steps <= 0:
        return config.muon_momentum
    t = min(1.0, step / config.muon_momentum_warmup_steps)
    return (1 - t) * config.muon_momentum_start + t * config.muon_momentum
