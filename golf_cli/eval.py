"""golf eval: score a packed artifact on the val split (non-overlapping or sliding windows, with or
without score-first test-time training), from a preset's eval settings plus overrides."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_args

import typer

from stages.artifact.verify import TRUST_FLAG
from stages.config import apply_overrides, to_dict
from stages.contract.lineage import lineage_folder
from stages.evaluate.budget import OverBudget
from stages.errors import GolfError
from stages.evaluate.stage import FOREIGN_DATA_FLAG, check_eval_inputs, open_artifact, run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt.config import TTTConfig
from stages.evaluate.ttt.mode import REGISTRY
from stages.progress import silent_reporter
from stages.train.presets import PRESETS, get_preset

from .common import (
    ForceOption, RichReporter, RunOption, SetOption, flat_items, handle_errors, launch_torchrun,
    launches_torchrun, log_config, print_settings, stage_path,
)

TTT_HELP = (
    f"Test-time training mode: {' | '.join(REGISTRY)}; score first, so each target is scored once before any "
    f"update uses it. {' '.join(mode.help for mode in REGISTRY.values())} "
    "Before the timed loop a mode warms up on random tokens only, never val data (--set warmup=false skips it). "
    "Change any value with --set ttt.<section>.<key>=... (sections: "
    f"{', '.join(f'ttt.{f.name}' for f in fields(TTTConfig) if f.name != 'mode')}); --ttt MODE is --set ttt.mode=MODE."
)
NPROC_HELP = (
    "Processes to score with, launched by torchrun (one per GPU with NCCL; gloo on CPU): each rank reads the "
    "artifact and scores its share of the windows (chunk-sgd: of each chunk, with gradients averaged over "
    "all ranks; lora and phased: every N-th batch of documents); the sums and --token-nll rows are gathered on "
    "rank 0, which alone writes and prints. The score equals one process's up to float rounding (lora and "
    "phased with ttt.lora.warm_start_a off: warm A passes from batch to batch on each rank)."
)
BUDGET_HELP = (
    "Evaluation budget in seconds (default 600): every second from the start of the stage (reading, "
    "decompressing and dequantizing the artifact, loading val, the TTT warm-up, scoring, adaptation, global SGD "
    "phases) except the --compare-no-ttt diagnostic. Conservative: the records timed only their scoring and "
    "adaptation loop. Same as --set budget_s=SECONDS."
)
OVER_BUDGET_HELP = (
    f"Past the budget: {' | '.join(get_args(OverBudget))}. 'stop-adapting' (default) scores every remaining "
    "target with no more updates and records adaptation_stopped_at_s and within_budget; 'fail' stops at the first "
    "check past the budget (or at the end, when scoring alone runs over) with one error line, writing nothing. "
    "Same as --set over_budget=POLICY."
)


@handle_errors
def evaluate(
    artifact: Path = typer.Argument(None, help="Pack folder or artifact file (default artifacts/<run>/pack)."),
    run: str = RunOption,
    data: Path = typer.Option(None, "--data", help="Tokenize folder (default: the one the artifact was made from; "
                              f"another is refused unless {FOREIGN_DATA_FLAG})."),
    foreign_data: bool = typer.Option(False, FOREIGN_DATA_FLAG, help="Score a --data folder other than the "
                                      "artifact's lineage's: the manifest's data_source and a data:foreign line "
                                      "mark the score, and golf inspect does not verify it."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/eval)."),
    preset: str = typer.Option(None, "--preset", help="Start from this preset's eval settings: its record's windows, "
                               "TTT mode and values (see golf train --list-presets; default: the preset the artifact's train stage "
                               "ran, as quantize does, else non-overlapping windows, no TTT; the eval_from: line "
                               "says which). The flags below and --set override them."),
    stride: int = typer.Option(None, "--stride", help="Sliding-window stride (default: non-overlapping windows)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length (default: the training length)."),
    ttt: str = typer.Option(None, "--ttt", metavar="MODE", help=TTT_HELP),
    budget_s: float = typer.Option(None, "--eval-budget-s", metavar="SECONDS", help=BUDGET_HELP),
    over_budget: str = typer.Option(None, "--over-budget", metavar="POLICY", help=OVER_BUDGET_HELP),
    compare_no_ttt: bool = typer.Option(False, "--compare-no-ttt", help="Also score the same windows without "
                                        "adaptation first and record val_bpb_no_ttt (a diagnostic, not budgeted)."),
    token_nll: Path = typer.Option(None, "--token-nll", metavar="FILE", help="Save one row per scored target "
                                   "(position, nll in nats, bytes, order of commit) to this safetensors file; "
                                   "sum(nll) / (ln 2 * sum(bytes)) is val_bpb."),
    # Foreign code is arbitrary Python: running it is an explicit choice, as trust_remote_code is.
    trust_code: bool = typer.Option(False, TRUST_FLAG, help="Run the artifact's code even when it is not the code "
                                    "this golf ships (a warning line; the manifest records it)."),
    overrides: list[str] = SetOption,
    nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved eval config as key: value "
                                      "lines and exit; reads no artifact and no data."),
    force: bool = ForceOption,
):
    """Print val_loss and val_bpb of the artifact read back from disk, with the eval time ledger.

    Runs the artifact's own code (its test-time training included) only if it is exactly the code
    this golf ships, unless trusted. Settings: --preset's eval settings (else the train lineage's preset's,
    else the defaults), then
    --stride, --seq-len, --ttt, --eval-budget-s, --over-budget, --compare-no-ttt, then --set.
    """
    flags = [("stride", stride), ("seq_len", seq_len), ("ttt.mode", ttt), ("budget_s", budget_s),
             ("over_budget", over_budget)]
    settings = [*(f"{key}={value}" for key, value in flags if value is not None), *(overrides or []),
                *_compare_flag(compare_no_ttt)]
    artifact, out = stage_path(artifact, run, "pack"), stage_path(out, run, "eval")
    preset, source = (preset, "--preset") if preset else (lineage_preset(artifact), "train lineage")
    config = apply_overrides(get_preset(preset).eval if preset else EvalConfig(), settings)
    if print_config:
        _print_config(preset, config)
        return
    launching = launches_torchrun(nproc)
    reporter = silent_reporter() if launching else RichReporter()
    reporter.log(eval_from=f"preset={preset} ({source})" if preset else "defaults (no preset in the train lineage)")
    log_config(config, reporter)
    if launching:
        check_eval_inputs(artifact, data, out, force, token_nll)
        raise typer.Exit(launch_torchrun(nproc))
    run_eval(config, artifact, data, out, force, reporter, trust_code=trust_code, token_nll=token_nll,
             foreign_data=foreign_data)


def lineage_preset(artifact: Path) -> str | None:
    """The preset the artifact's train stage ran (pack -> quantize -> train manifests), when it is one of
    golf's presets; None for a bare artifact, a lineage that does not resolve, or a custom config."""
    try:
        _, pack = open_artifact(artifact)
        if pack is None:
            return None
        train = lineage_folder(pack, "train")
    except GolfError:
        return None  # no lineage to follow: the defaults, as for a bare artifact (eval checks the artifact itself)
    preset = train.manifest.config.get("preset")
    return preset if preset in PRESETS else None


def _compare_flag(compare_no_ttt: bool) -> list[str]:
    """--compare-no-ttt as an override, applied with the others so the config checks it against ttt.mode."""
    return ["compare_no_ttt=true"] if compare_no_ttt else []


def _print_config(preset: str | None, config: EvalConfig) -> None:
    """Every field after the overrides, one ``key: value`` line each, values written as --set takes them."""
    print_settings(preset or "none", flat_items(to_dict(config)))
