"""Named quantization settings (`golf quantize --scheme NAME`); --set overrides any field after.

- baseline-int8: the naive baseline's export: int8 round-to-nearest, rows clipped at a quantile.
- rtn-int6: the records' int6/int8 SDClip grid, round-to-nearest (the reference for GPTQ).
- gptq-int6: the records' export (PR #1776 on): full-Hessian GPTQ on the SDClip grid (the default).
- gptq-lqer: gptq-int6 plus LQER rank 4 on the 3 worst matrices in the top record's storage (PR #1855:
  A int2 with one scale per matrix, B int4 with one scale per group of 64).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import GolfError
from .config import GroupQuant, QuantizeConfig

BASELINE_INT8 = GroupQuant(bits=8, clip="quantile")

SCHEMES: dict[str, QuantizeConfig] = {
    "baseline-int8": QuantizeConfig(method="rtn", attention=BASELINE_INT8, mlp=BASELINE_INT8,
                                    embedding=BASELINE_INT8, other=BASELINE_INT8),
    "rtn-int6": QuantizeConfig(method="rtn"),
    "gptq-int6": QuantizeConfig(),
    "gptq-lqer": QuantizeConfig(lqer_rank=4, lqer_top_k=3, lqer_format="record"),
}
DEFAULT_SCHEME = "gptq-int6"


def get_scheme(name: str, **changes) -> QuantizeConfig:
    if name not in SCHEMES:
        raise GolfError(f"unknown quantization scheme {name!r}; available: {', '.join(SCHEMES)}")
    return replace(SCHEMES[name], **changes)
