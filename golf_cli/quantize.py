"""golf quantize: trained weights -> quantized codes; never touches the checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.quantize.config import QuantizeConfig
from stages.quantize.stage import run_quantize

from .common import ForceOption, RichReporter, RunOption, SetOption, handle_errors, resolve_config, stage_path


@handle_errors
def quantize(
    run: str = RunOption,
    train: Path = typer.Option(None, "--train", help="Train folder (default artifacts/<run>/train)."),
    data: Path = typer.Option(None, "--data", help="Tokenize folder to score on (default: the one train used)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/quantize)."),
    stride: int = typer.Option(None, "--stride", help="Scoring stride for pre/post-quant bpb (default non-overlapping)."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Quantize a checkpoint and report pre- and post-quant val bpb side by side."""
    reporter = RichReporter()
    config = resolve_config(QuantizeConfig(eval_stride=stride), overrides, reporter)
    run_quantize(config, stage_path(train, run, "train"), stage_path(out, run, "quantize"), data, force, reporter)
