"""golf pack: quantized weights + shipped code -> one artifact, gated on its real byte count."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.pack.stage import SIZE_EXIT_CODE, SIZE_LIMIT, PackConfig, check_artifact, run_pack
from stages.progress import format_line

from .common import ForceOption, RichReporter, RunOption, SetOption, handle_errors, resolve_config, stage_path


@handle_errors
def pack(
    run: str = RunOption,
    quantized: Path = typer.Option(None, "--quantized", help="Quantize folder (default artifacts/<run>/quantize)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/pack)."),
    codec: str = typer.Option("brotli", "--codec", help="Weights codec: brotli, lzma or zlib."),
    limit: int = typer.Option(SIZE_LIMIT, "--limit", help="Size limit in bytes; over it, exit 3 and write nothing."),
    check: Path = typer.Option(None, "--check", help="Only apply the size gate to this existing artifact file."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Write model.golf (header, shipped code, compressed weights) and apply the size gate."""
    if check is not None:
        verdict = check_artifact(check, limit)
        print(format_line({"artifact": str(check), **verdict}))
        if verdict["verdict"] != "PASS":
            raise typer.Exit(SIZE_EXIT_CODE)
        return
    reporter = RichReporter()
    config = resolve_config(PackConfig(codec=codec, limit=limit), overrides, reporter)
    run_pack(config, stage_path(quantized, run, "quantize"), stage_path(out, run, "pack"), force, reporter)
