import pytest

from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.model.checkpoint import load_tensors


def test_quantize_manifest_has_pre_and_post_quant_bpb(quant_dir):
    metrics = StageDir(quant_dir).manifest.metrics
    assert metrics["pre_quant_val_bpb"] > 0 and metrics["post_quant_val_bpb"] > 0
    assert metrics["quant_gap_bpb"] == pytest.approx(metrics["post_quant_val_bpb"] - metrics["pre_quant_val_bpb"])


def test_checkpoint_is_untouched_by_quantize(train_dir, quant_dir):
    train = StageDir(train_dir)
    train.file("weights")  # still matches the hash recorded at training time


def test_corrupt_safetensors_is_a_one_line_error(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(GolfError, match="not a readable safetensors file"):
        load_tensors(path)
