import pytest

from stages.contract.audit import audit_lineage
from stages.contract.ledger import TimeLedger, budget_report
from stages.contract.stage_dir import StageDir, StageWriter
from stages.errors import GolfError


def make_stage(path, force=False, content=b"hello"):
    with StageWriter(path, "tokenize", force) as writer:
        writer.path("a.txt").write_bytes(content)
        writer.add_output("a", writer.path("a.txt"))
        writer.ledger.add("work", 1.5, None, "test")
        return writer.commit({"x": 1}, {"tokenizer_sha256": "abc", "vocab_size": 3}, {"m": 2})


def test_commit_writes_manifest_and_hashes(tmp_path):
    manifest = make_stage(tmp_path / "s")
    stage = StageDir(tmp_path / "s", "tokenize")
    assert stage.file("a").read_bytes() == b"hello"
    assert manifest.outputs["a"].bytes == 5
    assert set(manifest.environment) >= {"python", "torch", "git_commit", "code_sha256", "cpu"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_failed_stage_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StageWriter(tmp_path / "s", "train") as writer:
            writer.path("half.bin").write_bytes(b"12")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_without_force(tmp_path):
    make_stage(tmp_path / "s")
    with pytest.raises(GolfError, match="already exists"):
        make_stage(tmp_path / "s")
    make_stage(tmp_path / "s", force=True, content=b"new")
    assert StageDir(tmp_path / "s").file("a").read_bytes() == b"new"


def test_hash_mismatch_is_refused(tmp_path):
    make_stage(tmp_path / "s")
    (tmp_path / "s" / "a.txt").write_bytes(b"HELLO")
    with pytest.raises(GolfError, match="does not match manifest"):
        StageDir(tmp_path / "s").file("a")
    assert audit_lineage(tmp_path / "s")[0].problems


def test_wrong_stage_kind_is_refused(tmp_path):
    make_stage(tmp_path / "s")
    with pytest.raises(GolfError, match="expected 'train'"):
        StageDir(tmp_path / "s", "train")


def test_ledger_budgets():
    ledger = TimeLedger()
    ledger.add("loop", 590.0, "train")
    ledger.add("warmup", 100.0, None)
    calib = TimeLedger()
    calib.add("calibration", 15.0, "train")
    report = budget_report([ledger, calib])
    assert report["train"]["seconds"] == 605.0 and report["train"]["verdict"] == "FAIL"
    assert report["eval"]["verdict"] == "PASS"
    with pytest.raises(ValueError):
        ledger.add("loop", 1.0, "eval")
