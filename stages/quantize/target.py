"""--target-bytes: choose the clip widths so that the packed artifact lands just under a size.

Every SDClip group's k is multiplied by one factor c (a wider clip -> a coarser step -> fewer bits).
The entropy predictor (entropy.py) on round-to-nearest codes gives the size as a function of c
in about a second, so c is found by bisection; the real quantizer then runs at that c and the
artifact is really packed. What the predictor does not see (the code, the header, float tensors,
the coder's own overhead, GPTQ's codes versus RTN's) is measured from that pack and fed into the
next round, until the packed size is under the target and within ``TOLERANCE`` of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import GolfError
from .config import QuantizeConfig
from .quantizer import predicted_rtn_bytes

TOLERANCE = 0.002  # stop once the artifact uses at least 99.8% of the target
MAX_ROUNDS = 5
SEARCH_RANGE = (0.2, 5.0)


@dataclass
class Attempt:
    clip_scale: float
    predicted_bytes: int
    actual_bytes: int


def solve_clip_scale(predict: Callable[[float], float], target: int, correction: float = 0.0) -> float:
    """The smallest clip scale whose predicted codes plus ``correction`` (the bytes the predictor misses,
    measured by the last pack) land just under ``target`` (prediction falls as the scale grows)."""
    goal = target * (1 - TOLERANCE / 2) - correction
    low, high = SEARCH_RANGE
    if predict(high) > goal:
        rest = f" and the rest of the artifact (code, header, float tensors) {correction:,.0f} more" if correction else ""
        raise GolfError(f"--target-bytes {target:,} is out of reach: even with clip widths x{high} the weights' codes "
                        f"take {predict(high):,.0f} bytes{rest}")
    if predict(low) <= goal:
        return low
    for _ in range(30):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if predict(middle) > goal else (low, middle)
    return high


def fit_to_target(state, config: QuantizeConfig, quantize_at: Callable[[float], tuple],
                  packed_bytes: Callable[[tuple], int]) -> tuple[tuple, float, list[Attempt]]:
    """(quantized result, clip scale, attempts) with the packed size <= config.target_bytes."""
    target = config.target_bytes
    cache: dict[float, float] = {}

    def predict(scale: float) -> float:
        if scale not in cache:
            cache[scale] = predicted_rtn_bytes(state, config, scale)
        return cache[scale]

    attempts: list[Attempt] = []
    best = None
    correction = 0.0  # bytes the predictor misses, measured by the last real pack
    for _ in range(MAX_ROUNDS):
        scale = solve_clip_scale(predict, target, correction)
        result = quantize_at(scale)
        actual = packed_bytes(result)
        attempts.append(Attempt(round(scale, 6), int(predict(scale)), actual))
        if actual <= target and (best is None or actual > best[2]):
            best = (result, scale, actual)
        if actual <= target and actual >= target * (1 - TOLERANCE):
            break
        correction = actual - predict(scale)
    if best is None:
        raise GolfError(f"could not bring the artifact under --target-bytes {target:,} "
                        f"(last try {attempts[-1].actual_bytes:,} bytes)")
    return best[0], best[1], attempts
