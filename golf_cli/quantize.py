"""golf quantize: trained weights -> quantized codes; never touches the checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.progress import Reporter
from stages.quantize.config import QuantizeConfig
from stages.quantize.config import DEFAULT_SCHEME, SCHEMES, get_scheme
from stages.quantize.dequant import KIND_FLOAT
from stages.quantize.stage import run_quantize
from stages.quantize.tensor_report import TensorReport
from stages.train.presets import PRESETS, get_preset

from .common import (
    ForceOption, RichReporter, RunOption, SetOption, handle_errors, print_table, resolve_config, stage_path,
)

REPORT_COLUMNS = [("name", "tensor"), ("group", "group"), ("method", "method"), ("bits", "bits"),
                  ("clip_sigmas", "k"), ("relative_error", "rel err"), ("hessian_error", "H err"),
                  ("predicted_bits_per_weight", "bits/w"), ("predicted_bytes", "predicted B"),
                  ("compressed_bytes", "compressed B")]


@handle_errors
def quantize(
    run: str = RunOption,
    train: Path = typer.Option(None, "--train", help="Train folder (default artifacts/<run>/train)."),
    data: Path = typer.Option(None, "--data", help="Tokenize folder to score on (default: the one train used)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/quantize)."),
    preset: str = typer.Option(None, "--preset", help="Use this training preset's quantize settings (default: the "
                                                       "preset the train folder was trained with, if any)."),
    scheme: str = typer.Option(None, "--scheme", help=f"Named settings instead of a preset's: {', '.join(SCHEMES)} "
                                                       f"(default {DEFAULT_SCHEME} for a custom run)."),
    target_bytes: int = typer.Option(None, "--target-bytes", help="Fit the clip widths so the packed artifact lands under this."),
    stride: int = typer.Option(None, "--stride", help="Scoring stride for pre/post-quant bpb (default non-overlapping)."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Quantize a checkpoint and report pre- and post-quant val bpb side by side.

    Pre-quant bpb: train's final val score if train scored the very same windows, else measured here.
    Settings: --scheme, else --preset's, else those of the preset train used, else the default scheme;
    --set overrides any field after.
    """
    reporter = RichReporter()
    train_dir = stage_path(train, run, "train")
    # Bad settings are refused before any folder is opened (the defaults may come from the train folder).
    apply_overrides(get_scheme(DEFAULT_SCHEME), overrides or [])
    base = replace(_base_settings(preset, scheme, train_dir, reporter), eval_stride=stride,
                   target_bytes=target_bytes or 0)
    config = resolve_config(base, overrides, reporter)
    manifest = run_quantize(config, train_dir, stage_path(out, run, "quantize"), data, force, reporter)
    if not reporter.quiet:
        print_report([TensorReport.from_dict(row) for row in manifest.metrics["tensors"]])


def _base_settings(preset: str | None, scheme: str | None, train_dir: Path, reporter: Reporter) -> QuantizeConfig:
    """The settings before --set, and a log line saying where they came from."""
    if preset and scheme:
        raise GolfError("give --preset or --scheme, not both")
    if scheme:
        source, config = f"scheme {scheme}", get_scheme(scheme)
    elif preset:
        source, config = f"preset {preset}", get_preset(preset).quantize
    else:
        trained_with = StageDir(train_dir, "train").manifest.config.get("preset")
        if trained_with in PRESETS:
            source, config = f"preset {trained_with} (the train folder's)", PRESETS[trained_with].quantize
        else:
            source, config = f"scheme {DEFAULT_SCHEME} (no preset recorded)", get_scheme(DEFAULT_SCHEME)
    reporter.log(quantize_settings=source)
    return config


def print_report(rows: list[TensorReport]) -> None:
    table = Table(*(title for _, title in REPORT_COLUMNS), title="per-tensor quantization report")
    for row in rows:
        if row.kind != KIND_FLOAT:
            table.add_row(*(_cell(getattr(row, field)) for field, _ in REPORT_COLUMNS))
    print_table(table, stderr=True)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
