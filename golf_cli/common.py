"""What every command shares: the rich reporter, folder defaults, overrides and error handling."""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from stages.config import apply_overrides, to_dict
from stages.contract.stage_dir import default_stage_dir
from stages.errors import GolfError
from stages.progress import Reporter

err_console = Console(stderr=True)

RunOption = typer.Option("default", "--run", help="Run name: stage folders default to artifacts/<run>/<stage>.")
ForceOption = typer.Option(False, "--force", help="Replace an existing output folder.")
SetOption = typer.Option(None, "--set", help="Config override key=value (repeatable); unknown keys are errors.")


class RichReporter(Reporter):
    """key:value lines on stdout, progress bars on stderr (transient, so logs stay clean).

    Under torchrun only rank 0 speaks; the other ranks' lines go nowhere.
    """

    def __init__(self):
        quiet = int(os.environ.get("RANK", "0")) != 0
        super().__init__(stream=open(os.devnull, "w") if quiet else None)
        self.quiet = quiet

    @contextmanager
    def progress(self, description: str, total: int | None):
        if self.quiet or not err_console.is_terminal:
            yield lambda n=1: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def stage_path(explicit: Path | None, run: str, stage: str) -> Path:
    return explicit if explicit is not None else default_stage_dir(run, stage)


def resolve_config(config, overrides: list[str] | None, reporter: Reporter):
    """Apply --set overrides, then print the resolved config as one JSON log line."""
    config = apply_overrides(config, overrides or [])
    reporter.log(config=json.dumps(to_dict(config), separators=(",", ":")))
    return config


def handle_errors(command):
    """Bad input becomes one line on stderr and a non-zero exit, never a traceback.

    This is the only place a GolfError becomes a message. The message is printed as plain text
    (a path or a range like ``[2, 8]`` is no rich markup) and folded onto one line.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GolfError as exc:
            message = " ".join(str(exc).split())
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("error: interrupted; no partial output was kept")
            raise typer.Exit(130) from None

    return wrapper
