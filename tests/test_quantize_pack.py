import json

import pytest
import torch

from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.model.checkpoint import load_tensors, load_tensors_and_metadata
from stages.pack.bundle import collect_sources, load_bundle
from stages.pack.codecs import compress, decompress
from stages.pack.container import ContainerError, read_container
from stages.pack.stage import CODE_ROOT, PackConfig, build_artifact, check_artifact, shipped_sources


def test_quantize_manifest_has_pre_and_post_quant_bpb(quant_dir):
    metrics = StageDir(quant_dir).manifest.metrics
    assert metrics["pre_quant_val_bpb"] > 0 and metrics["post_quant_val_bpb"] > 0
    assert metrics["quant_gap_bpb"] == pytest.approx(metrics["post_quant_val_bpb"] - metrics["pre_quant_val_bpb"])


def test_checkpoint_is_untouched_by_quantize(train_dir, quant_dir):
    train = StageDir(train_dir)
    train.file("weights")  # still matches the hash recorded at training time


@pytest.mark.parametrize("codec", ["brotli", "lzma", "zlib"])
def test_codecs_round_trip(codec):
    data = bytes(range(256)) * 50
    assert decompress(compress(data, codec), codec) == data


def test_bundle_holds_exactly_the_runtime_closure():
    files = shipped_sources()
    assert "stages/runtime.py" in files and "stages/model/gpt.py" in files
    assert "stages/train/stage.py" not in files and "stages/contract/stage_dir.py" not in files
    for rel, source in files.items():
        assert source == (CODE_ROOT / rel).read_text()


def test_absolute_stages_import_is_refused(tmp_path):
    pkg = tmp_path / "stages"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime.py").write_text("from stages.model import gpt\n")
    with pytest.raises(ValueError, match="absolute import"):
        collect_sources(tmp_path, ["stages/runtime.py"])


def test_artifact_round_trip_is_bit_exact(quant_dir, pack_dir):
    tensors, metadata = load_tensors_and_metadata(StageDir(quant_dir).file("quantized"))
    data = StageDir(pack_dir).file("artifact").read_bytes()
    header, sections = read_container(data)
    runtime = load_bundle(json.loads(decompress(sections["code"], header["code"]["codec"])), header["code"]["entry"])
    assert runtime.__name__.startswith("golf_artifact_")
    decoded = runtime.decode_tensors(header, sections["weights"])
    assert set(decoded) == set(tensors)
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name], tensor)
    model = runtime.build_model(header, sections["weights"])
    assert type(model).__module__.startswith("golf_artifact_")  # the shipped code, not the installed one


def test_container_detects_corruption(pack_dir):
    data = bytearray(StageDir(pack_dir).file("artifact").read_bytes())
    data[-10] ^= 0xFF
    with pytest.raises(ContainerError, match="sha256"):
        read_container(bytes(data))
    with pytest.raises(ContainerError, match="magic"):
        read_container(b"NOTGOLF" + bytes(data))


def test_size_gate_is_exact(quant_dir, tmp_path):
    tensors, metadata = load_tensors_and_metadata(StageDir(quant_dir).file("quantized"))
    data, breakdown = build_artifact(tensors, metadata, PackConfig())
    path = tmp_path / "a.golf"
    path.write_bytes(data)
    assert breakdown["bytes_total"] == len(data) == path.stat().st_size
    assert check_artifact(path, limit=len(data))["verdict"] == "PASS"
    assert check_artifact(path, limit=len(data))["margin"] == 0
    assert check_artifact(path, limit=len(data) - 1)["verdict"] == "FAIL"
    with pytest.raises(GolfError, match="bad magic"):
        bad = tmp_path / "bad.golf"
        bad.write_bytes(b"x" * 100)
        check_artifact(bad)


def test_corrupt_safetensors_is_a_one_line_error(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(GolfError, match="not a readable safetensors file"):
        load_tensors(path)
