"""Bad input through the real CLI: one error line naming the problem, a non-zero exit, no
traceback, nothing written. And the rule that keeps it so: every numeric config field declares
the range it accepts, and every config checks it."""

import dataclasses
import shutil
import typing
from dataclasses import dataclass

import numpy as np
import pytest
import typer

from golf_cli.common import handle_errors
from stages.contract.hashing import sha256_file
from stages.config import apply_overrides
from stages.data.shards import HEADER_BYTES
from stages.errors import GolfError
from stages.evaluate.config import EvalConfig
from stages.pack.config import PackConfig
from stages.quantize.config import QuantizeConfig
from stages.ranges import ConfigError, declared_range
from stages.tokenize.config import TokenizeConfig
from stages.train.config import RunConfig

from .conftest import SMALL_VOCAB, TINY_OVERRIDES, golf, rewrite_manifest, sets

# The configs the commands build; the configs nested in them are found by walking their fields.
COMMAND_CONFIGS = [RunConfig, TokenizeConfig, QuantizeConfig, PackConfig, EvalConfig]
INPUT_FLAGS = {"train": "--data", "quantize": "--train", "pack": "--quantized"}


@dataclass(frozen=True)
class BadInput:
    command: str
    """The golf command."""
    args: tuple
    """Its arguments besides the input and output folders."""
    message: str
    """What the one error line must say."""
    upstream: str | None = None
    """The fixture giving a valid folder for the command to read. None: a folder that does not exist,
    for settings refused before any input is opened (the message shows which check fired); this
    keeps the file from training and quantizing models of its own."""


def train_with(message: str, *overrides: str, flags: tuple = (), upstream: str = "data_dir") -> BadInput:
    """`golf train` of the tiny test model with extra overrides and flags."""
    return BadInput("train", (*sets(TINY_OVERRIDES), *sets(list(overrides)), *flags), message, upstream)


BAD_INPUTS = {
    "model_dim=0": train_with("model.model_dim: must be >= 1, got 0", "model.model_dim=0"),
    "num_heads=0": train_with("model.num_heads: must be >= 1, got 0", "model.num_heads=0"),
    "mlp_mult=-1": train_with("model.mlp_mult: must be > 0, got -1.0", "model.mlp_mult=-1"),
    "log_every=0": train_with("train.log_every: must be >= 1, got 0", "train.log_every=0"),
    "ema_decay=2": train_with("train.ema_decay: must be in [0, 1), got 2.0", "train.ema_decay=2"),
    "checkpoint_every=-1": train_with("train.checkpoint_every: must be >= 0, got -1", "train.checkpoint_every=-1"),
    "matrix_lr=-1": train_with("train.matrix_lr: must be >= 0, got -1.0", "train.matrix_lr=-1"),
    "val_tokens=-5": train_with("train.val_tokens: must be >= 0, got -5", "train.val_tokens=-5"),
    "max_seconds=0": train_with("train.max_seconds: must be > 0, got 0.0", flags=("--max-seconds", "0")),
    "token id >= vocab": train_with(f"fineweb_train_000000.bin: token id {SMALL_VOCAB} is outside the model's vocab",
                                    upstream="data_with_foreign_token"),
    "tokenize max_docs=-3": BadInput("tokenize", ("--max-docs", "-3"), "max_docs: must be >= 1, got -3"),
    "quantize eval_tokens=-5": BadInput("quantize", ("--set", "eval_tokens=-5"), "eval_tokens: must be >= 0, got -5"),
    "pack limit=-5": BadInput("pack", ("--limit", "-5"), "limit: must be >= 1, got -5"),
    "eval eval_tokens=-5": BadInput("eval", ("--set", "eval_tokens=-5"), "eval_tokens: must be >= 0, got -5"),
    # The window length comes from the artifact here, so these rules fire once it is read.
    "eval eval_tokens under a window": BadInput("eval", ("--set", "eval_tokens=10"),
                                                "eval_tokens: must be 0 (all) or at least seq_len 64, got 10", "pack_dir"),
    "eval stride over the window": BadInput("eval", ("--stride", "100"), "stride: must be at most seq_len 64, got 100",
                                            "pack_dir"),
    "quantize eval_tokens under a window": BadInput("quantize", ("--set", "eval_tokens=10"),
                                                    "eval_tokens: must be 0 (all) or at least eval_seq_len 64, got 10",
                                                    "train_dir"),
}


@pytest.fixture(scope="module")
def data_with_foreign_token(data_dir, tmp_path_factory):
    """The tokenize folder with one train token equal to the model's vocab size, hashes updated."""
    folder = tmp_path_factory.mktemp("foreign") / "tokenize"
    shutil.copytree(data_dir, folder)
    shard = folder / "fineweb_train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES + 20 : HEADER_BYTES + 22] = np.uint16(SMALL_VOCAB).tobytes()
    shard.write_bytes(bytes(data))
    rewrite_manifest(folder, lambda m: m["outputs"]["fineweb_train_000000"].update(sha256=sha256_file(shard)))
    return folder


def input_args(command: str, folder) -> list:
    """How a command is pointed at the folder it reads (tokenize reads the embedded corpus)."""
    if command == "tokenize":
        return []
    if command == "eval":
        return [folder]  # a positional argument
    return [INPUT_FLAGS[command], folder]


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_and_writes_nothing(case, request, tmp_path):
    out = tmp_path / "out"
    upstream = request.getfixturevalue(case.upstream) if case.upstream else tmp_path / "no-input"
    result = golf(case.command, *input_args(case.command, upstream), "--out", out, *case.args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert not any(tmp_path.iterdir()), "an output (or a temporary folder) was left behind"


# ---- every field declares its range ----

def config_classes() -> list[type]:
    """The command configs and every config nested in them."""
    found, todo = [], list(COMMAND_CONFIGS)
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo += [hint for hint in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(hint)]
    return found


def needs_range(hint) -> bool:
    """Numbers (optional, or in a tuple) need a declared range; strings, choices, switches and groups do not."""
    if hint is bool or hint is str or dataclasses.is_dataclass(hint) or typing.get_origin(hint) is typing.Literal:
        return False
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return any(needs_range(a) for a in args) if args else hint in (int, float)


CONFIG_FIELDS = [(cls, f) for cls in config_classes() for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, field", CONFIG_FIELDS, ids=[f"{c.__name__}.{f.name}" for c, f in CONFIG_FIELDS])
def test_every_numeric_field_declares_a_range(cls, field):
    hint = typing.get_type_hints(cls)[field.name]
    assert needs_range(hint) == (declared_range(field) is not None), \
        f"{cls.__name__}.{field.name}: numeric fields declare a range with ranged(), others do not"


def outside(rule) -> float:
    """A value just outside a range (never its 'off' value)."""
    if rule.ge is not None:
        value = rule.ge - 1
    elif rule.gt is not None:
        value = rule.gt
    else:
        value = (rule.le if rule.le is not None else rule.lt) + 1
    return value - 1 if value == rule.off else value


RANGED = [(cls, f) for cls, f in CONFIG_FIELDS if declared_range(f) is not None]


@pytest.mark.parametrize("cls, field", RANGED, ids=[f"{c.__name__}.{f.name}" for c, f in RANGED])
def test_every_config_refuses_a_value_outside_a_declared_range(cls, field):
    bad = outside(declared_range(field))
    value = (bad,) if typing.get_origin(typing.get_type_hints(cls)[field.name]) is tuple else bad
    with pytest.raises(ConfigError, match=f"^{field.name}: "):
        cls(**{field.name: value})


@pytest.mark.parametrize("override", ["ttt.chunk_sgd.lr=inf", "ttt.lora.lr=-inf"])
def test_infinity_is_refused_where_it_would_score_nan(override):
    """inf passes every lower bound: ttt.chunk_sgd.lr=inf (or train.matrix_lr=inf) used to give val_bpb nan
    with status ok, and mlp.clip_sigmas=inf a traceback."""
    with pytest.raises(ConfigError, match="must be a finite number"):
        apply_overrides(EvalConfig(), [override])


@pytest.mark.parametrize("override", ["train.matrix_lr=inf", "model.qk_gain_init=inf"])
def test_infinity_is_refused_in_training(override):
    with pytest.raises(ConfigError, match="must be a finite number"):
        apply_overrides(RunConfig(), [override])


def test_infinity_is_refused_in_quantize():
    with pytest.raises(ConfigError, match="^mlp.clip_sigmas: must be a finite number"):
        apply_overrides(QuantizeConfig(), ["mlp.clip_sigmas=inf"])


def test_the_cli_prints_an_error_as_one_plain_line(capsys):
    @handle_errors
    def command():
        raise GolfError("data/[red]run[/red]: bad\n   shard")

    with pytest.raises(typer.Exit) as exit_info:
        command()
    assert exit_info.value.exit_code == 1
    assert capsys.readouterr().err == "error: data/[red]run[/red]: bad shard\n"


@pytest.mark.parametrize("args, message", [
    (("pack", "--limit", "abc"), "Invalid value for '--limit'"),
    (("pack", "--nope"), "No such option: --nope"),
    (("frobnicate",), "No such command 'frobnicate'"),
])
def test_a_command_line_the_parser_refuses_is_one_line(args, message):
    result = golf(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr and "╭" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
