"""golf submit: runs of several seeds -> a records folder (README, submission.json, logs, train_gpt.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.pack.config import SIZE_LIMIT
from stages.results.stats import Baseline
from stages.submit.folder import SubmissionInfo, make_submission

from .common import ForceOption, RichReporter, handle_errors
from .stats import BaselineBpbOption, BaselineNatsOption, BaselineOption


@handle_errors
def submit(
    runs: list[str] = typer.Argument(..., help="One full run per seed: a run folder (holding eval/), an eval folder "
                                     "or a run name (artifacts/<name>)."),
    out: Path = typer.Option(..., "--out", help="The records folder to write."),
    name: str = typer.Option(None, "--name", help="Title of the submission (default: golf <preset>, <n> seeds)."),
    author: str = typer.Option("", "--author", help="Author's name (submission.json)."),
    github_id: str = typer.Option("", "--github-id", help="Author's GitHub handle (submission.json)."),
    blurb: str = typer.Option("", "--blurb", help="One paragraph on what is new (README and submission.json)."),
    limit: int = typer.Option(SIZE_LIMIT, "--limit", help="Size limit in bytes: train_gpt.py + each seed's artifact."),
    baseline: list[Path] = BaselineOption,
    baseline_bpb: list[float] = BaselineBpbOption,
    baseline_nats: list[float] = BaselineNatsOption,
    force: bool = ForceOption,
):
    """Verify the runs (every hash, same recipe and code, one seed each) and write the records folder; nothing is
    written when a run does not verify, the runs disagree, or a seed is over the size limit (exit 3). With a
    baseline, the significance block holds golf stats' record test of the seeds against it."""
    info = SubmissionInfo(name=name or "", author=author, github_id=github_id, blurb=blurb)
    make_submission(runs, out, info, limit, force, RichReporter(),
                    Baseline.choose(baseline or (), baseline_bpb or (), baseline_nats or ()))
