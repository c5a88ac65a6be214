"""Learning-rate and momentum schedules.

Progress through the budget is a fraction in [0, 1]: steps done / max_steps (deterministic), or
elapsed / (max_seconds - GPTQ reserve) (the records' time-based schedule: step counts then vary
by a few dozen between identical runs), or whichever is further along. The LR multiplier is 1
until the warm-down starts, then falls linearly towards 0 and is held at the floor ``min_lr``
once the line drops below it: ``max(line, min_lr)``, the records' rule (PR #1394 on).
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
    """1 until ``1 - warmdown_frac``, then ``max((1 - frac) / warmdown_frac, min_lr)``."""
    if warmdown_frac <= 0 or frac < 1 - warmdown_frac:
        return 1.0
    return max(max(0.0, 1.0 - frac) / warmdown_frac, min_lr)


def warmdown_share(config: TrainConfig, step: int, frac: float) -> float:
    """The share of the budget the warm-down covers: ``warmdown_frac``, or ``warmdown_steps`` over
    the projected length of the run. Seed 003 projects it from the mean step time so far
    (remaining time / (steps * mean step time)); steps done / progress is the same projection,
    and before the first step only the step budget is known. A share above 1 (a warm-down longer
    than the run) starts the line below 1, as the seed's does."""
    if not config.warmdown_steps:
        return config.warmdown_frac
    projected_steps = step / frac if step > 0 and frac > 0 else config.max_steps
    return config.warmdown_steps / projected_steps


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


def lr_multiplier(config: TrainConfig, frac: float, step: int = 0) -> float:
    """The config's warm-down at progress ``frac`` after ``step`` steps (the step only matters
    for ``warmdown_steps``): 1, then the line over the last share, floored at ``config.min_lr``."""
    return warmdown_multiplier(frac, warmdown_share(config, step, frac), config.min_lr)


def muon_momentum(config: TrainConfig, step: int) -> float:
    """The config's Muon momentum at ``step`` (``muon_momentum_start`` warmed to ``muon_momentum``)."""
    return momentum_warmup(step, config.muon_momentum_start, config.muon_momentum, config.muon_momentum_warmup_steps)
