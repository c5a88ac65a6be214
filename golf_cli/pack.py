"""golf pack: quantized weights + shipped code -> one artifact, gated on its real byte count."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from stages.artifact.verify import TRUST_FLAG
from stages.errors import GolfError
from stages.pack.compare import COMPARE_COLUMNS
from stages.pack.config import SIZE_LIMIT, PackConfig
from stages.pack.gate import SIZE_EXIT_CODE, check_artifact
from stages.pack.stage import run_pack
from stages.progress import format_line
from stages.submit.folder import check_submission

from .common import (
    ForceOption, RichReporter, RunOption, SetOption, handle_errors, print_table, resolve_config, stage_path,
)


@handle_errors
def pack(
    run: str = RunOption,
    quantized: Path = typer.Option(None, "--quantized", help="Quantize folder (default artifacts/<run>/quantize)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/pack)."),
    codec: str = typer.Option("brotli", "--codec", help="Codec of the weights sections other than the codes: brotli, lzma, "
                              "zstd, zlib, rans, or best (per section the smallest); the codes: --set codes_codec=... (rans)."),
    limit: int = typer.Option(SIZE_LIMIT, "--limit", help="Size limit in bytes; over it, exit 3 and write nothing."),
    compare: bool = typer.Option(False, "--compare", help="First print the size under every codec, per section and in total."),
    check: Path = typer.Option(None, "--check", help="Only check this existing artifact file (well-formed, its code "
                               "golf's own, and its size), or a `golf submit` folder: train_gpt.py's real bytes plus "
                               "the largest seed's artifact bytes."),
    code: Path = typer.Option(None, "--code", help="With --check ARTIFACT: a code file shipped beside it (a "
                              "submission's train_gpt.py); its real bytes count toward the limit too."),
    trust_code: bool = typer.Option(False, TRUST_FLAG, help="With --check: pass even when the artifact's code is not "
                                    "the code this golf ships (a warning line)."),
    no_ttt: bool = typer.Option(False, "--no-ttt", help="Leave the test-time training code out of the artifact "
                                "(fewer code bytes; golf eval --ttt then refuses it). Same as --set ship_ttt=false."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Write model.golf (header, shipped code, the codes section and one section per tensor group) and apply the size gate."""
    if check is not None:
        if check.is_dir():
            if code is not None:
                raise GolfError("--code goes with an artifact file; a submission folder's code is its train_gpt.py")
            result = check_submission(check, limit)
            print(format_line({"submission": str(check), **result.as_dict()}))
        else:
            result = check_artifact(check, limit, trust_code, RichReporter(), code)
            print(format_line({"artifact": str(check), **result.as_dict()}))
        if not result.verdict.passed:
            raise GolfError(f"{check}: {result.over_limit_message()}", exit_code=SIZE_EXIT_CODE)
        return
    reporter = RichReporter()
    # Flags go through the typed overrides, so a misspelt codec is a one-line error listing the choices.
    flags = [f"codec={codec}", f"limit={limit}", *(["ship_ttt=false"] if no_ttt else [])]
    config = resolve_config(PackConfig(), [*flags, *(overrides or [])], reporter)
    run_pack(config, stage_path(quantized, run, "quantize"), stage_path(out, run, "pack"), force, reporter,
             compare=compare, show_comparison=None if reporter.quiet else _print_comparison)


def _print_comparison(rows: dict[str, dict]) -> None:
    """Bytes per section and in total under each codec; the smallest codec of each row in bold."""
    table = Table("section", "raw", *COMPARE_COLUMNS, title="artifact bytes by codec")
    for row, sizes in rows.items():
        smallest = min(sizes[column] for column in COMPARE_COLUMNS)
        cells = [_cell(sizes[column], sizes[column] == smallest) for column in COMPARE_COLUMNS]
        if "best_codec" in sizes:
            cells[-1] += f" ({sizes['best_codec']})"
        table.add_row(row, f"{sizes['raw']:,}" if "raw" in sizes else "", *cells)
    print_table(table)


def _cell(size: int, bold: bool) -> str:
    return f"[bold]{size:,}[/]" if bold else f"{size:,}"
