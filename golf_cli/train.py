"""golf train: tokenized data -> weights, from a named preset plus overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table

from stages.config import field_docs, from_dict
from stages.train.checkpointing import read_checkpoint_config
from stages.train.config import RunConfig
from stages.train.presets import PRESETS, get_preset
from stages.train.stage import run_train

from .common import ForceOption, RichReporter, RunOption, SetOption, err_console, handle_errors, resolve_config, stage_path


@handle_errors
def train(
    run: str = RunOption,
    data: Path = typer.Option(None, "--data", help="Tokenize folder (default artifacts/<run>/tokenize)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/train)."),
    preset: str = typer.Option("tiny", "--preset", help="Named configuration; see --list-presets."),
    max_steps: int = typer.Option(None, "--max-steps", help="Step budget (overrides the preset)."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Wall-clock budget of the timed loop."),
    seed: int = typer.Option(None, "--seed", help="Seed for init and data order."),
    overrides: list[str] = SetOption,
    resume: Path = typer.Option(None, "--resume", help="Continue from a checkpoint folder (its config, plus --set)."),
    nproc: int = typer.Option(1, "--nproc", help="Processes to launch with torchrun (GPUs, or gloo on CPU)."),
    list_presets: bool = typer.Option(False, "--list-presets", help="Show the presets and exit."),
    force: bool = ForceOption,
):
    """Train the model; weights go to model.safetensors, the time ledger to the manifest."""
    if list_presets:
        _print_presets()
        return
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_torchrun(nproc))
    reporter = RichReporter()
    flags = [f"train.{k}={v}" for k, v in (("max_steps", max_steps), ("max_seconds", max_seconds), ("seed", seed)) if v is not None]
    base = from_dict(RunConfig, read_checkpoint_config(resume)) if resume else get_preset(preset).config
    config = resolve_config(base, [*flags, *(overrides or [])], reporter)
    run_train(config, stage_path(data, run, "tokenize"), stage_path(out, run, "train"), force, reporter,
              "resumed" if resume else preset, resume)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun with --nproc removed; return its exit code."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "golf_cli", *args]
    return subprocess.call(command)


def _print_presets() -> None:
    table = Table("preset", "model", "batch", "budget", "source")
    for preset in PRESETS.values():
        m, t = preset.config.model, preset.config.train
        table.add_row(preset.name, f"{m.num_layers}x{m.model_dim}, vocab {m.vocab_size}",
                      f"{t.batch_tokens} tok x seq {t.seq_len}", f"{t.max_steps} steps / {t.max_seconds:g} s", preset.source)
    err_console.print(table)
    docs = field_docs(type(next(iter(PRESETS.values())).config.train))
    err_console.print(f"{len(docs)} train fields; override any with --set train.<field>=<value>")
