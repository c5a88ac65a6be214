"""Issue 17, items 8 to 11: no command destroys or changes a file golf did not write there.

Every output path (a stage folder, --token-nll) is refused when it exists and is not golf's own of
the same kind, when it is, holds or lies inside one of the command's inputs, or when it reaches
anything through a symlink; clean-up removes only temporary folders golf marked as its own and
says `cleaned:`. Each test failed on 9424adb: --token-nll wrote into the data folder and through
a linked folder, `tokenize --import DIR --out DIR --force` deleted the export it imported, --force
through a symlink replaced another run's folder, stages wrote their output inside their inputs,
and clean-up deleted a user folder named like a temporary one without a `cleaned:` line.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from stages.config import apply_overrides
from stages.contract.output_path import check_output_path
from stages.contract.stage_dir import StageDir, StageWriter
from stages.contract.temp_folders import MARKER_NAME, remove_leftovers
from stages.errors import GolfError
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.pack.stage import run_pack
from stages.pack.config import PackConfig
from stages.quantize.config import QuantizeConfig
from stages.quantize.stage import run_quantize
from stages.tokenize.adopt import run_import
from stages.train.stage import run_train

from .conftest import golf, tiny_run_config
from .test_cli import assert_one_line_error

PIPELINE = ("tokenize", "train", "quantize", "pack")
QUICK_EVAL = EvalConfig(eval_tokens=2048)


@pytest.fixture
def run(tmp_path, workdir, pack_dir) -> Path:
    """A private copy of the session's tokenize -> pack run under tmp_path/run."""
    root = tmp_path / "run"
    for stage in PIPELINE:
        shutil.copytree(workdir / stage, root / stage)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with its sha256: what must stay as it was."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()}


# Item 8: --token-nll never replaces a file golf did not write, nor writes into an input.

def test_token_nll_never_touches_a_val_shard_a_readme_or_the_data_folder(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("mine")
    shard = sorted((run / "tokenize").glob("fineweb_val_0*.bin"))[0]
    (tmp_path / "linked").symlink_to(run / "tokenize")
    before = snapshot(run)
    cases = [(run / "tokenize" / "new.safetensors", "is inside the data folder", "is inside the data folder"),
             (tmp_path / "linked" / "new.safetensors", "is a symlink", "is a symlink"),
             (shard, "is inside the data folder", "is inside the data folder"),
             (readme, "pass --force", "not an eval's receipts")]
    for path, *messages in cases:
        for force, message in zip((False, True), messages):
            with pytest.raises(GolfError, match=message):
                run_eval(QUICK_EVAL, run / "pack", None, tmp_path / "eval", force=force, token_nll=path)
    assert snapshot(run) == before and readme.read_text() == "mine"
    assert not (tmp_path / "eval").exists()
    result = golf("eval", run / "pack", "--token-nll", shard, "--force", "--out", tmp_path / "eval")
    assert_one_line_error(result, "is inside the data folder")


def test_token_nll_is_never_inside_the_eval_folder_it_replaces(run, tmp_path):
    run_eval(QUICK_EVAL, run / "pack", None, run / "eval", token_nll=run / "nll.safetensors")
    shutil.copy(run / "nll.safetensors", run / "eval" / "nll.safetensors")
    with pytest.raises(GolfError, match="is inside the eval's output folder"):
        run_eval(QUICK_EVAL, run / "pack", None, run / "eval", force=True, token_nll=run / "eval" / "nll.safetensors")
    assert (run / "eval" / "nll.safetensors").is_file()


# Item 9: tokenize --import never deletes what it imports.

def test_tokenize_import_never_replaces_or_writes_into_its_source(run):
    export = run / "tokenize"  # a golf tokenize folder in the challenge layout: --force would replace it
    before = snapshot(export)
    result = golf("tokenize", "--import", export, "--out", export, "--force")
    assert_one_line_error(result, "is --import", "nothing was touched")
    with pytest.raises(GolfError, match="is inside --import"):
        run_import(export, export / "tokenize", force=True)
    with pytest.raises(GolfError, match="holds --import"):
        run_import(export, run, force=True)
    assert snapshot(export) == before and StageDir(export, "tokenize")


# Item 10: an output path through a symlink is refused, --force or not.

@pytest.mark.parametrize("link", ["folder", "run"])
def test_force_through_a_symlink_never_replaces_another_runs_folder(data_dir, tmp_path, link):
    other = tmp_path / "artifacts" / "small3" / "tokenize"
    shutil.copytree(data_dir, other)
    if link == "folder":  # artifacts/linkrun/tokenize -> ../small3/tokenize
        (tmp_path / "artifacts" / "linkrun").mkdir()
        (tmp_path / "artifacts" / "linkrun" / "tokenize").symlink_to(Path("..") / "small3" / "tokenize")
    else:  # artifacts/linkrun -> small3
        (tmp_path / "artifacts" / "linkrun").symlink_to("small3")
    before = snapshot(other)
    result = golf("tokenize", "--run", "linkrun", "--max-docs", 40, "--tokenizer", data_dir / "tokenizer.model",
                  "--force", cwd=tmp_path)
    assert_one_line_error(result, "is a symlink")
    assert snapshot(other) == before
    inspected = golf("inspect", other)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr


def test_the_lock_file_is_never_written_through_a_symlink_or_over_a_user_file(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("years of work")
    (tmp_path / ".train.lock").symlink_to(precious)
    with pytest.raises(GolfError, match="is a symlink"):
        StageWriter(tmp_path / "train", "train")
    (tmp_path / ".eval.lock").write_text("my notes")
    with pytest.raises(GolfError, match="a file golf did not write"):
        StageWriter(tmp_path / "eval", "eval")
    assert precious.read_text() == "years of work" and (tmp_path / ".eval.lock").read_text() == "my notes"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".eval.lock", ".train.lock", "precious.txt"]


def test_a_symlink_is_found_before_and_after_a_dotdot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    for path in ("link/../out", "missing/../link/out", "link", "./link/eval"):
        with pytest.raises(GolfError, match="is a symlink"):
            check_output_path(path, "eval", force=True)
    assert check_output_path("real/../out", "eval", force=False) == tmp_path / "out"


# Output inside (or equal to, or holding) an input, for every stage that reads a stage folder.

def test_no_stage_writes_its_output_in_or_over_its_input(run, tmp_path):
    config = apply_overrides(tiny_run_config(), ["train.max_steps=1"])
    before = snapshot(run)
    attempts = [
        ("is inside the data folder", lambda: run_train(config, run / "tokenize", run / "tokenize" / "train")),
        ("is inside the train folder", lambda: run_quantize(QuantizeConfig(), run / "train", run / "train" / "q")),
        ("is inside the data folder", lambda: run_quantize(QuantizeConfig(), run / "train", run / "tokenize" / "q",
                                                           run / "tokenize")),
        ("is inside the quantize folder", lambda: run_pack(PackConfig(), run / "quantize", run / "quantize" / "p")),
        ("is the quantize folder", lambda: run_pack(PackConfig(), run / "quantize", run / "quantize", force=True)),
        ("is inside its pack folder", lambda: run_eval(QUICK_EVAL, run / "pack", None, run / "pack" / "eval")),
        ("is inside the data folder", lambda: run_eval(QUICK_EVAL, run / "pack", run / "tokenize",
                                                       run / "tokenize" / "eval")),
    ]
    for message, attempt in attempts:
        with pytest.raises(GolfError, match=message):
            attempt()
    assert snapshot(run) == before
    result = golf("train", "--data", run / "tokenize", "--out", run / "tokenize" / "train")
    assert_one_line_error(result, "is inside the data folder")


def test_eval_never_replaces_the_folder_holding_its_artifact(run):
    with StageWriter(run / "old-eval", "eval") as writer:  # an earlier eval folder ...
        writer.commit({}, {}, {})
    artifact = run / "old-eval" / "mine" / "model.golf"  # ... a bare artifact kept in it
    artifact.parent.mkdir()
    shutil.copy(run / "pack" / "model.golf", artifact)
    with pytest.raises(GolfError, match="holds the artifact"):
        run_eval(QUICK_EVAL, artifact, run / "tokenize", run / "old-eval", force=True)
    assert artifact.is_file()


# Item 11: clean-up removes only golf's own marked temporary folders, and says so.

def killed_writer(out_dir: Path, stage: str) -> Path:
    """The temporary folder a writer killed by SIGKILL leaves (the kernel drops its lock)."""
    writer = StageWriter(out_dir, stage)
    (writer.tmp_dir / "half.bin").write_bytes(b"12")
    writer.lock.release()
    return writer.tmp_dir


def test_clean_up_keeps_a_user_folder_named_like_a_temporary_one_and_says_cleaned(run, tmp_path):
    notes = run / ".eval-y.tmp-my-notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    leftover = killed_writer(run / "eval-y", "eval")
    result = golf("eval", run / "pack", "--out", run / "eval-y", "--set", "eval_tokens=2048")
    assert result.returncode == 0, result.stderr
    assert f"cleaned:{leftover} reason:left by a killed run of this stage" in result.stdout.splitlines()
    assert not leftover.exists() and (notes / "notes.txt").read_text() == "mine"
    assert not (run / "eval-y" / MARKER_NAME).exists()  # the finished folder carries no marker


def test_clean_up_never_takes_a_link_or_another_folders_temporary(run, tmp_path):
    out = run / "eval-z"
    forged = run / ".eval-z.tmp-forged"  # named for eval-z, marked for another folder
    shutil.copytree(killed_writer(run / "eval-zz", "eval"), forged)
    mine = killed_writer(out, "eval")
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(mine / MARKER_NAME, user / MARKER_NAME)  # a marker, reached only through a link
    (run / ".eval-z.tmp-link").symlink_to(user)
    assert remove_leftovers(out, "train") == []  # marked for another stage
    assert remove_leftovers(out, "eval") == [mine]
    assert forged.is_dir() and (user / MARKER_NAME).is_file() and (run / ".eval-z.tmp-link").is_symlink()
