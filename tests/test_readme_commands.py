"""Every `golf` command the README shows is one golf accepts: its flags, their values, its --set keys.

The commands are parsed by the real CLI's parser (click, under typer) without running them, and
each `--set key=value` is applied to the config that command resolves, so a flag or a key that the
README names but golf lost (or never had) fails here. The multi-process command also runs for real
in tests/test_cli_usability.py, and the whole pipeline through the CLI in tests/test_cli.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from golf_cli.app import app
from stages.config import apply_overrides
from stages.evaluate.stage import EvalConfig
from stages.pack.stage import PackConfig
from stages.quantize.schemes import DEFAULT_SCHEME, get_scheme
from stages.tokenize.stage import TokenizeConfig
from stages.train.presets import get_preset

README = Path(__file__).resolve().parents[1] / "README.md"
# The config each command's --set overrides apply to.
CONFIGS = {
    "tokenize": TokenizeConfig,
    "train": lambda: get_preset("tiny").config,
    "quantize": lambda: get_scheme(DEFAULT_SCHEME),
    "pack": PackConfig,
    "eval": EvalConfig,
}


def readme_commands() -> list[list[str]]:
    """The indented `golf <command> ...` lines of the README, comments and placeholders removed."""
    commands = []
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^    golf (\w+)( .*)?$", line)
        if not match or "->" in line:
            continue
        text = line.strip().split(" # ")[0].replace("<run id>", "RUNID")
        commands.append(shlex.split(text)[1:])
    return commands


def test_the_readme_shows_every_command():
    shown = {args[0] for args in readme_commands()}
    assert shown == {"tokenize", "train", "quantize", "pack", "eval", "inspect", "submit", "stats", "report"}


@pytest.mark.parametrize("args", readme_commands(), ids=lambda args: " ".join(args)[:60])
def test_a_readme_command_parses_and_its_overrides_apply(args):
    command = typer.main.get_command(app).commands[args[0]]
    context = command.make_context(args[0], list(args[1:]))  # raises on an unknown flag or a bad value
    overrides = context.params.get("overrides") or []
    if overrides:
        apply_overrides(CONFIGS[args[0]](), overrides)  # raises on an unknown key or an out-of-range value
    if context.params.get("preset"):
        get_preset(context.params["preset"])
    if context.params.get("scheme"):
        get_scheme(context.params["scheme"])
