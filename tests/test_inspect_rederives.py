"""Issue 17, items 1-5, 7 and 18 (inspect side): `golf inspect` vouches only for what it re-derives.

Each test reproduces one attack of the issue on a private copy of the tiny pipeline and shows that
inspect no longer prints verified:True for it (on the code before, each of these verified, or
--rescore and --foreign-data did not exist). Content hashes are recomputed after every edit
(``rewrite_manifest``), as a forger would: only a re-derivation can object.

The evals score a prefix (eval_tokens) to stay fast; a prefix is itself a problem now, so every
test names the problem it aims at, never just verified:False.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from stages.contract.hashing import sha256_file
from stages.contract.stage_dir import StageDir
from stages.data.shards import encode_shard, read_shard
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.model.checkpoint import load_tensors_and_metadata
from stages.artifact.quantized import QuantizedMetadata
from stages.artifact.writer import build_artifact
from stages.pack.config import PackConfig
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig

from .conftest import SMALL_VOCAB, golf, rewrite_manifest
from .test_artifact_trust import Parts, as_pack_folder, tampered
from .test_cli import assert_one_line_error

PIPELINE = ("tokenize", "train", "quantize", "pack")
EVAL_TOKENS = 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory, workdir, pack_dir):
    """A private copy of the session's tokenize -> pack run, and a prefix eval of it with receipts."""
    root = tmp_path_factory.mktemp("rederive") / "run"
    for stage in PIPELINE:
        shutil.copytree(workdir / stage, root / stage)
    run_eval(EvalConfig(eval_tokens=EVAL_TOKENS), root / "pack", None, root / "eval",
             token_nll=root / "nll.safetensors")
    return root


def inspect(*args):
    """`golf inspect ARGS`: (exit code, stdout lines, problem lines)."""
    result = golf("inspect", *args)
    lines = result.stdout.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, lines, [line for line in lines if line.startswith("problem:")]


def edited_eval(run, name: str, change) -> object:
    """A copy of the run's eval folder beside it (so its inputs resolve), edited and rehashed."""
    folder = run / name
    shutil.copytree(run / "eval", folder)
    rewrite_manifest(folder, change)
    return folder


def metrics_of(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())["metrics"]


# Item 1: an artifact of another model, copied over the pack's with its hashes fixed up.

def test_a_swapped_artifact_with_fixed_hashes_does_not_verify(run):
    tensors, metadata = load_tensors_and_metadata(run / "quantize" / "quantized.safetensors")
    name = next(n for n, t in sorted(tensors.items()) if t.dtype.is_floating_point and t.numel() > 1)
    tensors[name] = tensors[name] * 0.5  # another model: the same shapes, other weights
    quantized = QuantizedMetadata.from_metadata(metadata, "quantized.safetensors")
    config = PackConfig()
    (run / "other.golf").write_bytes(build_artifact(tensors, quantized, config.layout(), config.codecs())[0])
    swapped = as_pack_folder(run / "pack", run / "other.golf", run / "pack-swapped")
    scored = golf("eval", swapped, "--stride", 32, "--set", f"eval_tokens={EVAL_TOKENS}", "--out", run / "eval-swapped")
    assert scored.returncode == 0, scored.stderr  # the stride eval skips the in-memory comparison
    code, _, problems = inspect(run / "eval-swapped")
    assert code == 1
    assert any(p.startswith("problem:pack: its artifact is not the packing of its quantize stage's tensors")
               and name in p for p in problems), problems
    _, _, honest = inspect(run / "pack")
    assert honest == []  # the honest pack decodes to exactly its quantize stage's tensors


# Item 2: val_bpb edited, the content hash recomputed.

def test_an_edited_val_bpb_does_not_verify(run):
    folder = edited_eval(run, "eval-bpb", lambda m: m["metrics"].update(val_bpb=0.9))
    code, _, problems = inspect(folder)
    assert code == 1
    assert any("val_bpb 0.9 does not follow from val_loss" in p for p in problems), problems
    assert any("val_bpb 0.9 is not its receipts'" in p for p in problems), problems


def test_edited_counts_do_not_verify(run):
    def halve_bytes(manifest):  # val_bpb and bytes_scored edited together: the data recounts the bytes
        metrics = manifest["metrics"]
        metrics.update(bytes_scored=metrics["bytes_scored"] * 2, val_bpb=metrics["val_bpb"] / 2)
    code, _, problems = inspect(edited_eval(run, "eval-bytes", halve_bytes))
    assert code == 1 and any("bytes_scored is" in p and "its val data gives" in p for p in problems), problems


# Item 3: foreign code run under --trust-artifact-code, the manifest's flag then flipped.

def test_foreign_code_is_found_in_the_artifact_not_the_manifest_flag(run, pack_dir):
    from stages.artifact.verify import stage_code_report

    foreign = tampered(Parts((run / "pack" / "model.golf").read_bytes()), "edited", run / "foreign.golf")
    out = run / "eval-foreign"
    scored = golf("eval", foreign, "--data", run / "tokenize", "--out", out, "--trust-artifact-code",
                  "--set", f"eval_tokens={EVAL_TOKENS}")
    assert scored.returncode == 0, scored.stderr

    def hide(manifest):
        manifest["metrics"].update(code_trusted_foreign=False, code_matches_installed=True)
        manifest["metrics"].pop("code_differences")
    rewrite_manifest(out, hide)
    _, problem = stage_code_report(StageDir(out))
    assert problem is not None and "not the code this golf ships" in problem
    code, _, problems = inspect(out)
    vouch = "problem:eval: its score came from an artifact whose code golf does not vouch for"
    assert code == 1 and any(p.startswith(vouch) for p in problems), problems


# Item 4: other val data.

def doubled_sidecar_copy(run):
    """A copy of the tokenize folder with every sidecar count doubled, its manifest rehashed."""
    other = run / "tokenize-doubled"
    shutil.copytree(run / "tokenize", other)
    for side in other.glob("fineweb_val_bytes_*.bin"):
        side.write_bytes(encode_shard(np.asarray(read_shard(side)).astype(np.int64) * 2))

    def fix(manifest):
        for record in manifest["outputs"].values():
            path = other / record["path"]
            record.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    rewrite_manifest(other, fix)
    return other


def test_eval_refuses_data_other_than_the_lineages(run):
    other = doubled_sidecar_copy(run)
    result = golf("eval", run / "pack", "--data", other, "--set", f"eval_tokens={EVAL_TOKENS}",
                  "--out", run / "eval-doubled")
    assert_one_line_error(result, "is not the tokenize folder of the artifact's lineage", "--foreign-data")
    assert not (run / "eval-doubled").exists()


def test_foreign_data_is_scored_only_when_asked_and_never_verifies(run):
    easier = run / "tokenize-other"
    tokenizer = str(run / "tokenize" / "tokenizer.model")  # the same tokenizer, other (fewer) documents
    run_tokenize(TokenizeConfig(max_docs=120, vocab_size=SMALL_VOCAB, tokenizer=tokenizer), easier)
    out = run / "eval-other"
    result = golf("eval", run / "pack", "--data", easier, "--foreign-data", "--set", f"eval_tokens={EVAL_TOKENS}",
                  "--out", out)
    assert result.returncode == 0, result.stderr
    assert "data:foreign" in result.stdout and any(line.startswith("warning:") for line in result.stdout.splitlines())
    assert metrics_of(out)["data_source"] == "foreign"
    code, _, problems = inspect(out)
    assert code == 1 and any("a foreign-data score" in p for p in problems), problems
    assert any("not its lineage's val data" in p for p in problems), problems
    rewrite_manifest(out, lambda m: m["metrics"].update(data_source="lineage"))  # forged: the mark removed
    code, _, problems = inspect(out)
    assert code == 1 and any("scored data tokenize-other" in p and "not its lineage's val data" in p
                             for p in problems), problems
    _, _, honest = inspect(run / "eval")
    assert not any("data" in p for p in honest), honest


# Item 5: budgets of stages absent from the lineage.

def test_a_bare_artifacts_train_budget_is_not_measured(run):
    (run / "bare").mkdir()
    shutil.copy(run / "pack" / "model.golf", run / "bare" / "model.golf")
    out = run / "eval-bare"
    result = golf("eval", run / "bare" / "model.golf", "--data", run / "tokenize", "--set",
                  f"eval_tokens={EVAL_TOKENS}", "--out", out)
    assert result.returncode == 0, result.stderr
    _, lines, _ = inspect(out)
    train = next(line for line in lines if line.startswith("budget:train"))
    assert "verdict:not measured" in train and "PASS" not in train, train
    evaluation = next(line for line in lines if line.startswith("budget:eval"))
    assert "verdict:PASS" in evaluation, evaluation
    _, lines, _ = inspect(run / "pack")
    assert "verdict:not measured" in next(line for line in lines if line.startswith("budget:eval"))


# Item 7: partial and non-finite scores.

def test_a_partial_score_is_not_verified(run):
    code, lines, problems = inspect(run / "eval")
    assert code == 1 and lines[-1].endswith("verified:False")
    assert any(f"a partial score (eval_tokens={EVAL_TOKENS}" in p for p in problems), problems


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_score_is_not_verified(run, value):
    folder = edited_eval(run, f"eval-{value}", lambda m: m["metrics"].update(val_bpb=value, val_loss=value))
    code, _, problems = inspect(folder)
    assert code == 1 and any(f"val_bpb is {value!r}: not a finite score" in p for p in problems), problems


# Item 18: the eval budget is the run's own --eval-budget-s.

def test_the_eval_ledger_is_judged_against_the_runs_budget(run):
    out = run / "eval-budget"
    result = golf("eval", run / "pack", "--eval-budget-s", "0.001", "--set", f"eval_tokens={EVAL_TOKENS}",
                  "--out", out)
    assert result.returncode == 0, result.stderr
    _, lines, _ = inspect(out)
    budget = next(line for line in lines if line.startswith("budget:eval"))
    assert "limit:0.001" in budget and "verdict:FAIL" in budget, budget


# --rescore: the one way a number is proven.

def test_rescore_reproduces_an_honest_eval_and_writes_nothing_there(run):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, lines, problems = inspect(run / "eval", "--rescore")
    line = next(line for line in lines if line.startswith("rescore:"))
    recorded = metrics_of(run / "eval")
    assert line.startswith("rescore:match") and f"recorded_val_bpb:{recorded['val_bpb']:.8f}" in line, line
    assert "rescored_val_bpb:" in line and not any("rescor" in p for p in problems), problems
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_rescore_catches_an_edit_that_every_count_agrees_with(run):
    def scale(manifest):  # val_loss and val_bpb edited together, the receipts unlinked: the counts agree
        metrics = manifest["metrics"]
        for key in ("token_nll_file", "token_nll_sha256", "token_nll_rows"):
            metrics.pop(key)
        metrics.update(val_loss=metrics["val_loss"] * 0.9, val_bpb=metrics["val_bpb"] * 0.9)
    folder = edited_eval(run, "eval-scaled", scale)
    _, _, problems = inspect(folder)
    assert not any("does not follow" in p or "receipts" in p for p in problems), problems  # only a rescore tells
    code, lines, problems = inspect(folder, "--rescore")
    assert code == 1 and any(line.startswith("rescore:MISMATCH") for line in lines), lines
    assert any(p.startswith("problem:eval: rescoring gives val_bpb") for p in problems), problems
