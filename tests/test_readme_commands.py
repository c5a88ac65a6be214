"""Every command the README shows: each parses (its flags, their values, its --set keys), and each
runs as written after `./run_all.sh` unless its comment says what more it needs.

The commands are the lines of the README's indented code blocks (and of fenced ``bash``/``sh``
blocks). Each is classified by its trailing comment:

- a ``golf`` command whose comment says ``needs ...`` (data, a GPU, minutes of CPU, another
  command first) is only parsed by the real CLI's parser (click, under typer), and its ``--set``
  overrides are applied to the config the command resolves;
- any other ``golf`` command must run verbatim after ``run_all.sh``. In CI every one is checked
  against the folders ``run_all.sh`` makes (read from the script itself): each path it reads
  exists there, and the folder it writes does not (else it would stop at "already exists");
  the small ones (pack, inspect, eval on plain windows, printing a config) also run, verbatim, through the
  real CLI in a copy of a tiny pipeline's ``artifacts/news/``. ``GOLF_README_RUN=all`` runs every
  one of them that way (minutes: quantize and the TTT evals);
- a command that is not ``golf`` (a script) must say what it needs, and the script must exist.

A command that fits none of these fails the test naming it: a later README example must be
runnable on run_all's folders or say what it needs.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from golf_cli.app import app
from stages.config import apply_overrides
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.pack.config import PackConfig
from stages.quantize.config import DEFAULT_SCHEME, get_scheme
from stages.tokenize.config import TokenizeConfig
from stages.train.presets import get_preset


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_ALL = ROOT / "run_all.sh"
# The config each command's --set overrides apply to.
CONFIGS = {
    "tokenize": TokenizeConfig,
    "train": lambda: get_preset("tiny").config,
    "quantize": lambda: get_scheme(DEFAULT_SCHEME),
    "pack": PackConfig,
    "eval": EvalConfig,
}
FENCED_SHELL = ("bash", "sh", "shell", "console")
NEEDS = re.compile(r"\bneeds\b")


@dataclass(frozen=True)
class Command:
    """One README command line: its words, its comment, and where it is."""

    line: int
    text: str
    comment: str

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def is_golf(self) -> bool:
        return self.words[0] == "golf"

    @property
    def needs(self) -> bool:
        """The comment says what more the command needs: it is only parsed."""
        return bool(NEEDS.search(self.comment))

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_commands() -> list[Command]:
    """The command lines of the README's indented blocks and fenced shell blocks; a line with
    ' -> ' is a diagram of the stages, not a command."""
    commands, fence, previous_blank = [], None, True
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip() or "text"
            continue
        indented = fence is None and line.startswith("    ") and line.strip()
        shell = fence in FENCED_SHELL and line.strip() and not line.lstrip().startswith("#")
        if (indented and (previous_blank or commands and commands[-1].line == number - 1)) or shell:
            if " -> " not in line:
                text, _, comment = line.strip().partition(" # ")
                commands.append(Command(number, text.strip(), comment.strip()))
        previous_blank = not line.strip()
    return commands


COMMANDS = readme_commands()
GOLF = [command for command in COMMANDS if command.is_golf]
RUNNABLE = [command for command in GOLF if not command.needs]


def test_the_readme_shows_every_command():
    assert {command.words[1] for command in GOLF} == {"tokenize", "train", "quantize", "pack", "eval", "inspect",
                                                      "submit", "stats", "report"}
    assert RUNNABLE and len(RUNNABLE) < len(GOLF)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.text[:60])
def test_every_readme_command_is_golf_or_says_what_it_needs(command):
    if command.is_golf:
        return
    assert command.needs, (f"{command}: not a golf command and its comment does not say what it needs "
                           "(write '# ... needs ...', or make it a golf command)")
    script = ROOT / command.words[0]
    assert script.is_file(), f"{command}: {command.words[0]} does not exist"


@pytest.mark.parametrize("command", GOLF, ids=lambda command: command.text[5:65])
def test_a_readme_command_parses_and_its_overrides_apply(command):
    name, params = parse(command.words[1:])  # raises on an unknown flag or a bad value
    if params.get("overrides"):
        apply_overrides(CONFIGS[name](), params["overrides"])  # raises on an unknown key or an out-of-range value
    if params.get("preset"):
        get_preset(params["preset"])
    if params.get("scheme"):
        get_scheme(params["scheme"])


# Options naming a path the command reads, and flags after which it reads and writes no stage folder.
INPUTS = ("artifact", "data", "train", "quantized", "check", "resume", "path", "input")
NO_OUTPUT = ("print_config", "list_presets", "print_memory", "check")
STAGES = ("tokenize", "train", "quantize", "pack", "eval")


def parse(words: list[str]) -> tuple[str, dict]:
    """(command, its parameters) as golf's CLI parses ``golf WORDS``."""
    context = typer.main.get_command(app).commands[words[0]].make_context(words[0], list(words[1:]))
    return words[0], context.params


def output_folder(command: str, params: dict) -> Path | None:
    """The stage folder a command writes (None: it writes none)."""
    if command not in STAGES or any(params.get(flag) for flag in NO_OUTPUT):
        return None
    return Path(params.get("out") or Path("artifacts") / (params.get("run") or "default") / command)


def run_all_folders_made() -> set[Path]:
    """The stage folders run_all.sh writes (RUN=news), from its own golf lines."""
    made = set()
    for line in RUN_ALL.read_text().splitlines():
        if line.startswith("golf "):
            words = shlex.split(line.replace('"$RUN"', "news").replace("$RUN", "news"))
            folder = output_folder(*parse(words[1:]))
            if folder is not None:
                made.add(folder)
    return made


MADE = run_all_folders_made()
SMALL = [command for command in RUNNABLE
         if command.words[1] in ("pack", "inspect") or any(flag in command.text for flag in ("--print-config",
                                                                                             "--list-presets"))
         or (command.words[1] == "eval"
             and not any(flag in command.text for flag in ("--ttt", "--preset", "--nproc", "--stride")))]


def test_run_all_makes_what_the_readme_says():
    assert {folder.name for folder in MADE} == {*STAGES, "eval-sliding64"}
    assert all(folder.parent == Path("artifacts/news") for folder in MADE)


@pytest.mark.parametrize("command", RUNNABLE, ids=lambda command: command.text[5:65])
def test_a_readme_command_reads_what_run_all_made_and_writes_a_new_folder(command):
    name, params = parse(command.words[1:])
    for option in INPUTS:
        value = params.get(option)
        if value is not None:
            path = Path(value)
            assert any(path == folder or folder in path.parents for folder in MADE), \
                f"{command}\nreads {path}, which ./run_all.sh does not make: use its folders, or say what it needs"
    folder = output_folder(name, params)
    assert folder is None or folder not in MADE or params.get("force"), \
        f"{command}\nwrites {folder}, which ./run_all.sh made: it would stop at 'already exists' (give --out)"


@pytest.fixture(scope="module")
def run_all_copy(tmp_path_factory, data_dir, train_dir, quant_dir, pack_dir) -> Path:
    """A folder whose artifacts/news/ holds what ./run_all.sh makes, from the tiny pipeline the
    other tests share (tokenize, train, quantize, pack) and the two evals run_all.sh adds."""
    root = tmp_path_factory.mktemp("after_run_all")
    news = root / "artifacts" / "news"
    for folder in (data_dir, train_dir, quant_dir, pack_dir):
        shutil.copytree(folder, news / folder.name)
    run_eval(EvalConfig(), news / "pack", None, news / "eval")
    # At the tiny model's seq_len 64, stride 64 scores the very windows of the plain eval: its copy
    # stands in for run_all's eval-sliding64 (which no small command reads) at no cost.
    shutil.copytree(news / "eval", news / "eval-sliding64")
    return root


def expand(words: list[str], cwd: Path) -> list[str]:
    """The words as a shell passes them: a word with ``*`` becomes the paths it matches (itself if none)."""
    expanded = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=cwd)) if "*" in word else []
        expanded += matches or [word]
    return expanded


def run_verbatim(command: Command, run_all_copy: Path, tmp_path: Path, monkeypatch) -> None:
    here = tmp_path / "repo"
    shutil.copytree(run_all_copy, here)
    monkeypatch.chdir(here)
    result = CliRunner().invoke(app, expand(command.words[1:], here))
    assert result.exit_code == 0, (f"{command}\nfails after run_all.sh (exit {result.exit_code}); make it runnable "
                                   f"or say in its comment what it needs:\n{result.output[-1500:]}")


@pytest.mark.parametrize("command", SMALL, ids=lambda command: command.text[5:65])
def test_a_small_readme_command_runs_verbatim_after_run_all(command, run_all_copy, tmp_path, monkeypatch):
    run_verbatim(command, run_all_copy, tmp_path, monkeypatch)


@pytest.mark.skipif(os.environ.get("GOLF_README_RUN") != "all", reason="minutes of CPU: GOLF_README_RUN=all runs it")
@pytest.mark.parametrize("command", [command for command in RUNNABLE if command not in SMALL],
                         ids=lambda command: command.text[5:65])
def test_every_other_readme_command_runs_verbatim_after_run_all(command, run_all_copy, tmp_path, monkeypatch):
    run_verbatim(command, run_all_copy, tmp_path, monkeypatch)
