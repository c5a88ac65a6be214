"""golf train: tokenized data -> weights, from a named preset plus overrides."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from stages.config import apply_overrides, field_docs, from_dict, to_dict
from stages.contract.output_path import check_output_path
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.memory import COMPONENTS, GIB, H100_GB, memory_lines, preset_reports
from stages.progress import Reporter, silent_reporter
from stages.train.checkpointing import checkpoint_preset, read_checkpoint_config
from stages.train.config import RunConfig
from stages.train.presets import PRESETS, Preset, get_preset, with_tokenizer_vocab
from stages.train.stage import run_train, train_inputs

from .common import (
    ForceOption, RichReporter, RunOption, SetOption, flat_items, handle_errors, launch_torchrun,
    launches_torchrun, log_config, print_settings, print_table, stage_path,
)

VOCAB_KEY = "model.vocab_size"
DEFAULT_PRESET = "tiny"


@handle_errors
def train(
    run: str = RunOption,
    data: Path = typer.Option(None, "--data", help="Tokenize folder (default artifacts/<run>/tokenize)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/train)."),
    preset: str = typer.Option(None, "--preset", help="Named configuration; see --list-presets (default tiny; "
                               "on --resume, the checkpoint's: another is an error)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Step budget (overrides the preset)."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Wall-clock budget of the timed loop."),
    seed: int = typer.Option(None, "--seed", help="Seed for init and data order."),
    overrides: list[str] = SetOption,
    resume: Path = typer.Option(None, "--resume", help="Continue from a checkpoint folder (its config, plus --set)."),
    nproc: int = typer.Option(1, "--nproc", help="Processes to launch with torchrun (GPUs, or gloo on CPU)."),
    list_presets: bool = typer.Option(False, "--list-presets", help="Show the presets and exit."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the resolved config (quantize and eval settings too) as key: value lines "
                                           "and exit; reads no data."),
    print_memory: bool = typer.Option(False, "--print-memory",
                                      help="Print the peak device memory of one training step and of the preset's TTT "
                                           "mode at full size, by component (computed on fake tensors, no GPU) and exit; "
                                           "reads no data."),
    device_gb: float = typer.Option(H100_GB, "--device-gb", help="Device memory in GB for --print-memory's verdict."),
    force: bool = ForceOption,
):
    """Train the model; weights go to model.safetensors, the time ledger to the manifest.

    model.vocab_size follows the tokenize folder unless --set names it (on --resume, the checkpoint's).
    """
    if list_presets:
        _print_presets()
        return
    if print_config:
        if resume:
            raise GolfError("--print-config shows a preset's config; a checkpoint's is in its state.json")
        _print_config(get_preset(preset or DEFAULT_PRESET), overrides or [], max_steps, max_seconds, seed)
        return
    if print_memory:
        _print_memory(get_preset(preset or DEFAULT_PRESET), overrides or [], max_steps, max_seconds, seed, device_gb)
        return
    launching = launches_torchrun(nproc)
    reporter = silent_reporter() if launching else RichReporter()
    data_dir, out_dir = stage_path(data, run, "tokenize"), stage_path(out, run, "train")
    overrides = _with_flags(overrides or [], max_steps, max_seconds, seed)
    if resume:
        preset = _resumed_preset(resume, preset)
        config = apply_overrides(from_dict(RunConfig, read_checkpoint_config(resume)), overrides)
    else:
        preset = preset or DEFAULT_PRESET
        config = _vocab_from_tokenizer(apply_overrides(get_preset(preset).config, overrides), data_dir, overrides,
                                       reporter)
    log_config(config, reporter)
    if launching:
        check_output_path(out_dir, "train", force, train_inputs(data_dir, resume))
        raise typer.Exit(launch_torchrun(nproc))
    run_train(config, data_dir, out_dir, force, reporter, preset, resume)


def _resumed_preset(checkpoint: Path, asked: str | None) -> str | None:
    """The preset a resumed run records: its checkpoint's (so quantize takes that preset's scheme). A
    --preset naming another is refused: the checkpoint's config is what resumes, only --set changes it."""
    recorded = checkpoint_preset(checkpoint)
    if asked is not None and asked != recorded:
        raise GolfError(f"--preset {asked} disagrees with the checkpoint's preset ({recorded or 'none recorded'}): "
                        "a resumed run continues its checkpoint's config; drop --preset and change settings with --set")
    return recorded


def _with_flags(overrides: list[str], max_steps, max_seconds, seed) -> list[str]:
    """The shortcut flags as overrides, before --set (so a --set of the same key wins)."""
    flags = [f"train.{k}={v}" for k, v in (("max_steps", max_steps), ("max_seconds", max_seconds), ("seed", seed))
             if v is not None]
    return [*flags, *overrides]


def _print_config(preset: Preset, overrides: list[str], max_steps, max_seconds, seed) -> None:
    """Every field of the preset after the overrides, then its quantize and eval settings: one ``key: value``
    line each, values written as --set takes them (``model.vocab_size`` is the preset's: training
    takes the tokenizer's unless --set names it)."""
    config = apply_overrides(preset.config, _with_flags(overrides, max_steps, max_seconds, seed))
    print_settings(preset.name, [*flat_items(to_dict(config)), *flat_items(to_dict(preset.quantize), "quantize."),
                                 *flat_items(to_dict(preset.eval), "eval.")])


def _print_memory(preset: Preset, overrides: list[str], max_steps, max_seconds, seed, device_gb: float) -> None:
    """--print-memory: a table of each step's bytes by component at its peak (GiB), then the same as
    key:value lines with the verdict against ``device_gb`` (stages/memory.py)."""
    if device_gb <= 0:
        raise GolfError(f"--device-gb must be positive, got {device_gb:g}")
    config = apply_overrides(preset.config, _with_flags(overrides, max_steps, max_seconds, seed))
    evaluation = preset.eval
    reports = preset_reports(config, evaluation.ttt, device_gb, evaluation.seq_len, evaluation.batch_windows)
    table = Table("GiB at the peak", *(report.name for report in reports))
    for component in COMPONENTS:
        if any(component in report.at_peak for report in reports):
            table.add_row(component, *(f"{report.at_peak.get(component, 0) / GIB:.2f}" for report in reports))
    table.add_row("peak", *(f"{report.peak / GIB:.2f}" for report in reports))
    table.add_row(f"fits {device_gb:g} GB", *("yes" if report.fits(device_gb) else "no" for report in reports))
    print_table(table)
    print(f"preset:{preset.name}")
    print("\n".join(memory_lines(reports, device_gb)))


def _vocab_from_tokenizer(config: RunConfig, data_dir: Path, overrides: list[str], reporter: Reporter) -> RunConfig:
    """The tokenize folder's vocab replaces the preset's unless --set model.vocab_size was given."""
    tokenizer_vocab = int(StageDir(data_dir, "tokenize").lineage["vocab_size"])
    explicit = any(item.partition("=")[0].strip() == VOCAB_KEY for item in overrides)
    config = with_tokenizer_vocab(config, tokenizer_vocab, explicit)
    reporter.log(vocab_size=config.model.vocab_size, vocab_from="--set" if explicit else "tokenizer",
                 tokenizer_vocab=tokenizer_vocab, data=str(data_dir))
    return config


def _print_presets() -> None:
    table = Table("preset", "model", "batch", "budget", "source")
    for preset in PRESETS.values():
        m, t = preset.config.model, preset.config.train
        table.add_row(preset.name, f"{m.num_layers}x{m.model_dim}, vocab {m.vocab_size}",
                      f"{t.batch_tokens} tok x seq {t.seq_len}", _budget(t), preset.source)
    print_table(table)
    docs = field_docs(type(next(iter(PRESETS.values())).config.train))
    print(f"{len(docs)} train fields; override any with --set train.<field>=<value>; "
          "model.vocab_size follows the tokenizer unless set")


def _budget(train) -> str:
    """A preset's training budget: its steps, and its wall-clock cap if it has one."""
    cap = f" / {train.max_seconds:g} s" if train.max_seconds is not None else ", no time cap"
    return f"{train.max_steps} steps{cap}"
