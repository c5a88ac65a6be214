"""A new user's first hour: the README's commands as typed, output that survives a pipe, help
that reads right, a shell left as it was, and no scoring done twice."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import golf_cli.common as common
from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.scoring.val_data import load_val
from stages.scoring.validate import scoring_setup, validate
from stages.model.checkpoint import load_model_weights, load_tensors
from stages.model.gpt import GPT
from stages.progress import Reporter
from stages.quantize.config import QuantizeConfig
from stages.quantize.pre_quant import Windows, scoring_windows, train_score
from stages.quantize.stage import run_quantize
from stages.train.presets import PRESETS, get_preset, with_tokenizer_vocab
from stages.train.stage import run_train

from .conftest import SMALL_VOCAB, TINY_OVERRIDES, golf, sets, tiny_run_config

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("tokenize", "train", "quantize", "pack", "eval", "inspect", "submit", "stats", "report")
# The tiny overrides without the vocab, so the tokenizer's applies; one step is enough here.
TINY_ANY_VOCAB = [item for item in TINY_OVERRIDES if not item.startswith("model.vocab_size=")] + ["train.max_steps=1"]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def piped_golf(*args: str, columns: str | None) -> subprocess.CompletedProcess:
    """The CLI with stdout and stderr piped, as `golf ... | less` runs it, with or without $COLUMNS."""
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "golf_cli", *args], capture_output=True, text=True, env=env)


# ---- 1. the README's multi-process command ----

def test_readme_nproc_command_with_run_name_trains_on_two_ranks(data_dir, tmp_path):
    # --run is an ambiguous prefix of torchrun's --run-path: golf's arguments must not reach its parser.
    result = golf("train", "--nproc", "2", "--run", "two", "--data", data_dir, "--preset", "tiny",
                  *sets([*TINY_OVERRIDES, "train.max_steps=2"]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest(tmp_path / "artifacts" / "two" / "train")["metrics"]["world_size"] == 2


def test_nproc_checks_its_arguments_before_launching(data_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    result = golf("train", "--nproc", "2", "--data", data_dir, "--out", tmp_path / "taken", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists" in lines[0], result.stderr


def test_arguments_after_a_separator_still_parse():
    # Some Python versions hand torchrun's '--' on to the script: golf must read past it.
    result = piped_golf("--", "train", "--list-presets", columns=None)
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout


# ---- 2. the vocab follows the tokenizer ----

def test_train_takes_the_vocab_from_the_tokenizer(data_dir, tmp_path):
    assert get_preset("tiny").config.model.vocab_size != SMALL_VOCAB
    result = golf("train", "--data", data_dir, "--out", tmp_path / "train", "--preset", "tiny",
                  *sets(TINY_ANY_VOCAB), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"vocab_size:{SMALL_VOCAB} vocab_from:tokenizer" in result.stdout
    assert manifest(tmp_path / "train")["lineage"]["model_config"]["vocab_size"] == SMALL_VOCAB


def test_a_tokenizer_larger_than_the_preset_sets_the_vocab():
    tiny = get_preset("tiny").config
    assert with_tokenizer_vocab(tiny, 8192, explicit=False).model.vocab_size == 8192
    bigger = apply_overrides(tiny, ["model.vocab_size=9000"])
    assert with_tokenizer_vocab(bigger, 8192, explicit=True).model.vocab_size == 9000
    with pytest.raises(GolfError, match="set model.vocab_size=8192"):
        with_tokenizer_vocab(tiny, 8192, explicit=True)


def test_an_explicit_vocab_below_the_tokenizer_is_one_line_saying_what_to_set(data_dir, tmp_path):
    result = golf("train", "--data", data_dir, "--out", tmp_path / "train", *sets(TINY_ANY_VOCAB),
                  "--set", "model.vocab_size=256", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"set model.vocab_size={SMALL_VOCAB}" in lines[0], result.stderr
    assert not (tmp_path / "train").exists()


def test_resume_keeps_the_checkpoint_vocab(data_dir, tmp_path):
    config = apply_overrides(tiny_run_config(), ["model.vocab_size=640", "train.max_steps=1", "train.checkpoint_every=1"])
    first = run_train(config, data_dir, tmp_path / "first")
    checkpoint = tmp_path / first.metrics["checkpoints"] / "step_000001"
    result = golf("train", "--resume", checkpoint, "--data", data_dir, "--out", tmp_path / "resumed",
                  "--set", "train.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest(tmp_path / "resumed")["lineage"]["model_config"]["vocab_size"] == 640


# ---- 3. quantize scores pre-quant once ----

def test_quantize_reuses_train_score_on_the_same_windows(train_dir, data_dir, tmp_path):
    train = StageDir(train_dir, "train")
    val_tokens = train.manifest.config["train"]["val_tokens"]
    quant = run_quantize(QuantizeConfig(method="rtn", eval_tokens=val_tokens), train_dir, tmp_path / "q")
    record = quant.metrics["pre_quant"]
    assert record["source"] == "train" and "evaluate_pre_quant" not in quant.ledger
    assert quant.metrics["pre_quant_val_bpb"] == pytest.approx(train.manifest.metrics["val_bpb"], rel=1e-12)
    # The reused numbers are what scoring these weights on these windows gives.
    model = load_model_weights(GPT(tiny_run_config().model), load_tensors(train.file("weights")), "weights")
    setup = scoring_setup(record["seq_len"], record["seq_len"], 8, "cpu")
    measured = validate(model, load_val(StageDir(data_dir, "tokenize"), SMALL_VOCAB), setup, max_tokens=val_tokens)
    assert (record["tokens"], quant.metrics["eval"]["bytes_scored"]) == (measured.tokens, measured.bytes)
    assert quant.metrics["pre_quant_val_bpb"] == pytest.approx(measured.bpb, rel=1e-6)


def test_quantize_measures_when_the_windows_differ(train_dir, tmp_path):
    half = StageDir(train_dir, "train").manifest.config["train"]["val_tokens"] // 2
    quant = run_quantize(QuantizeConfig(method="rtn", eval_tokens=half), train_dir, tmp_path / "q")
    record = quant.metrics["pre_quant"]
    assert record["source"] == "measured" and "evaluate_pre_quant" in quant.ledger
    assert record["tokens"] == quant.metrics["eval"]["tokens_scored"] == half
    assert f"this scores {half} in windows" in record["why"]


def test_train_score_applies_only_to_the_same_windows_data_and_precision(train_dir, data_dir):
    train, data = StageDir(train_dir, "train"), StageDir(data_dir, "tokenize")
    val = load_val(data, SMALL_VOCAB)
    model = tiny_run_config().model
    tcfg = train.manifest.config["train"]
    same = scoring_windows(val, tcfg["seq_len"], tcfg["seq_len"], tcfg["val_tokens"])
    assert train_score(train, data, val, same, model, "cpu")[0] is not None
    shorter = scoring_windows(val, tcfg["seq_len"], tcfg["seq_len"], tcfg["val_tokens"] // 2)
    assert train_score(train, data, val, shorter, model, "cpu")[0] is None
    assert train_score(train, data, val, Windows(32, 32, same.targets), model, "cpu")[0] is None
    assert "precision" in train_score(train, data, val, same, model, "cuda")[1]
    other_data = SimpleNamespace(manifest_sha256="0" * 64)  # any tokenize folder but the one train read
    assert "another tokenize folder" in train_score(train, other_data, val, same, model, "cpu")[1]


# ---- 4. output that survives a pipe, help that reads right ----

@pytest.mark.parametrize("columns", [None, "80"])
def test_list_presets_prints_every_preset_whole_to_stdout(columns):
    result = piped_golf("train", "--list-presets", columns=columns)
    assert result.returncode == 0, result.stderr
    for preset in PRESETS.values():
        assert preset.source in result.stdout, preset.name
    assert result.stderr == ""


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_bool_type_beside_flags(command):
    result = golf(*filter(None, [command]), "--help")
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout and "<bool>" not in result.stdout


def test_reporter_writes_to_the_current_stdout():
    reporter = Reporter()
    with redirect_stdout(io.StringIO()) as swapped:
        reporter.log(step=1)
    assert swapped.getvalue() == "step:1\n"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def live_bar_log(monkeypatch, stdout) -> str:
    """Log one line while a bar is live on a terminal stderr; return what that terminal shows."""
    terminal = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=terminal, force_terminal=True, width=100))
    monkeypatch.setattr(sys, "stdout", stdout)
    reporter = common.RichReporter()
    with reporter.progress("train", 3) as advance:
        reporter.log(step=1, train_loss=2.5)
        advance(1)
    return terminal.getvalue()


def test_log_lines_print_above_a_live_bar_on_a_terminal(monkeypatch):
    stdout = FakeTerminal()
    shown = live_bar_log(monkeypatch, stdout)
    # The line went through the bar's console, which prints it above the bar, not after it.
    assert "step:1 train_loss:2.50000000" in shown and stdout.getvalue() == ""


def test_log_lines_stay_on_a_piped_stdout_while_a_bar_is_live(monkeypatch):
    stdout = io.StringIO()
    shown = live_bar_log(monkeypatch, stdout)
    assert stdout.getvalue() == "step:1 train_loss:2.50000000\n" and "step:1" not in shown


def test_piped_progress_prints_a_plain_line_every_ten_seconds(monkeypatch):
    """A piped run used to print nothing between its log lines (the stride-64 eval: 20 minutes on a
    loaded machine). Now a long loop prints a progress line every ~10 s of a (here fake) clock,
    even with a terminal stderr, and keeps it out of the stage's saved log."""
    stdout = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=io.StringIO(), force_terminal=True, width=100))
    monkeypatch.setattr(sys, "stdout", stdout)
    reporter = common.RichReporter()
    ticks = iter(range(0, 1000, 4))  # 4 s per read
    reporter.clock = lambda: float(next(ticks))
    with reporter.progress("score", 7) as advance:
        for _ in range(7):
            advance(1)
    assert stdout.getvalue().splitlines() == ["progress:score done:3 of:7 seconds:12",
                                              "progress:score done:6 of:7 seconds:24"]
    assert reporter.lines == []


def test_piped_tables_are_not_cut_at_80_columns(monkeypatch, capsys):
    from rich.table import Table

    table = Table("name", "text")
    long_text = "word " * 60
    table.add_row("row", long_text.strip())
    monkeypatch.setenv("COLUMNS", "80")
    common.print_table(table)
    assert long_text.strip() in capsys.readouterr().out


# ---- 4. sourcing setup_env.sh leaves the shell as it was ----

def source_setup_env(tmp_path: Path, python_body: str) -> subprocess.CompletedProcess:
    """Source the real script in a folder whose .venv is a stub (no pip runs), then print the options."""
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(f"#!/bin/sh\n{python_body}\n")
    python.chmod(0o755)
    (venv_bin / "activate").write_text("GOLF_STUB_ACTIVATED=1\n")
    script = (f"source {REPO / 'scripts' / 'setup_env.sh'}\n"
              "echo status:$?\n"
              "echo activated:${GOLF_STUB_ACTIVATED:-0}\n"
              "set -o | grep -E '^(errexit|nounset|pipefail)'\n")
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)


def options_off(stdout: str) -> bool:
    options = [line.split() for line in stdout.splitlines() if line.startswith(("errexit", "nounset", "pipefail"))]
    return len(options) == 3 and all(state == "off" for _, state in options)


def test_sourcing_setup_env_leaves_the_shell_options_alone(tmp_path):
    result = source_setup_env(tmp_path, "exit 0")
    assert "status:0" in result.stdout and "activated:1" in result.stdout, result.stdout + result.stderr
    assert options_off(result.stdout), result.stdout


def test_a_failed_setup_returns_an_error_without_closing_the_shell(tmp_path):
    result = source_setup_env(tmp_path, 'case "$1" in -c) exit 1;; esac; exit 0')
    assert "status:1" in result.stdout and "activated:0" in result.stdout, result.stdout + result.stderr
    assert "error: environment setup failed" in result.stderr
    assert options_off(result.stdout), result.stdout
