"""What every command shares: the rich reporter, tables, flags, folder defaults, overrides and error handling."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from stages.config import apply_overrides, to_dict
from stages.contract.stage_dir import default_stage_dir
from stages.errors import GolfError
from stages.progress import Reporter

err_console = Console(stderr=True)
# A pipe or a file has no width: rich would fold tables to 80 columns (or $COLUMNS); print them whole.
PIPE_WIDTH = 100_000

RunOption = typer.Option("default", "--run", help="Run name: stage folders default to artifacts/<run>/<stage>.")
ForceOption = typer.Option(False, "--force", help="Replace an existing output folder.")
SetOption = typer.Option(None, "--set", metavar="KEY=VALUE",
                         help="Config override (repeatable); unknown keys are errors.")


class UntypedFlags:
    """Flags show no value type in --help: typer prints '<bool>' beside --force or --help, as if
    they took a value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # the help option is made here, so it is covered too
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class GolfCommand(UntypedFlags, TyperCommand):
    """Every golf command."""


class GolfGroup(UntypedFlags, TyperGroup):
    """The `golf` command itself. A command line the parser refuses (an unknown flag, a value of
    the wrong type) is one `error:` line and exit 2, like every other bad input."""

    def main(self, *args, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            err_console.print("error: interrupted; no partial output was kept", highlight=False)
            sys.exit(130)
        except Exception as exc:
            if not _is_parse_error(exc):
                raise
            message = " ".join(exc.format_message().split())
            if message:  # an empty one follows the help text of a bare `golf`
                where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
                err_console.print(f"error: {message}{where}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


def _is_parse_error(exc: Exception) -> bool:
    """A click usage or parameter error. Matched by shape, not class: typer vendors its own copy of
    click from 0.20 on, and the class lives in a different module depending on the version."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def print_table(table: Table, stderr: bool = False) -> None:
    """On a terminal, fit the table to its width; into a pipe or file, print every cell whole."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    console.print(table)


class RichReporter(Reporter):
    """key:value lines on stdout, progress bars on stderr (transient, so logs stay clean) when both
    are terminals; otherwise (piped, logged) a plain ``progress:`` line every ~10 s on stdout.

    Under torchrun only rank 0 speaks; the other ranks' lines go nowhere.
    """

    def __init__(self):
        quiet = int(os.environ.get("RANK", "0")) != 0
        super().__init__(stream=open(os.devnull, "w") if quiet else None)
        self.quiet = quiet

    @contextmanager
    def progress(self, description: str, total: int | None):
        if self.quiet:
            yield lambda n=1: None
            return
        if not (err_console.is_terminal and sys.stdout.isatty()):  # piped or logged: plain periodic lines
            with super().progress(description, total) as advance:
                yield advance
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        # While a bar is live, rich puts a proxy in sys.stdout that prints each line above the bar
        # (Reporter writes to the current sys.stdout), so a log line never lands on the bar's line.
        with Progress(*columns, console=err_console, transient=True, redirect_stdout=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def launches_torchrun(nproc: int) -> bool:
    """Whether this process starts torchrun for ``--nproc``: not when it is already one of its ranks.

    The launcher checks the arguments first (silently: ``silent_reporter``), so that a bad one is
    one line, not one line per rank followed by torchrun's traceback.
    """
    if nproc < 1:
        raise GolfError(f"--nproc must be at least 1, got {nproc}")
    return nproc > 1 and "WORLD_SIZE" not in os.environ


def launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun with --nproc removed; return its exit code.

    golf's arguments follow a '--': torchrun's parser would otherwise take them for its own
    (it rejects --run as an ambiguous prefix of its --run-path).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "golf_cli", "--", *without_nproc(sys.argv[1:])]
    return subprocess.call(command)


def without_nproc(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def stage_path(explicit: Path | None, run: str, stage: str) -> Path:
    return explicit if explicit is not None else default_stage_dir(run, stage)


def resolve_config(config, overrides: list[str] | None, reporter: Reporter):
    """Apply --set overrides, then print the resolved config as one JSON log line."""
    config = apply_overrides(config, overrides or [])
    log_config(config, reporter)
    return config


def log_config(config, reporter: Reporter) -> None:
    reporter.log(config=json.dumps(to_dict(config), separators=(",", ":")))


def print_settings(preset: str, items: list[tuple[str, object]]) -> None:
    """--print-config: the preset's name, then one ``key: value`` line per setting, values written as
    --set takes them."""
    print(f"preset: {preset}")
    for key, value in items:
        print(f"{key}: {as_override(value)}".rstrip())


def flat_items(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested config dict as (dotted key, value) pairs, the keys --set takes."""
    items = []
    for key, value in data.items():
        items.extend(flat_items(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)])
    return items


def as_override(value) -> str:
    """The text --set parses back to ``value``: none, true/false, comma-joined tuples."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


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
