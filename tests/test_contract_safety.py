"""Issue 10, items 2-5 and 11: --force, the manifest chain, resume, one writer per folder, moved runs, leftovers.

Each test would fail on the code before these fixes: --force deleted any folder, an edited
metric verified, a mismatching eval passed, a resume counted only its own seconds and took any
data, checkpoints of two runs shared a folder, manifests held absolute paths and killed runs left
temporary folders behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import os
from pathlib import Path

import pytest

from stages.config import apply_overrides
from stages.contract.audit import audit_lineage
from stages.contract.lock import FolderLock
from stages.contract.stage_dir import StageDir, StageWriter
from stages.errors import GolfError
from stages.evaluate import stage as eval_stage
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
from stages.train.stage import run_train

from .conftest import TINY_OVERRIDES, golf, rewrite_manifest, sets, tiny_run_config
from .test_cli import assert_one_line_error

PIPELINE = ("tokenize", "train", "quantize", "pack")


@pytest.fixture
def run_copy(tmp_path, workdir, pack_dir):
    """A private copy of the session's tokenize -> pack run, with an eval of it, under tmp_path/run."""
    root = tmp_path / "run"
    for stage in PIPELINE:
        shutil.copytree(workdir / stage, root / stage)
    run_eval(EvalConfig(eval_tokens=2048), root / "pack", None, root / "eval")
    return root


def problems(path) -> list[str]:
    return [problem for check in audit_lineage(path) for problem in check.problems]


# Item 2: --force replaces only a golf folder of the same stage.

def test_force_never_deletes_a_folder_golf_did_not_write(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    result = golf("tokenize", "--max-docs", 40, "--vocab-size", 300, "--out", precious, "--force")
    assert_one_line_error(result, "has no golf manifest")
    assert (precious / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temp folder or lock left


def test_force_never_replaces_another_stages_folder(run_copy):
    with pytest.raises(GolfError, match="is a golf 'tokenize' folder"):
        StageWriter(run_copy / "tokenize", "eval", force=True)
    assert StageDir(run_copy / "tokenize", "tokenize")  # untouched and still valid


def test_force_replaces_a_folder_of_the_same_stage(run_copy):
    before = StageDir(run_copy / "eval").manifest.run_id
    manifest = run_eval(EvalConfig(eval_tokens=1024), run_copy / "pack", None, run_copy / "eval", force=True)
    assert manifest.run_id != before and StageDir(run_copy / "eval").manifest.run_id == manifest.run_id


def read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write in: chmod 555, or a /proc folder when running as root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if not os.access(folder, os.W_OK) else Path("/proc/self").resolve()  # no symlink on the way


def test_a_read_only_output_folder_is_a_one_line_error(tmp_path):
    folder = read_only_folder(tmp_path)
    result = golf("tokenize", "--max-docs", 40, "--vocab-size", 300, "--out", folder / "tokenize")
    assert_one_line_error(result, "cannot write in the folder it goes in")


def test_an_output_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = golf("tokenize", "--max-docs", 40, "--vocab-size", 300, "--out", tmp_path / "a-file" / "tokenize")
    assert_one_line_error(result, "cannot create the folder")


# Item 3: failed evals, hand-edited manifests, the chain back to tokenize.

def test_an_edited_metric_is_detected_and_the_stage_named(run_copy):
    assert problems(run_copy / "eval") == []
    rewrite_manifest(run_copy / "quantize", lambda m: m["metrics"].update(post_quant_val_bpb=0.5), rehash=False)
    found = problems(run_copy / "eval")
    assert any(p.startswith("quantize: manifest.json was edited") for p in found), found
    assert any(p.startswith("link pack -> quantized (quantize)") for p in found), found
    with pytest.raises(GolfError, match="was edited after the stage wrote it"):
        StageDir(run_copy / "quantize")  # and no later stage will read it
    result = golf("inspect", run_copy / "eval")
    assert result.returncode == 1 and "problem:quantize: manifest.json was edited" in result.stdout


def test_inspect_names_the_link_that_broke(run_copy):
    # Repack with --force: a valid pack folder, but not the one the eval read.
    assert golf("pack", "--quantized", run_copy / "quantize", "--out", run_copy / "pack", "--force").returncode == 0
    found = problems(run_copy / "eval")
    assert len(found) == 1 and found[0].startswith("link eval -> artifact (pack)"), found
    assert "is not the manifest this stage read" in found[0]


def test_the_chain_must_reach_tokenize(run_copy):
    shutil.rmtree(run_copy / "tokenize")
    found = problems(run_copy / "pack")
    assert any("link train -> data (tokenize)" in p for p in found), found
    assert any("does not reach a tokenize folder" in p for p in found), found


def test_an_eval_that_differs_from_in_memory_fails_the_stage(run_copy, monkeypatch):
    # The artifact's score equals the in-memory one here; a negative tolerance makes any score a
    # mismatch, which is what a packing or dequantization bug would produce.
    monkeypatch.setattr(eval_stage, "IN_MEMORY_TOLERANCE", -1.0)
    config = EvalConfig()
    with pytest.raises(GolfError, match="in memory"):
        run_eval(config, run_copy / "pack", None, run_copy / "eval-bad")
    manifest = StageDir(run_copy / "eval-bad", strict=False).manifest
    assert manifest.status == "failed" and manifest.metrics["matches_in_memory"] is False
    with pytest.raises(GolfError, match="the eval stage failed"):
        StageDir(run_copy / "eval-bad")
    assert any("the eval stage failed" in p for p in problems(run_copy / "eval-bad"))


# Item 11: relative paths, leftovers of killed runs.

def test_a_moved_run_folder_still_verifies(run_copy, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(str(run_copy), moved)
    assert problems(moved / "eval") == []
    for stage in (*PIPELINE, "eval"):
        text = (moved / stage / "manifest.json").read_text()
        assert '"/' not in text, f"{stage} manifest holds an absolute path"


def test_leftovers_of_a_killed_run_are_removed_at_the_next_start(run_copy):
    killed = StageWriter(run_copy / "eval2", "eval")  # SIGKILL: the kernel drops the lock, the folder stays
    killed.lock.release()
    stale_tmp = killed.tmp_dir
    (stale_tmp / "half.bin").write_bytes(b"12")
    lines = []

    class Collect:
        def log(self, **fields):
            lines.append(fields)

    with StageWriter(run_copy / "eval2", "eval", reporter=Collect()):
        pass
    assert not stale_tmp.exists()
    assert lines == [{"cleaned": stale_tmp, "reason": "left by a killed run of this stage"}]


def test_a_failed_stage_removes_the_run_folder_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with StageWriter(tmp_path / "artifacts" / "newrun" / "train", "train"):
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_leaves_no_temporary_or_empty_run_folder(data_dir, tmp_path):
    args = ["train", "--run", "sig", "--data", data_dir, *sets(TINY_OVERRIDES), "--set", "train.max_steps=100000",
            "--set", "train.log_every=1"]
    process = subprocess.Popen([sys.executable, "-m", "golf_cli", *map(str, args)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until it trains
        if line.startswith("step:2 "):
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert not (tmp_path / "artifacts").exists(), list((tmp_path / "artifacts").rglob("*"))


# Item 5: one writer per folder; checkpoints belong to their run.

def test_a_second_writer_is_refused_at_start(data_dir, tmp_path):
    out = tmp_path / "artifacts" / "shared" / "train"
    out.parent.mkdir(parents=True)
    lock = FolderLock(out.resolve(), "someone-else")
    try:
        start = time.perf_counter()
        result = golf("train", "--run", "shared", "--data", data_dir, *sets(TINY_OVERRIDES), cwd=tmp_path)
        assert_one_line_error(result, "another golf process (pid")
        assert time.perf_counter() - start < 60  # refused at start, not after training
        assert not out.exists()
    finally:
        lock.release()


def test_checkpoints_of_a_forced_rerun_never_mix_with_the_old_runs(data_dir, tmp_path):
    config = apply_overrides(tiny_run_config(), ["train.max_steps=2", "train.checkpoint_every=1", "train.val_tokens=1024"])
    first = run_train(config, data_dir, tmp_path / "train")
    second = run_train(config, data_dir, tmp_path / "train", force=True)
    assert first.metrics["checkpoints"] != second.metrics["checkpoints"]
    for manifest in (first, second):
        folder = tmp_path / manifest.metrics["checkpoints"]
        assert sorted(p.name for p in folder.iterdir()) == ["step_000001", "step_000002"]
        state = json.loads((folder / "step_000002" / "state.json").read_text())
        assert state["run_id"] == manifest.run_id


# Item 4: resume checks its inputs; bad checkpoints are one-line errors.

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("ckpt")
    config = apply_overrides(tiny_run_config(), ["train.max_steps=2", "train.checkpoint_every=2", "train.val_tokens=1024"])
    manifest = run_train(config, data_dir, root / "train")
    return root / manifest.metrics["checkpoints"] / "step_000002"


def resume(checkpoint, data, out, *extra):
    return golf("train", "--resume", checkpoint, "--data", data, "--out", out, "--set", "train.max_steps=3", *extra)


def test_resume_refuses_other_data(checkpoint, tmp_path):
    other = tmp_path / "other-data"
    run_tokenize(TokenizeConfig(max_docs=120, vocab_size=400), other)
    result = resume(checkpoint, other, tmp_path / "out", "--set", "model.vocab_size=512")
    assert_one_line_error(result, "was trained with tokenizer")
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_corrupt_state_file(checkpoint, data_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "state.json").write_text('{"step": 3, "elapsed"')
    assert_one_line_error(resume(broken, data_dir, tmp_path / "out"), "corrupt checkpoint state")


def test_resume_refuses_changed_tensors(checkpoint, data_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    data = bytearray((changed / "tensors.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "tensors.safetensors").write_bytes(bytes(data))
    assert_one_line_error(resume(changed, data_dir, tmp_path / "out"), "changed since the checkpoint was written")


def test_resume_with_another_model_shape_is_a_one_line_error(checkpoint, data_dir, tmp_path):
    result = resume(checkpoint, data_dir, tmp_path / "out", "--set", "model.model_dim=96", "--set", "model.num_heads=2")
    assert_one_line_error(result, "has shape")
    assert not (tmp_path / "out").exists()
