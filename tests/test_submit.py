"""`golf submit`: three seeds of the tiny recipe -> a records folder whose train_gpt.py repeats a seed.

The runs share one tokenize folder (as seeds of one recipe do) and are built once for the module,
through the library. Refusals are checked on copies, so the shared runs stay intact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.pack.stage import run_pack
from stages.pack.config import PackConfig
from stages.quantize.config import QuantizeConfig
from stages.quantize.stage import run_quantize
from stages.results.stats import Baseline, seed_stats
from stages.submit.reproduce import check_data
from stages.submit.runs import data_identity
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig
from stages.train.stage import run_train

from .conftest import SMALL_VOCAB, golf, rewrite_manifest, tiny_run_config
from .test_cli import assert_one_line_error

SEEDS = (1, 2, 3)
DOCS = 80  # 8 val documents: the full val score stays quick
# Pre/post-quant diagnostics on a prefix and a short calibration keep quantize quick; eval scores all of val.
QUANTIZE = ["eval_tokens=1024", "calibration.batches=2"]
SUBMISSION_FIELDS = ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total",
                     "bytes_code", "seeds", "seed_results", "hardware", "pytorch_version", "compliance")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/tokenize and runs/seed<N>/{train,quantize,pack,eval} for each seed."""
    root = tmp_path_factory.mktemp("submit") / "runs"
    run_tokenize(TokenizeConfig(max_docs=DOCS, vocab_size=SMALL_VOCAB), root / "tokenize")
    for seed in SEEDS:
        run = root / f"seed{seed}"
        config = apply_overrides(tiny_run_config(), ["train.max_steps=3", f"train.seed={seed}"])
        run_train(config, root / "tokenize", run / "train", preset="tiny")
        run_quantize(apply_overrides(QuantizeConfig(), QUANTIZE), run / "train", run / "quantize")
        run_pack(PackConfig(), run / "quantize", run / "pack")
        run_eval(EvalConfig(), run / "pack", None, run / "eval")
    return root


@pytest.fixture(scope="module")
def submission(runs) -> Path:
    out = runs.parent / "submission"
    result = golf("submit", *(runs / f"seed{seed}" for seed in SEEDS), "--out", out, "--author", "Ada",
                  "--github-id", "ada", "--blurb", "tiny recipe, three seeds")
    assert result.returncode == 0, result.stderr
    return out


def _eval_metrics(runs: Path, seed: int) -> dict:
    return StageDir(runs / f"seed{seed}" / "eval", "eval").manifest.metrics


def test_submit_writes_every_file_from_the_manifests(runs, submission):
    names = {"README.md", "submission.json", "requirements.txt", "train_gpt.py",
             *(f"{kind}_seed{seed}.log" for kind in ("train", "eval") for seed in SEEDS)}
    assert names <= {path.name for path in submission.iterdir()}
    fields = json.loads((submission / "submission.json").read_text())
    assert set(SUBMISSION_FIELDS) <= set(fields)
    assert fields["seeds"] == list(SEEDS)
    assert fields["bytes_code"] == (submission / "train_gpt.py").stat().st_size
    for seed in SEEDS:
        result, metrics = fields["seed_results"][str(seed)], _eval_metrics(runs, seed)
        assert result["val_bpb"] == metrics["val_bpb"]
        artifact = (runs / f"seed{seed}" / "pack" / "model.golf").stat().st_size
        assert result["artifact_bytes"] == artifact and result["bytes_total"] == artifact + fields["bytes_code"]
        assert (submission / f"train_seed{seed}.log").read_bytes() == (runs / f"seed{seed}/train/log.txt").read_bytes()
    assert fields["val_bpb"] == pytest.approx(sum(_eval_metrics(runs, s)["val_bpb"] for s in SEEDS) / len(SEEDS))
    assert fields["compliance"]["size"]["verdict"] == "PASS"
    assert fields["compliance"]["train_val"]["disjoint"] is True
    assert fields["compliance"]["significance"]["computed"] is False
    readme = (submission / "README.md").read_text()
    for seed in SEEDS:
        assert f"**{_eval_metrics(runs, seed)['val_bpb']:.8f}**" in readme
    assert "Size: PASS" in readme and "Train/val disjoint: PASS" in readme and "not computed: no baseline given" in readme
    assert "torch==" in (submission / "requirements.txt").read_text()
    assert golf("inspect", submission).returncode == 0  # the folder and every seed's lineage verify


def test_a_baseline_fills_the_significance_block_with_golf_stats_test(runs, tmp_path):
    """--baseline-nats: the block is golf stats' record test of the same evals, verdict in the README."""
    out = tmp_path / "with_baseline"
    worse = max(_eval_metrics(runs, seed)["val_loss"] for seed in SEEDS) + 0.5
    result = golf("submit", *(runs / f"seed{seed}" for seed in SEEDS), "--out", out, "--baseline-nats", worse)
    assert result.returncode == 0, result.stderr
    block = json.loads((out / "submission.json").read_text())["compliance"]["significance"]
    expected = seed_stats([runs / f"seed{seed}" / "eval" for seed in SEEDS], Baseline("nats", values=(worse,)))
    assert block["computed"] is True and block["test"]["p_value"] == pytest.approx(expected.test.p_value)
    assert block["note"] == expected.verdict()
    assert expected.verdict() in (out / "README.md").read_text()


def test_train_gpt_reproduces_a_seed_in_a_fresh_folder(runs, submission, tmp_path):
    """Only the submission folder and the tokenize folder it names are copied; the score is equal exactly."""
    fresh = tmp_path / "fresh"
    shutil.copytree(submission, fresh)
    shutil.copytree(runs / "tokenize", fresh / "data" / "tokenize")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    result = subprocess.run([sys.executable, "train_gpt.py"], cwd=fresh, env={**env, "SEED": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    last = dict(item.split(":", 1) for item in result.stdout.strip().splitlines()[-1].split())
    repeated = StageDir(fresh / "golf_run_seed2" / "eval", "eval").manifest.metrics
    original = _eval_metrics(runs, 2)
    assert repeated["val_bpb"] == original["val_bpb"]
    assert float(last["difference"]) == 0.0
    assert repeated["code_sha256"] == original["code_sha256"]  # the artifact ships the same code bundle
    assert repeated["artifact_bytes"] == original["artifact_bytes"]


def test_train_gpt_runs_under_torchrun(runs, submission, tmp_path):
    """Two gloo ranks in one launch: train, then quantize and pack on rank 0 while rank 1 waits, then
    eval in a second process group (a group created again must not hang on the first one's keys)."""
    fresh = tmp_path / "fresh"
    shutil.copytree(submission, fresh)
    shutil.copytree(runs / "tokenize", fresh / "data" / "tokenize")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train_gpt.py"], cwd=fresh, env={**env, "SEED": "3"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("seed:3 val_loss:")
    assert StageDir(fresh / "golf_run_seed3" / "train", "train").manifest.metrics["world_size"] == 2


def test_size_check_counts_the_real_code_bytes(runs, submission, tmp_path):
    fields = json.loads((submission / "submission.json").read_text())
    total = fields["bytes_total"]
    passed = golf("pack", "--check", submission, "--limit", total)
    assert passed.returncode == 0, passed.stderr
    assert f"bytes_code:{fields['bytes_code']}" in passed.stdout
    assert_one_line_error(golf("pack", "--check", submission, "--limit", total - 1), "code + artifact", "over")
    assert golf("pack", "--check", submission, "--limit", total - 1).returncode == 3
    # Beside one artifact: its bytes plus the code file's, which are read from disk as they are now.
    longer = tmp_path / "train_gpt.py"
    longer.write_bytes((submission / "train_gpt.py").read_bytes() + b"\n")
    artifact = runs / "seed1" / "pack" / "model.golf"
    counted = golf("pack", "--check", artifact, "--code", longer)
    assert f"bytes_total:{artifact.stat().st_size + fields['bytes_code'] + 1}" in counted.stdout
    assert golf("pack", "--check", artifact, "--code", longer, "--limit", artifact.stat().st_size).returncode == 3


def _copy(runs: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    return copy


def _submit(copy: Path, *extra) -> subprocess.CompletedProcess:
    return golf("submit", *(copy / f"seed{seed}" for seed in SEEDS), "--out", copy.parent / "out", *extra)


def test_refuses_runs_that_disagree_on_recipe(runs, tmp_path):
    copy = _copy(runs, tmp_path)
    rewrite_manifest(copy / "seed3" / "eval", lambda m: m["config"].update(stride=32))
    assert_one_line_error(_submit(copy), "disagree on recipe", "eval.stride")
    assert not (tmp_path / "out").exists()


def test_refuses_runs_that_disagree_on_code(runs, tmp_path):
    copy = _copy(runs, tmp_path)
    rewrite_manifest(copy / "seed2" / "eval", lambda m: m["environment"].update(code_sha256="0" * 64))
    assert_one_line_error(_submit(copy), "disagree on code")


def test_refuses_a_tampered_manifest(runs, tmp_path):
    copy = _copy(runs, tmp_path)
    rewrite_manifest(copy / "seed2" / "train", lambda m: m["metrics"].update(steps=999), rehash=False)
    assert_one_line_error(_submit(copy), "do not verify", "edited")
    assert not (tmp_path / "out").exists()


def test_refuses_a_submission_over_the_limit(runs, tmp_path):
    result = golf("submit", runs / "seed1", "--out", tmp_path / "out", "--limit", 1000)
    assert_one_line_error(result, "over the 1,000-byte limit", "nothing written")
    assert result.returncode == 3
    assert not (tmp_path / "out").exists()


def test_refuses_a_repeated_seed(runs, tmp_path):
    assert_one_line_error(golf("submit", runs / "seed1", runs / "seed1", "--out", tmp_path / "out"), "repeat a seed")


def test_never_replaces_a_folder_golf_did_not_write(runs, submission, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for extra in ([], ["--force"]):
        assert_one_line_error(golf("submit", runs / "seed1", "--out", foreign, *extra), str(foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert_one_line_error(golf("submit", runs / "seed1", "--out", runs / "seed1" / "train", "--force"), "'train'")
    own = tmp_path / "own"
    shutil.copytree(submission, own)
    replaced = golf("submit", runs / "seed1", "--out", own, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((own / "submission.json").read_text())["seeds"] == [1]


def test_reproduction_refuses_other_val_data(runs):
    data = StageDir(runs / "tokenize", "tokenize")
    expected = data_identity(data)
    check_data(data, expected)
    name = next(iter(expected["val_sha256"]))
    with pytest.raises(GolfError, match="val shards"):
        check_data(data, {**expected, "val_sha256": {**expected["val_sha256"], name: "0" * 64}})
    with pytest.raises(GolfError, match="tokenizer"):
        check_data(data, {**expected, "tokenizer_sha256": "0" * 64})
