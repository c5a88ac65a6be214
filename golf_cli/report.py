"""golf report: one HTML page with the run's plots (loss curves, schedules, time ledger, quantization,
artifact bytes, TTT gain per document), the PNGs beside it."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from stages.progress import format_line
from stages.results.report import write_report

from .common import handle_errors


@handle_errors
def report(
    run: Path = typer.Argument(..., help="A run folder (artifacts/<run>) or any stage folder of it (its lineage "
                               "upstream is followed)."),
    out: Path = typer.Option(None, "--out", metavar="DIR", help="Where report.html and the PNGs go (default "
                             "<run>/report)."),
):
    """A plot whose data the run did not record is one 'not available: reason' line in its place."""
    page, plots = write_report(run, out)
    for plot in plots:
        fields = {"plot": plot.name}
        fields.update({"file": _shown(page.parent / f"{plot.name}.png")} if plot.png is not None
                      else {"status": f"not available: {plot.missing}"})
        print(format_line(fields))
    drawn = sum(plot.png is not None for plot in plots)
    print(format_line({"report": _shown(page), "plots": drawn, "not_available": len(plots) - drawn}))


def _shown(path: Path) -> str:
    """A path under the working folder relative to it, any other as it is."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative
