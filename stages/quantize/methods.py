"""The quantization methods (``QuantizeConfig.method``): how a matrix's codes are chosen on its grid.

Every method rounds onto the same per-row grid (rows.py chooses the scales); a method only picks
which grid point each weight takes. A method that needs calibration Hessians declares it: the
stage then collects them, and a matrix that has none falls back to round-to-nearest (its report
row says 'rtn'). A new method is a function here and its name in ``QuantizeConfig.method``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .gptq import GptqSettings, gptq_codes
from .rows import rtn_codes

if TYPE_CHECKING:
    from .config import QuantizeConfig

RTN = "rtn"


@dataclass(frozen=True)
class Method:
    """What the quantizer and the stage need to know of one method."""

    codes: Callable[..., torch.Tensor]
    """(weight, scale, bits, hessian, config, device) -> int8 codes of ``weight`` on the grid of ``scale``."""
    needs_hessians: bool
    """Whether it reads calibration Hessians (the stage collects them only for such a method)."""


def _round_to_nearest(weight, scale, bits: int, hessian, config: QuantizeConfig, device) -> torch.Tensor:
    return rtn_codes(weight, scale, bits)


def _gptq(weight, scale, bits: int, hessian, config: QuantizeConfig, device) -> torch.Tensor:
    settings = GptqSettings(bits, config.damping, config.act_order, config.block_size)
    return gptq_codes(weight.to(device), hessian.to(device), scale.to(device), settings).cpu()


METHODS = {
    "gptq": Method(_gptq, needs_hessians=True),
    RTN: Method(_round_to_nearest, needs_hessians=False),
}


def method_for(name: str, hessian: torch.Tensor | None) -> str:
    """The method that quantizes one matrix: ``name``, or round-to-nearest where it needs a Hessian
    the matrix has none of."""
    return RTN if METHODS[name].needs_hessians and hessian is None else name
