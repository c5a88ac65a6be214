"""All five commands through the real CLI on a slice of the news corpus, and every bad input."""

import json
import shutil

import numpy as np
import pytest

from stages.contract.hashing import sha256_file
from stages.data.shards import encode_shard

from .conftest import SMALL_DOCS, SMALL_VOCAB, TINY_OVERRIDES, golf, rewrite_manifest, sets


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """tokenize -> train -> quantize -> pack -> eval through `python -m golf_cli`, in a temp cwd."""
    cwd = tmp_path_factory.mktemp("cli")
    steps = [
        ["tokenize", "--run", "t", "--max-docs", SMALL_DOCS, "--vocab-size", SMALL_VOCAB],
        ["train", "--run", "t", "--preset", "tiny", *sets(TINY_OVERRIDES)],
        ["quantize", "--run", "t"],
        ["pack", "--run", "t"],
        ["eval", "--run", "t"],
    ]
    for args in steps:
        result = golf(*args, cwd=cwd)
        assert result.returncode == 0, f"golf {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return cwd


def assert_one_line_error(result, *patterns):
    """A non-zero exit with exactly one stderr line, holding every pattern, and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


def test_pipeline_prints_bpb_and_matches_in_memory(run_dir):
    root = run_dir / "artifacts" / "t"
    for stage in ("tokenize", "train", "quantize", "pack", "eval"):
        assert (root / stage / "manifest.json").is_file()
    eval_metrics = json.loads((root / "eval" / "manifest.json").read_text())["metrics"]
    assert eval_metrics["matches_in_memory"] is True
    assert abs(eval_metrics["artifact_minus_in_memory_bpb"]) <= 1e-6
    pack = json.loads((root / "pack" / "manifest.json").read_text())["metrics"]
    assert pack["bytes_total"] == (root / "pack" / "model.golf").stat().st_size
    result = golf("inspect", root / "eval", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    assert "verified:True" in result.stdout and "budget:train" in result.stdout


def test_eval_prints_eight_decimals_and_sliding_runs(run_dir):
    result = golf("eval", "--run", "t", "--stride", "16", "--out", "artifacts/t/eval16", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("stage:eval"))
    bpb = line.split("val_bpb:")[1].split()[0]
    assert len(bpb.split(".")[1]) == 8 and "mode:sliding" in line


def test_pack_check_gate(run_dir):
    artifact = run_dir / "artifacts" / "t" / "pack" / "model.golf"
    size = artifact.stat().st_size
    assert golf("pack", "--check", artifact, "--limit", size).returncode == 0
    over = golf("pack", "--check", artifact, "--limit", size - 1)
    assert over.returncode == 3 and "verdict:FAIL" in over.stdout


def test_artifact_over_the_limit_writes_nothing(run_dir):
    result = golf("pack", "--run", "t", "--out", "artifacts/t/pack-small", "--limit", "1000", cwd=run_dir)
    assert_one_line_error(result, "over the 1,000-byte limit")
    assert result.returncode == 3
    assert not (run_dir / "artifacts" / "t" / "pack-small").exists()


def test_existing_output_needs_force(run_dir):
    result = golf("pack", "--run", "t", cwd=run_dir)
    assert_one_line_error(result, "already exists")


def make_export(folder, val_data: bytes):
    folder.mkdir()
    (folder / "fineweb_train_000000.bin").write_bytes(encode_shard(np.array([1, 5, 6, 7], dtype=np.uint16)))
    (folder / "fineweb_val_000000.bin").write_bytes(val_data)
    return folder


def test_truncated_shard(run_dir, tmp_path):
    good = encode_shard(np.array([1, 5, 6, 7, 8], dtype=np.uint16))
    export = make_export(tmp_path / "export", good[:-1])
    tokenizer = run_dir / "artifacts" / "t" / "tokenize" / "tokenizer.model"
    result = golf("tokenize", "--import", export, "--tokenizer", tokenizer, "--out", tmp_path / "out")
    assert_one_line_error(result, "truncated or corrupt")
    assert not (tmp_path / "out").exists()


def test_wrong_magic(run_dir, tmp_path):
    bad = bytearray(encode_shard(np.array([1, 5, 6], dtype=np.uint16)))
    bad[0] ^= 0xFF
    export = make_export(tmp_path / "export", bytes(bad))
    tokenizer = run_dir / "artifacts" / "t" / "tokenize" / "tokenizer.model"
    result = golf("tokenize", "--import", export, "--tokenizer", tokenizer, "--out", tmp_path / "out")
    assert_one_line_error(result, "wrong magic number")
    assert not (tmp_path / "out").exists()


def copy_train(run_dir, tmp_path):
    """A copy of the run's train folder with the tokenize folder beside it (inputs are relative paths)."""
    copy = tmp_path / "train"
    shutil.copytree(run_dir / "artifacts" / "t" / "train", copy)
    shutil.copytree(run_dir / "artifacts" / "t" / "tokenize", tmp_path / "tokenize")
    return copy


def test_manifest_hash_mismatch(run_dir, tmp_path):
    train = copy_train(run_dir, tmp_path)
    weights = train / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    result = golf("quantize", "--train", train, "--out", tmp_path / "q")
    assert_one_line_error(result, "does not match manifest")
    assert not (tmp_path / "q").exists()


def test_corrupt_safetensors(run_dir, tmp_path):
    train = copy_train(run_dir, tmp_path)
    weights = train / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)
    # The manifest is updated so that only the parser can object.
    rewrite_manifest(train, lambda m: m["outputs"]["weights"].update(sha256=sha256_file(weights), bytes=64))
    result = golf("quantize", "--train", train, "--out", tmp_path / "q")
    assert_one_line_error(result, "not a readable safetensors file")
    assert not (tmp_path / "q").exists()


def test_quantize_against_another_tokenizers_data(run_dir, tmp_path):
    other = tmp_path / "other"
    made = golf("tokenize", "--max-docs", 120, "--vocab-size", 400, "--out", other)
    assert made.returncode == 0, made.stderr
    result = golf("quantize", "--train", run_dir / "artifacts" / "t" / "train", "--data", other, "--out", tmp_path / "q")
    assert_one_line_error(result, "cannot be combined")
    assert not (tmp_path / "q").exists()


def test_unknown_override_key(run_dir):
    result = golf("train", "--run", "t", "--set", "train.warmup_stepz=3", "--out", "artifacts/t/x", cwd=run_dir)
    assert_one_line_error(result, "unknown config key 'train.warmup_stepz'")


def test_import_adopts_an_export_without_copying(run_dir, tmp_path):
    export = run_dir / "artifacts" / "t" / "tokenize"
    result = golf("tokenize", "--import", export, "--out", tmp_path / "adopted")
    assert result.returncode == 0, result.stderr
    adopted = json.loads((tmp_path / "adopted" / "manifest.json").read_text())
    original = json.loads((export / "manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "adopted").iterdir()) == ["log.txt", "manifest.json"]
    assert adopted["lineage"]["tokenizer_sha256"] == original["lineage"]["tokenizer_sha256"]
    assert adopted["metrics"]["val_tokens"] == original["metrics"]["val_tokens"]
    assert adopted["metrics"]["byte_audit"]["table_bytes"] == original["metrics"]["byte_audit"]["table_bytes"]


def test_requantize_with_new_clip_widths_then_pack_and_eval_without_retraining(run_dir):
    root = run_dir / "artifacts" / "t"
    weights_hash = sha256_file(root / "train" / "model.safetensors")
    train_manifest = (root / "train" / "manifest.json").read_text()
    new_widths = ["keep_float_max_numel=0", "attention.clip_sigmas=8", "mlp.clip_sigmas=8", "calibration.batches=2"]
    steps = [
        ["quantize", "--run", "t", "--out", "artifacts/t/quantize-k8", *sets(new_widths)],
        ["pack", "--quantized", "artifacts/t/quantize-k8", "--out", "artifacts/t/pack-k8"],
        ["eval", "artifacts/t/pack-k8", "--out", "artifacts/t/eval-k8"],
    ]
    for args in steps:
        result = golf(*args, cwd=run_dir)
        assert result.returncode == 0, f"golf {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    quant = json.loads((root / "quantize-k8" / "manifest.json").read_text())["metrics"]
    widths = {row["group"]: row["clip_sigmas"] for row in quant["tensors"] if row["kind"] == "rows"}
    assert widths["attention"] == 8 and widths["mlp"] == 8
    assert all(row["method"] == "gptq" for row in quant["tensors"] if row["kind"] == "rows")
    evaluated = json.loads((root / "eval-k8" / "manifest.json").read_text())["metrics"]
    assert abs(evaluated["val_bpb"] - quant["post_quant_val_bpb"]) <= 1e-6
    assert sha256_file(root / "train" / "model.safetensors") == weights_hash
    assert (root / "train" / "manifest.json").read_text() == train_manifest


def test_target_bytes_lands_under_the_target(run_dir):
    root = run_dir / "artifacts" / "t"
    every_matrix = sets(["keep_float_max_numel=0", "calibration.batches=2"])
    for args in (["quantize", "--run", "t", "--out", "artifacts/t/quantize-ref", *every_matrix],
                 ["pack", "--quantized", "artifacts/t/quantize-ref", "--out", "artifacts/t/pack-ref"]):
        assert golf(*args, cwd=run_dir).returncode == 0
    target = int((root / "pack-ref" / "model.golf").stat().st_size * 0.95)
    result = golf("quantize", "--run", "t", "--out", "artifacts/t/quantize-fit", "--target-bytes", target,
                  *every_matrix, cwd=run_dir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((root / "quantize-fit" / "manifest.json").read_text())["metrics"]
    assert metrics["clip_scale"] > 1.0  # a smaller artifact needs wider clips (a coarser grid)
    packed = golf("pack", "--quantized", "artifacts/t/quantize-fit", "--out", "artifacts/t/pack-fit", "--limit", target,
                  cwd=run_dir)
    assert packed.returncode == 0, packed.stderr
    assert (root / "pack-fit" / "model.golf").stat().st_size <= target
