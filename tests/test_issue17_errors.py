"""Issue 17, items 15 to 18: inputs that used to end in a traceback, settings accepted silently, and
messages that said the wrong thing. Each is one line now (or a note), checked here."""

import json
import shutil
from pathlib import Path

import pytest

from stages.artifact.container import read_container, write_container
from stages.config import apply_overrides
from stages.contract.stage_dir import StageDir
from stages.data.corpus import load_corpus
from stages.data.split import make_split
from stages.errors import GolfError
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt.config import LoRAConfig, TTTConfig
from stages.pack.stage import run_pack
from stages.pack.config import PackConfig
from stages.quantize import target
from stages.quantize.config import QuantizeConfig
from stages.quantize.stage import run_quantize
from stages.ranges import ConfigError
from stages.tokenize.spm import train_tokenizer
from stages.train import stage as train_stage
from stages.train.stage import run_train

from .conftest import golf, rewrite_manifest, tiny_run_config


def one_error_line(result) -> str:
    """The single error line of a failed CLI run (no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


# ---- 15. tracebacks that are one line now ----

def test_eval_window_longer_than_the_val_split_is_one_line(pack_dir, tmp_path):
    line = one_error_line(golf("eval", pack_dir, "--out", tmp_path / "eval", "--seq-len", "70000"))
    assert "seq_len 70,000 (from --seq-len) is longer than the val split" in line
    assert not (tmp_path / "eval").exists()


def test_train_window_longer_than_the_val_split_is_refused_before_training(data_dir, tmp_path):
    config = apply_overrides(tiny_run_config(), ["train.seq_len=70000", "train.batch_tokens=70000", "train.val_tokens=0"])
    with pytest.raises(GolfError, match=r"seq_len 70,000 \(from train\.seq_len\) is longer than the val split"):
        run_train(config, data_dir, tmp_path / "train")


def test_artifact_with_a_huge_train_seq_len_is_one_line(pack_dir, data_dir, tmp_path):
    header, sections = read_container((pack_dir / "model.golf").read_bytes())
    entries = header.pop("sections")
    header["train_seq_len"] = 10**11
    forged = tmp_path / "huge.golf"
    forged.write_bytes(write_container(header, [(e["name"], e["codec"], sections[e["name"]]) for e in entries]))
    with pytest.raises(GolfError, match=r"seq_len 100,000,000,000 \(from the artifact's train_seq_len\) is longer"):
        run_eval(EvalConfig(), forged, data_dir, tmp_path / "eval")


@pytest.mark.parametrize("make", ["folder", "broken link"])
def test_text_folder_entry_named_txt_that_is_not_a_file_is_one_line(make, tmp_path):
    (tmp_path / "a.txt").write_text("some words")
    if make == "folder":
        (tmp_path / "x.txt").mkdir()
    else:
        (tmp_path / "x.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(GolfError, match=r"x\.txt: not a file \(a folder or a broken link\)"):
        load_corpus("text", str(tmp_path))


MANIFEST_EDITS = {
    "outputs": (lambda m: m.update(outputs=["model.golf"]), "outputs must be an object, got a list"),
    "metrics": (lambda m: m.update(metrics=[1, 2]), "metrics must be an object, got a list"),
    "ledger": (lambda m: m.update(ledger="abc"), "ledger must be an object, got a string"),
    "output path": (lambda m: m["outputs"]["artifact"].update(path=5),
                    "outputs.artifact.path must be a string, got a number"),
}


@pytest.mark.parametrize("edit, message", MANIFEST_EDITS.values(), ids=MANIFEST_EDITS.keys())
def test_manifest_field_of_the_wrong_type_is_one_line(edit, message, pack_dir, tmp_path):
    folder = tmp_path / "pack"
    shutil.copytree(pack_dir, folder)
    rewrite_manifest(folder, edit)
    with pytest.raises(GolfError, match=f"malformed manifest \\({message}\\)"):
        StageDir(folder, "pack")


def test_inspect_and_eval_of_a_manifest_with_a_wrong_type_are_one_line(pack_dir, tmp_path):
    folder = tmp_path / "pack"
    shutil.copytree(pack_dir, folder)
    rewrite_manifest(folder, MANIFEST_EDITS["outputs"][0])
    for args in (("inspect", folder), ("eval", folder, "--out", tmp_path / "eval")):
        assert "outputs must be an object, got a list" in one_error_line(golf(*args))


def test_empty_lora_targets_are_refused_for_the_adapter_modes():
    with pytest.raises(ConfigError, match=r"^ttt\.lora\.targets: needs at least one of q, k, v"):
        apply_overrides(EvalConfig(), ["ttt.mode=lora", "ttt.lora.targets="])
    with pytest.raises(ConfigError, match="^lora.targets: needs at least one"):
        TTTConfig(mode="phased", lora=LoRAConfig(targets=()))
    assert TTTConfig(mode="none", lora=LoRAConfig(targets=())).lora.targets == ()  # unused there


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(data_dir, tmp_path):
    config = apply_overrides(tiny_run_config(), ["model.model_dim=1000000000"])
    with pytest.raises(GolfError, match=r"^training a model of .*model\.model_dim=1000000000.* needs at least "
                                        r"[0-9,.]+ GiB, more than the [0-9,.]+ GiB available on cpu$"):
        run_train(config, data_dir, tmp_path / "train")
    assert not (tmp_path / "train").exists()


def test_a_failed_allocation_in_training_is_one_line(data_dir, tmp_path, monkeypatch):
    """Past the estimate (here switched off), the allocation itself fails: 2**51 bytes is beyond any
    address space, so it fails at once on every machine."""
    monkeypatch.setattr(train_stage, "check_fits", lambda *args: None)
    config = apply_overrides(tiny_run_config(), [f"model.vocab_size={2**49}"])
    with pytest.raises(GolfError, match=rf"^out of memory with a model of model\.vocab_size={2**49}, .*make it smaller$"):
        run_train(config, data_dir, tmp_path / "train")


def test_a_lora_rank_that_cannot_be_allocated_is_one_line(pack_dir, tmp_path):
    config = apply_overrides(EvalConfig(), ["ttt.mode=lora", "ttt.lora.rank=1000000000000", "ttt.lora.batch_docs=2"])
    with pytest.raises(GolfError, match=r"^out of memory with ttt\.lora\.rank=1000000000000, ttt\.lora\.batch_docs=2"):
        run_eval(config, pack_dir, None, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


# ---- 16. settings that were accepted silently ----

def test_an_empty_max_seconds_through_the_cli_keeps_the_cap(data_dir, tmp_path):
    line = one_error_line(golf("train", "--data", data_dir, "--out", tmp_path / "train", "--set", "train.max_seconds="))
    assert "train.max_seconds: empty value; write train.max_seconds=none to unset it" in line


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    """A one-step checkpoint of a run that started from the pr1413-cpu preset's name (tiny shapes)."""
    out = tmp_path_factory.mktemp("preset_resume") / "train"
    config = apply_overrides(tiny_run_config(), ["train.max_steps=1", "train.checkpoint_every=1"])
    manifest = run_train(config, data_dir, out, preset="pr1413-cpu")
    return out.parent / manifest.metrics["checkpoints"] / "step_000001"


def test_resume_with_another_preset_is_refused(checkpoint, data_dir, tmp_path):
    line = one_error_line(golf("train", "--resume", checkpoint, "--preset", "top-cpu", "--data", data_dir,
                               "--out", tmp_path / "resumed"))
    assert "--preset top-cpu disagrees with the checkpoint's preset (pr1413-cpu)" in line
    assert not (tmp_path / "resumed").exists()


def test_resume_records_the_checkpoint_preset_so_quantize_takes_its_scheme(checkpoint, data_dir, tmp_path):
    result = golf("train", "--resume", checkpoint, "--data", data_dir, "--out", tmp_path / "resumed",
                  "--set", "train.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["config"]["preset"] == "pr1413-cpu"


def test_a_vocab_size_that_disagrees_with_the_tokenizer_is_refused(data_dir, tmp_path):
    line = one_error_line(golf("tokenize", "--tokenizer", data_dir / "tokenizer.model", "--vocab-size", "1000",
                               "--max-docs", "20", "--out", tmp_path / "tok"))
    assert "--vocab-size 1000 disagrees with --tokenizer" in line and "(vocab 512)" in line
    assert not (tmp_path / "tok").exists()


def test_quantize_says_when_nothing_was_quantized(train_dir, tmp_path):
    from stages.progress import Reporter

    reporter = Reporter()
    run_quantize(QuantizeConfig(method="rtn", eval_tokens=256), train_dir, tmp_path / "q", reporter=reporter)
    assert "warning:nothing_quantized" in reporter.text()  # the tiny model's matrices are all under the threshold
    assert "keep_float_max_numel=65536" in reporter.text()


# ---- 17. messages ----

def test_target_bytes_out_of_reach_names_the_target_asked_for(monkeypatch):
    # Codes that cannot shrink below 250,000 bytes and 80,000 bytes the predictor does not see.
    monkeypatch.setattr(target, "predicted_rtn_bytes", lambda state, config, scale: 250_000 + 100_000 / scale)
    config = QuantizeConfig(target_bytes=300_000)
    with pytest.raises(GolfError, match=r"^--target-bytes 300,000 is out of reach: even with clip widths x5\.0 the "
                                        r"weights' codes take 270,000 bytes and the rest of the artifact"):
        target.fit_to_target({}, config, lambda scale: scale, lambda result: round(250_000 + 100_000 / result) + 80_000)


def test_a_one_document_corpus_says_why_it_cannot_be_split():
    with pytest.raises(GolfError, match=r"^the corpus has 1 document\(s\): val and train need one each at least"):
        make_split(1)


def test_empty_files_and_empty_train_text_are_refused_before_sentencepiece(tmp_path):
    (tmp_path / "a.txt").write_text("words")
    (tmp_path / "b.txt").write_bytes(b"")
    with pytest.raises(GolfError, match=r"b\.txt: empty \(a document needs text"):
        load_corpus("text", str(tmp_path))
    with pytest.raises(GolfError, match="^no text to train the tokenizer on: every train document is empty$"):
        train_tokenizer(["", "  "], 260, "exact")


# ---- 18. eval takes the lineage's preset ----

@pytest.fixture(scope="module")
def phased_lineage(data_dir, tmp_path_factory) -> Path:
    """A pack folder whose train stage ran under the pr1790-cpu preset's name (tiny shapes)."""
    root = tmp_path_factory.mktemp("lineage")
    run_train(apply_overrides(tiny_run_config(), ["train.max_steps=1"]), data_dir, root / "train", preset="pr1790-cpu")
    run_quantize(QuantizeConfig(method="rtn", eval_tokens=256), root / "train", root / "quantize")
    run_pack(PackConfig(), root / "quantize", root / "pack")
    return root / "pack"


def test_eval_takes_the_lineage_preset_eval_settings_and_says_so(phased_lineage, tmp_path):
    printed = golf("eval", phased_lineage, "--print-config")
    assert printed.returncode == 0, printed.stderr
    assert "preset: pr1790-cpu" in printed.stdout and "ttt.mode: phased" in printed.stdout
    assert "seq_len: 256" in printed.stdout
    # The line says where the settings came from (the run then stops on its window, longer than this val split).
    result = golf("eval", phased_lineage, "--out", tmp_path / "eval", "--seq-len", "70000")
    assert "eval_from:preset=pr1790-cpu (train lineage)" in result.stdout
    # Explicit settings still win.
    explicit = golf("eval", phased_lineage, "--print-config", "--ttt", "none", "--preset", "tiny")
    assert "preset: tiny" in explicit.stdout and "ttt.mode: none" in explicit.stdout


def test_eval_without_a_preset_in_the_lineage_uses_the_defaults(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--out", tmp_path / "eval", "--seq-len", "70000")
    assert "eval_from:defaults (no preset in the train lineage)" in result.stdout
