"""golf eval: score a packed artifact on the val split (non-overlapping or sliding windows)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.artifact.verify import TRUST_FLAG
from stages.evaluate.stage import EvalConfig, run_eval

from .common import ForceOption, RichReporter, RunOption, SetOption, handle_errors, resolve_config, stage_path

@handle_errors
def evaluate(
    artifact: Path = typer.Argument(None, help="Pack folder or artifact file (default artifacts/<run>/pack)."),
    run: str = RunOption,
    data: Path = typer.Option(None, "--data", help="Tokenize folder (default: the one the artifact was made from)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default artifacts/<run>/eval)."),
    stride: int = typer.Option(None, "--stride", help="Sliding-window stride (default: non-overlapping windows)."),
    seq_len: int = typer.Option(None, "--seq-len", help="Window length (default: the training length)."),
    # Foreign code is arbitrary Python: running it is an explicit choice, as trust_remote_code is.
    trust_code: bool = typer.Option(False, TRUST_FLAG, help="Run the artifact's code even when it is not the code "
                                    "this golf ships (a warning line; the manifest records it)."),
    overrides: list[str] = SetOption,
    force: bool = ForceOption,
):
    """Print val_loss and val_bpb of the artifact read back from disk, with the eval time ledger.

    Runs the artifact's own code only if it is exactly the code this golf ships, unless trusted.
    """
    reporter = RichReporter()
    config = resolve_config(EvalConfig(stride=stride, seq_len=seq_len), overrides, reporter)
    run_eval(config, stage_path(artifact, run, "pack"), data, stage_path(out, run, "eval"), force, reporter,
             trust_code=trust_code)
