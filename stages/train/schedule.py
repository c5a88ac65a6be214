"""Learning-rate and momentum schedules.

Progress through the budget is a fraction in [0, 1]: steps done / max_steps (deterministic), or
elapsed / (max_seconds - GPTQ reserve) (the records' time-based schedule: step counts then vary
by a few dozen between identical runs), or whichever is further along. The LR multiplier is 1
until the warm-down starts, then falls linearly to the floor ``min_lr``.
"""

from __future__ import annotations

from .config import TrainConfig


def time_fraction(elapsed: float, max_seconds: float, reserve_seconds: float = 0.0) -> float:
    """Share of the usable seconds spent; the GPTQ reserve ends training that many seconds early."""
    usable = max_seconds - reserve_seconds
    if usable <= 0:
        return 1.0
    return min(1.0, max(0.0, elapsed / usable))


def warmdown_multiplier(frac: float, warmdown_frac: float, min_lr: float = 0.0) -> float:
    """1 until ``1 - warmdown_frac``, then linear to ``min_lr`` at frac = 1."""
    if warmdown_frac <= 0 or frac < 1 - warmdown_frac:
        return 1.0
    remaining = max(0.0, (1.0 - frac) / warmdown_frac)
    return min_lr + (1.0 - min_lr) * remaining


def momentum_warmup(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear warm-up of Muon's momentum from ``start`` to ``end`` over ``warmup_steps``."""
    if warmup_steps <= 0:
        return end
    t = min(1.0, step / warmup_steps)
    return (1 - t) * start + t * end


def progress(config: TrainConfig, step: int, elapsed: float) -> float:
    """How far through its budget a run is, by the config's schedule mode."""
    by_steps = min(1.0, step / config.max_steps)
    if config.max_seconds is None:
        by_time = 0.0
    else:
        by_time = time_fraction(elapsed, config.max_seconds, config.gptq_reserve_seconds)
    return {"steps": by_steps, "time": by_time, "auto": max(by_steps, by_time)}[config.schedule]


def lr_multiplier(config: TrainConfig, frac: float) -> float:
    """The config's warm-down: 1, then linear to ``config.min_lr`` over the last ``warmdown_frac``."""
    return warmdown_multiplier(frac, config.warmdown_frac, config.min_lr)


def muon_momentum(config: TrainConfig, step: int) -> float:
    """The config's Muon momentum at ``step`` (``muon_momentum_start`` warmed to ``muon_momentum``)."""
    return momentum_warmup(step, config.muon_momentum_start, config.muon_momentum, config.muon_momentum_warmup_steps)
