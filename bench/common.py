"""Shared by the bench scripts: the news data folder, result saving and table printing."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.contract.environment import capture  # noqa: E402
from stages.contract.stage_dir import atomic_write_text  # noqa: E402
from stages.tokenize.stage import run_tokenize  # noqa: E402
from stages.tokenize.config import TokenizeConfig

RESULTS = ROOT / "bench" / "results"


def news_data(path: Path) -> Path:
    """The tokenized news corpus (sp1024, exact spec), made on first use."""
    if not (path / "manifest.json").is_file():
        run_tokenize(TokenizeConfig(vocab_size=1024), path)
    return path


def portable(value):
    """A path inside the repository as a path relative to it: saved results hold no machine paths."""
    if isinstance(value, str) and value.startswith("/"):
        value = Path(value)
    if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
        return str(value.resolve().relative_to(ROOT))
    return str(value) if isinstance(value, Path) else value


def save(name: str, rows: list[dict], settings: dict) -> Path:
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: portable(value) for key, value in settings.items()}
    payload = {"settings": settings, "rows": rows, "environment": capture(), "host": platform.node()}
    atomic_write_text(out, json.dumps(payload, indent=1) + "\n")
    return out


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console(width=max(Console().width, 160)).print(table)
