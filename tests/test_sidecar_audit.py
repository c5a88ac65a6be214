"""Eval re-audits the val byte sidecar it reads (issue 17 items 4 and 6): a sidecar that does not count the
bytes of the text its tokens rebuild is refused, however small the difference."""

import shutil

import numpy as np
import pytest

from stages.contract.hashing import sha256_file
from stages.contract.stage_dir import StageDir
from stages.data.shards import encode_shard, read_shard
from stages.errors import GolfError
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.scoring.val_data import load_val
from stages.tokenize.stage import run_tokenize
from stages.tokenize.config import TokenizeConfig

from .conftest import rewrite_manifest

SIDECAR = "fineweb_val_bytes_000000"


def with_sidecar(data_dir, folder, change):
    """A copy of a tokenize folder whose sidecar ``change(sidecar)`` edited, its manifest rehashed to match
    (what a careful forger does: the hashes are unkeyed)."""
    shutil.copytree(data_dir, folder)
    path = folder / f"{SIDECAR}.bin"
    sidecar = np.asarray(read_shard(path), dtype=np.int64)
    path.write_bytes(encode_shard(change(sidecar.copy())))

    def fix(manifest):
        manifest["outputs"][SIDECAR].update(sha256=sha256_file(path), bytes=path.stat().st_size)

    rewrite_manifest(folder, fix)
    return folder


def inflate(share: float):
    """Add one byte to evenly spread non-BOS tokens, ``share`` of the sidecar's total in all."""
    def change(sidecar):
        text_tokens = np.flatnonzero(sidecar > 0)
        extra = round(share * int(sidecar.sum()))
        sidecar[text_tokens[np.linspace(0, text_tokens.size - 1, extra).astype(int)]] += 1
        return sidecar
    return change


def add_to_one_token(sidecar):
    sidecar[int(np.flatnonzero(sidecar > 0)[10])] += 1
    return sidecar


def test_sidecar_inflated_by_099_percent_is_refused_by_eval(pack_dir, data_dir, tmp_path):
    """Sliding windows: quantize's in-memory score is of other windows, so only the audit can object; even
    asked to score foreign data (the copy is not the lineage's folder), eval refuses the forged sidecar."""
    forged = with_sidecar(data_dir, tmp_path / "forged", inflate(0.0099))
    with pytest.raises(GolfError, match=r"forged: byte sidecar: \d+ of \d+ val documents do not sum to the UTF-8 length "
                                        r"of their text .*; this data is refused"):
        run_eval(EvalConfig(stride=32), pack_dir, forged, tmp_path / "eval", foreign_data=True)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("change", [add_to_one_token, lambda sidecar: 2 * sidecar], ids=["one-token", "doubled"])
def test_sidecar_off_by_one_token_or_doubled_is_refused_when_read(data_dir, tmp_path, change):
    forged = with_sidecar(data_dir, tmp_path / "forged", change)
    with pytest.raises(GolfError, match="byte sidecar: .* do not sum to the UTF-8 length of their text"):
        load_val(StageDir(forged, "tokenize"))


def test_eval_logs_the_sidecar_audit_and_its_cost(pack_dir, data_dir, tmp_path, capsys):
    metrics = run_eval(EvalConfig(), pack_dir, data_dir, tmp_path / "eval").metrics
    assert metrics["byte_source"] == "sidecar" and metrics["sidecar_audit"]["passed"]
    assert metrics["sidecar_audit"]["sidecar_bytes"] == int(np.asarray(read_shard(data_dir / f"{SIDECAR}.bin")).sum())
    assert "byte_source:sidecar caseops:False sidecar_audit:passed" in capsys.readouterr().out


def test_eval_without_the_sidecar_says_it_uses_the_table(pack_dir, data_dir, tmp_path, capsys):
    metrics = run_eval(EvalConfig(use_sidecar=False), pack_dir, data_dir, tmp_path / "eval").metrics
    assert metrics["byte_source"] == "tokenizer table" and "sidecar_audit" not in metrics
    assert "byte_source:tokenizer table reason:the sidecar was not asked for" in capsys.readouterr().out


@pytest.fixture(scope="module")
def normalized_data(tmp_path_factory):
    """golf's own tokenize with the challenge's normalizing spec: its sidecar counts the normalized text."""
    out = tmp_path_factory.mktemp("normalized") / "tokenize"
    run_tokenize(TokenizeConfig(max_docs=160, vocab_size=400, spec="challenge"), out)
    return out


@pytest.mark.parametrize("change", [inflate(0.0099), add_to_one_token], ids=["0.99%", "one-token"])
def test_normalizing_tokenizer_sidecar_with_bytes_added_is_refused_when_read(normalized_data, tmp_path, change):
    assert load_val(StageDir(normalized_data, "tokenize")).byte_source == "sidecar"
    forged = with_sidecar(normalized_data, tmp_path / "forged", change)
    with pytest.raises(GolfError, match="byte sidecar: .* do not sum to the UTF-8 length of their text"):
        load_val(StageDir(forged, "tokenize"))
