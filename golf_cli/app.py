"""The `golf` command: tokenize -> train -> quantize -> pack -> eval, plus inspect."""

from __future__ import annotations

import typer

from .eval import evaluate
from .inspect import inspect
from .pack import pack
from .quantize import quantize
from .tokenize import tokenize
from .train import train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train the best language model that fits in 16,000,000 bytes, one audited stage at a time.",
)
app.command("tokenize")(tokenize)
app.command("train")(train)
app.command("quantize")(quantize)
app.command("pack")(pack)
app.command("eval")(evaluate)
app.command("inspect")(inspect)


def main() -> None:
    app()
