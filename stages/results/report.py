"""One HTML page per run: its plots (PNG files beside the page, also embedded so the page stands
alone), a few headline numbers, and a line in place of each plot whose data was not recorded."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from ..contract.stage_dir import StageDir, atomic_write_bytes, atomic_write_text
from ..errors import GolfError
from .plots import PLOTS, pyplot
from .run_folder import RunStages, Unavailable, find_stages

PAGE_NAME = "report.html"
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "img{max-width:100%;border:1px solid #ddd}.na{color:#a33}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}")


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its PNG, or why it could not be drawn."""

    name: str
    """File stem of the PNG (``<name>.png`` beside the page)."""
    title: str
    """The heading above it."""
    png: bytes | None
    """The image (None when not available)."""
    missing: str = ""
    """Why the plot is not available (empty when it is)."""


def draw_plots(run: RunStages) -> list[Plot]:
    """Every plot of ``PLOTS``, drawn from the run, or the reason it is not available."""
    plots = []
    for name, title, figure in PLOTS:
        try:
            fig = figure(run)
        except Unavailable as reason:
            plots.append(Plot(name, title, None, str(reason)))
            continue
        except GolfError as exc:  # a hash check of a file the plot reads
            plots.append(Plot(name, title, None, str(exc)))
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        pyplot().close(fig)
        plots.append(Plot(name, title, buffer.getvalue()))
    return plots


def write_report(path: str | Path, out_dir: str | Path | None = None) -> tuple[Path, list[Plot]]:
    """Draw the run's plots and write ``report.html`` and the PNGs into ``out_dir`` (default <run>/report)."""
    run = find_stages(path)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GolfError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    plots = draw_plots(run)
    for plot in plots:
        if plot.png is not None:
            atomic_write_bytes(out / f"{plot.name}.png", plot.png)
    atomic_write_text(out / PAGE_NAME, render_html(run, plots))
    return out / PAGE_NAME, plots


def render_html(run: RunStages, plots: list[Plot]) -> str:
    """The page: headline numbers, then each plot embedded (base64) or its 'not available' line."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>golf report: {_e(run.root.name)}</title>"
             f"<style>{STYLE}</style></head><body><h1>golf report: {_e(run.root.name)}</h1>", _headline(run)]
    for plot in plots:
        parts.append(f"<h2 id='{plot.name}'>{_e(plot.title)}</h2>")
        if plot.png is None:
            parts.append(f"<p class='na'>not available: {_e(plot.missing)}</p>")
        else:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f"<img alt='{plot.name}' src='data:image/png;base64,{data}'>"
                         f"<p><a href='{plot.name}.png'>{plot.name}.png</a></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _headline(run: RunStages) -> str:
    """One table row per stage folder: whether it verifies and its main numbers."""
    rows = ["<table><tr><th>stage folder</th><th>verifies</th><th>numbers</th></tr>"]
    for folder in run.all():
        problem = folder.integrity_problem()
        rows.append(f"<tr><td>{_e(folder.path.name)}</td><td>{'yes' if not problem else _e('no: ' + problem)}</td>"
                    f"<td>{_e(_numbers(folder))}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


HEADLINE_KEYS = {
    "tokenize": ("val_tokens", "val_bytes_per_token"),
    "train": ("steps", "train_seconds", "val_bpb"),
    "quantize": ("pre_quant_val_bpb", "post_quant_val_bpb", "quant_gap_bpb"),
    "pack": ("bytes_total", "margin", "verdict"),
    "eval": ("val_bpb", "val_loss", "ttt_mode", "mode", "budgeted_s", "partial"),
}


def _numbers(folder: StageDir) -> str:
    metrics = folder.manifest.metrics
    shown = [(key, metrics[key]) for key in HEADLINE_KEYS.get(folder.stage, ()) if key in metrics]
    return ", ".join(f"{key} {value:.6g}" if isinstance(value, float) else f"{key} {value}" for key, value in shown)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
