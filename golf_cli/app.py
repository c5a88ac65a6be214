"""The `golf` command: tokenize -> train -> quantize -> pack -> eval, plus inspect, submit, stats and report."""

from __future__ import annotations

import signal

import typer

from .common import GolfCommand, GolfGroup
from .eval import evaluate
from .inspect import inspect
from .pack import pack
from .quantize import quantize
from .report import report
from .stats import stats
from .submit import submit
from .tokenize import tokenize
from .train import train

app = typer.Typer(
    cls=GolfGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train the best language model that fits in 16,000,000 bytes, one audited stage at a time.",
)
for name, command in (("tokenize", tokenize), ("train", train), ("quantize", quantize), ("pack", pack),
                      ("eval", evaluate), ("inspect", inspect), ("submit", submit), ("stats", stats),
                      ("report", report)):
    app.command(name, cls=GolfCommand)(command)


def _interrupt(signum, frame):
    # SIGTERM (a job scheduler, torchrun tearing down) unwinds like Ctrl-C, so every stage's
    # temporary folder, lock and newly created run folder are removed on the way out.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    app()
