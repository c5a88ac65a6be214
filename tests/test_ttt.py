"""Score-first test-time training: legal by construction, and checked.

Each test would have caught a historical bug (docs/TTT_CASEOPS.md sections H and I): training on a
chunk before scoring it, rescoring or double-scoring targets, a TTT path that does not equal plain
scoring with learning off, training on the last chunk, the SmearGate leak across a BOS, and eval
running installed code instead of the shipped copy. The library tests use a tiny random GPT on
synthetic documents; the stage tests use the conftest pipeline.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.artifact.verify import read_artifact
from stages.config import apply_overrides
from stages.scoring.bpb import ByteTable, token_bytes
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts
from stages.scoring.scorer import score_stream
from stages.scoring.windows import usable_targets
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt import score_with_ttt
from stages.evaluate.ttt.common import cosine_lr, plan_chunks
from stages.scoring.val_data import load_val
from stages.contract.stage_dir import StageDir
from stages.errors import GolfError
from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.ranges import ConfigError

from .conftest import golf
from .test_artifact_trust import Parts, as_pack_folder

VOCAB, BOS = 64, 1
SEQ, STRIDE, CHUNK, BATCH_WINDOWS = 32, 8, 128, 4
# Learns fast enough on 1,024 random targets that adaptation visibly changes later NLLs.
FAST_TTT = {"mode": "chunk-sgd", "chunk_sgd": {"chunk_tokens": CHUNK, "lr": 0.05, "momentum": 0.9, "epochs": 2,
                                               "batch_seqs": 2, "grad_clip": 1.0, "freeze_blocks": 0}}


def merged(config: dict, **changes) -> dict:
    """A TTT config dict with ``changes``: the mode, or some fields of a section (chunk_sgd={"lr": 0.0})."""
    return {**config, **{key: {**config.get(key, {}), **value} if isinstance(value, dict) else value
                         for key, value in changes.items()}}


def tiny_gpt(seed: int = 0, **switches) -> GPT:
    """A 2-layer GPT whose weights are all perturbed, so every component (zero-init ones too) acts."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                            bos_id=BOS, **switches))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def synthetic_docs(seed: int = 0, num_tokens: int = 8 * CHUNK + 1) -> np.ndarray:
    """Documents of 20..80 random tokens, each led by BOS, cut to ``num_tokens``."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    while len(stream) < num_tokens:
        stream += [BOS, *rng.integers(2, VOCAB, size=int(rng.integers(20, 80))).tolist()]
    return np.array(stream[:num_tokens], dtype=np.int64)


def byte_table(seed: int = 0) -> ByteTable:
    rng = np.random.default_rng(seed)
    boundary = np.zeros(VOCAB, dtype=bool)
    boundary[:2] = True
    base = np.where(boundary, 0, rng.integers(1, 5, size=VOCAB)).astype(np.int32)
    return ByteTable(base, rng.random(VOCAB) < 0.5, boundary)


def ttt_receipts(model, stream, ttt: dict | None = None, table=None) -> tuple[dict, object]:
    """Chunk-SGD over ``stream`` (receipts as saved, the sums)."""
    receipts = TokenReceipts()
    sums = score_with_ttt(model, stream, table or byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                          config=ttt or FAST_TTT, receipts=receipts)
    return receipts.tensors(), sums


def plain_receipts(model, stream, table=None) -> tuple[dict, object]:
    receipts = TokenReceipts()
    setup = ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS)
    sums = score_stream(model, stream, table or byte_table(), setup, receipts=receipts)
    return receipts.tensors(), sums


def by_position(receipts: dict, name: str) -> np.ndarray:
    """A receipt column indexed by position (position 0, the first BOS, is never a target)."""
    values = np.full(int(receipts["position"].max()) + 1, np.nan)
    values[receipts["position"].numpy()] = receipts[name].double().numpy()
    return values


# Causality through adaptation


def test_a_token_changes_no_score_committed_before_it():
    stream = synthetic_docs()
    p = 3 * CHUNK + 40  # inside chunk 3: its chunk and later ones are adapted on data holding it
    changed = stream.copy()
    changed[p] = (changed[p] + 7) % (VOCAB - 2) + 2
    model = tiny_gpt()
    before, _ = ttt_receipts(copy.deepcopy(model), stream)
    after, _ = ttt_receipts(copy.deepcopy(model), changed)
    order = by_position(before, "order")
    nll_before, nll_after = by_position(before, "nll"), by_position(after, "nll")
    earlier = np.flatnonzero((order < order[p]) | (np.arange(len(order)) < p))[1:]
    assert len(earlier) >= p - 1
    np.testing.assert_allclose(nll_after[earlier], nll_before[earlier], rtol=0, atol=1e-6)
    # The change does reach the targets scored after the update that trained on it (the test can see it).
    next_chunk = np.arange(5 * CHUNK + 1, 6 * CHUNK + 1)
    assert np.abs(nll_after[next_chunk] - nll_before[next_chunk]).max() > 1e-4


# Coverage and receipts


def test_every_target_is_scored_once_and_bytes_add_up():
    stream = synthetic_docs()
    table = byte_table()
    receipts, sums = ttt_receipts(tiny_gpt(), stream, table=table)
    targets = usable_targets(len(stream), SEQ)
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, targets + 1))
    assert sums.tokens == targets
    expected_bytes = int(token_bytes(table, stream[: targets + 1])[1:].sum())
    assert int(receipts["bytes"].sum()) == sums.bytes == expected_bytes
    recomputed = receipts["nll"].double().sum().item() / (math.log(2) * expected_bytes)
    assert abs(recomputed - sums.bpb) <= 1e-9


def test_chunks_hold_exactly_their_targets():
    """H.2.2: with the chunk a multiple of the stride, chunk c scores targets (cC, (c+1)C]."""
    from stages.scoring.windows import plan_windows

    targets = usable_targets(len(synthetic_docs()), SEQ)
    chunks = plan_chunks(plan_windows(targets, SEQ, STRIDE), CHUNK, targets)
    assert len(chunks) == math.ceil(targets / CHUNK)
    for index, windows in enumerate(chunks):
        scored = sorted(j for w in windows for j in range(w.start + w.score_from, w.start + SEQ))
        assert scored == list(range(index * CHUNK, min((index + 1) * CHUNK, targets)))


# Zero learning is plain scoring


@pytest.mark.parametrize("off", [{"lr": 0.0}, {"epochs": 0}])
def test_zero_learning_equals_plain_scoring_exactly(off):
    stream = synthetic_docs()
    model = tiny_gpt()
    plain, plain_sums = plain_receipts(copy.deepcopy(model), stream)
    ttt, ttt_sums = ttt_receipts(copy.deepcopy(model), stream, merged(FAST_TTT, chunk_sgd=off))
    assert torch.equal(plain["position"], ttt["position"])
    assert torch.equal(plain["nll"], ttt["nll"])
    assert ttt_sums.bpb == plain_sums.bpb
    learning, _ = ttt_receipts(copy.deepcopy(model), stream)  # and learning does change the scores
    assert not torch.equal(learning["nll"], plain["nll"])


# Updates use committed targets only


class LossSpy:
    """Wraps ``model.loss``: for each training call, the stream positions it trained on and how
    many targets were committed at that moment."""

    def __init__(self, model, stream: np.ndarray, receipts: TokenReceipts):
        self.loss, self.stream, self.receipts = model.loss, stream, receipts
        self.calls: list[tuple[np.ndarray, set]] = []
        model.loss = self

    def __call__(self, inputs, targets, *args):
        committed = {int(p) for batch in self.receipts.batches for p in batch.positions}
        positions = np.concatenate([self.locate(row) for row in torch.cat([inputs, targets[:, -1:]], 1)])
        self.calls.append((positions, committed))
        return self.loss(inputs, targets, *args)

    def locate(self, row: torch.Tensor) -> np.ndarray:
        """Target positions of one training row, found by its tokens in the stream (random: unique)."""
        row = row.numpy()
        starts = [s for s in range(len(self.stream) - len(row) + 1) if np.array_equal(self.stream[s : s + len(row)], row)]
        assert len(starts) == 1
        return np.arange(starts[0] + 1, starts[0] + len(row))


def test_updates_train_only_on_committed_targets_and_never_on_the_last_chunk():
    stream = synthetic_docs()
    model = tiny_gpt()
    receipts = TokenReceipts()
    spy = LossSpy(model, stream, receipts)
    score_with_ttt(model, stream, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS), config=FAST_TTT,
                   receipts=receipts)
    targets = usable_targets(len(stream), SEQ)
    num_chunks = math.ceil(targets / CHUNK)
    last_chunk = set(range((num_chunks - 1) * CHUNK + 1, targets + 1))
    for positions, committed in spy.calls:
        assert set(positions.tolist()) <= committed, "an update used a target not yet scored"
        assert not last_chunk & committed, "an update ran after the last chunk was scored"
    # H.2.5: epochs x ceil(sequences / batch_seqs) steps per trained chunk.
    steps_per_chunk = FAST_TTT["chunk_sgd"]["epochs"] * math.ceil((CHUNK // SEQ) / FAST_TTT["chunk_sgd"]["batch_seqs"])
    assert len(spy.calls) == steps_per_chunk * (num_chunks - 1)
    # The saved update receipts say the same: each trained on targets committed by its order.
    saved = receipts.tensors()
    order = by_position(saved, "order")
    assert len(saved["update_after_order"]) == len(spy.calls)
    for after, first, last in zip(*(saved[k].tolist() for k in ("update_after_order", "update_first_position",
                                                                  "update_last_position"))):
        assert order[first : last + 1].max() <= after


def test_frozen_blocks_stay_bitwise_unchanged():
    model = tiny_gpt()
    start = copy.deepcopy(model.state_dict())
    score_with_ttt(model, synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                   config=merged(FAST_TTT, chunk_sgd={"freeze_blocks": 1}))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in start.items() if k.startswith("blocks.0."))
    assert not torch.equal(after["blocks.1.mlp.fc.weight"], start["blocks.1.mlp.fc.weight"])


def test_freezing_more_blocks_than_the_model_has_is_a_config_error():
    with pytest.raises(ConfigError, match="ttt.chunk_sgd.freeze_blocks: must be at most the model's 2 blocks"):
        score_with_ttt(tiny_gpt(), synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE),
                       config=merged(FAST_TTT, chunk_sgd={"freeze_blocks": 3}))


def test_learning_rate_is_cosine_over_chunks():
    assert cosine_lr(0.005, 0, 9) == 0.005
    assert cosine_lr(0.005, 4, 9) == pytest.approx(0.0025)
    assert cosine_lr(0.005, 8, 9) == pytest.approx(0.0, abs=1e-12)


# SmearGate BOS mask inside the TTT path


@pytest.mark.parametrize("mask", [True, False])
def test_smeargate_bos_mask_holds_inside_ttt(mask):
    """The last token of a document must not reach the next document through the smear into its
    BOS (#1851). With doc_mask attention stays inside documents, so only the smear could carry it."""
    stream = synthetic_docs()
    bos = np.flatnonzero(stream == BOS)
    start = int(bos[(bos > 2 * CHUNK + 1) & (bos < 3 * CHUNK - 40)][0])  # a document beginning inside chunk 2
    end = int(bos[bos > start][0])
    changed = stream.copy()
    changed[start - 1] = (changed[start - 1] + 5) % (VOCAB - 2) + 2
    model = tiny_gpt(smear_gate=True, smear_bos_mask=mask, doc_mask=True)
    before, _ = ttt_receipts(copy.deepcopy(model), stream)
    after, _ = ttt_receipts(copy.deepcopy(model), changed)
    # Targets of the next document (past its BOS) scored before any update that saw the change.
    update = before["update_after_order"][before["update_last_position"] >= start - 1][0]
    order = by_position(before, "order")
    document = np.arange(start + 1, end)
    document = document[order[document] <= update.item()]
    assert len(document) > 10
    moved = np.abs(by_position(after, "nll")[document] - by_position(before, "nll")[document]).max()
    assert (moved <= 1e-6) if mask else (moved > 1e-4)


# The stage: receipts, ledger, metrics, shipped code


def eval_config(**ttt) -> EvalConfig:
    """The stage's config with ``ttt``: the mode and sections as in a TTT config dict (chunk_sgd={...})."""
    settings = [(f"{key}.{field}", value) for key, section in ttt.items() if isinstance(section, dict)
                for field, value in section.items()]
    settings += [(key, value) for key, value in ttt.items() if not isinstance(value, dict)]
    overrides = ["eval_tokens=4096", "stride=16", *(f"ttt.{key}={value}" for key, value in settings)]
    return apply_overrides(EvalConfig(), overrides)


def test_stage_receipts_recompute_the_manifest_bpb(pack_dir, tmp_path):
    config = apply_overrides(eval_config(mode="chunk-sgd", chunk_sgd={"chunk_tokens": 1024}), ["compare_no_ttt=true"])
    manifest = run_eval(config, pack_dir, None, tmp_path / "eval", token_nll=tmp_path / "nll.safetensors")
    metrics = manifest.metrics
    receipts = load_file(tmp_path / "nll.safetensors")
    assert receipts["position"].dtype == torch.int64 and receipts["nll"].dtype == torch.float32
    assert receipts["bytes"].dtype == torch.int32 and receipts["order"].dtype == torch.int64
    recomputed = receipts["nll"].double().sum().item() / (math.log(2) * receipts["bytes"].double().sum().item())
    assert abs(recomputed - metrics["val_bpb"]) <= 1e-9
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, metrics["tokens_scored"] + 1))
    val = load_val(StageDir(pack_dir).upstream("quantized", "quantize").upstream("data", "tokenize"))
    if val.sidecar is not None:
        expected_bytes = int(val.sidecar[1 : metrics["tokens_scored"] + 1].sum())
    else:
        expected_bytes = int(token_bytes(val.table, val.tokens[: metrics["tokens_scored"] + 1])[1:].sum())
    assert int(receipts["bytes"].sum()) == metrics["bytes_scored"] == expected_bytes
    assert metrics["ttt_mode"] == "chunk-sgd" and metrics["val_bpb_no_ttt"] != metrics["val_bpb"]
    ledger = manifest.ledger
    assert {name: ledger[name]["counts_toward"] for name in ("load_artifact", "load_val", "score", "adapt")} == \
        dict.fromkeys(("load_artifact", "load_val", "score", "adapt"), "eval")
    assert ledger["score_no_ttt"]["counts_toward"] is None


def test_plain_eval_writes_receipts_too(pack_dir, tmp_path):
    manifest = run_eval(eval_config(), pack_dir, None, tmp_path / "eval", token_nll=tmp_path / "plain.safetensors")
    receipts = load_file(tmp_path / "plain.safetensors")
    recomputed = receipts["nll"].double().sum().item() / (math.log(2) * receipts["bytes"].double().sum().item())
    assert abs(recomputed - manifest.metrics["val_bpb"]) <= 1e-9
    assert len(np.unique(receipts["position"].numpy())) == len(receipts["position"]) == manifest.metrics["tokens_scored"]
    assert len(receipts["update_after_order"]) == 0 and manifest.metrics["ttt_mode"] == "none"
    assert "adapt" not in manifest.ledger
    # The attention kernel that scored, in the manifest and as one log line.
    assert manifest.metrics["attention"] == "sdpa" and "attention:sdpa" in (tmp_path / "eval" / "log.txt").read_text()


def test_artifact_ships_the_ttt_code_and_eval_runs_the_shipped_copy(pack_dir, data_dir, tmp_path):
    parts = Parts(StageDir(pack_dir).file("artifact").read_bytes())
    assert "stages/evaluate/ttt/chunk_sgd.py" in read_artifact(StageDir(pack_dir).file("artifact")).code
    marked = dict(parts.files)
    # The shipped mode registers a scorer that says it ran (golf's own copy is untouched).
    marked["stages/evaluate/ttt/chunk_sgd.py"] = marked["stages/evaluate/ttt/chunk_sgd.py"].replace(
        "def score_with_chunk_sgd(", "def score_with_chunk_sgd(*args, **kwargs):\n"
        "    raise RuntimeError('the shipped chunk_sgd ran')\n\n\ndef golf_chunk_sgd(", 1)
    pack = as_pack_folder(pack_dir, parts.write(tmp_path / "model.golf", marked), tmp_path / "pack")
    with pytest.raises(RuntimeError, match="the shipped chunk_sgd ran"):
        run_eval(eval_config(mode="chunk-sgd"), pack, data_dir, tmp_path / "eval", trust_code=True)


def test_an_artifact_packed_without_ttt_code_is_golfs_own_and_refuses_ttt(pack_dir, quant_dir, tmp_path):
    """`golf pack --no-ttt` leaves the TTT code out (fewer bytes, still golf's own code, scored as
    before without TTT); --ttt on it is one line, not an import error deep in the shipped code."""
    packed = golf("pack", "--quantized", quant_dir, "--no-ttt", "--out", tmp_path / "pack")
    assert packed.returncode == 0, packed.stderr
    plain, full = (json.loads((folder / "manifest.json").read_text())["metrics"] for folder in (tmp_path / "pack", pack_dir))
    assert plain["bytes_code"] < full["bytes_code"] and plain["code_files"] < full["code_files"]
    assert golf("pack", "--check", tmp_path / "pack" / "model.golf").returncode == 0
    scored = golf("eval", tmp_path / "pack", "--out", tmp_path / "eval")
    assert scored.returncode == 0, scored.stderr
    refused = golf("eval", tmp_path / "pack", "--ttt", "chunk-sgd", "--out", tmp_path / "eval-ttt")
    assert refused.returncode != 0 and not (tmp_path / "eval-ttt").exists()
    assert refused.stderr.strip().startswith("error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "packed without test-time training code" in refused.stderr


def test_cli_chunk_sgd_with_receipts_and_comparison(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--ttt", "chunk-sgd", "--compare-no-ttt", "--stride", "16",
                  "--set", "eval_tokens=4096", "--set", "ttt.chunk_sgd.chunk_tokens=1024", "--set", "ttt.chunk_sgd.lr=0.002",
                  "--token-nll", tmp_path / "nll.safetensors", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "manifest.json").read_text())["metrics"]
    config = json.loads((tmp_path / "eval" / "manifest.json").read_text())["config"]
    assert config["ttt"]["chunk_sgd"]["lr"] == 0.002 and config["ttt"]["mode"] == "chunk-sgd"
    assert f"val_bpb_no_ttt:{metrics['val_bpb_no_ttt']:.8f}" in result.stdout
    assert metrics["token_nll_rows"] == metrics["tokens_scored"]


@pytest.mark.parametrize("args, message", [
    (["--ttt", "sideways"], "ttt.mode: expected one of none, chunk-sgd, lora, phased, got 'sideways'"),
    (["--compare-no-ttt"], "compare_no_ttt: needs a test-time training mode"),
    (["--ttt", "chunk-sgd", "--set", "ttt.chunk_sgd.momentum=1"],
     "ttt.chunk_sgd.momentum: must be in [0, 1), got 1.0"),
    (["--ttt", "chunk-sgd", "--set", "ttt.momentum=0.5"],
     "config key 'ttt.momentum' was renamed: use 'ttt.chunk_sgd.momentum'"),
    (["--token-nll", "no/such/folder/nll.safetensors"], "--token-nll folder no/such/folder does not exist"),
])
def test_bad_ttt_input_is_one_line(pack_dir, tmp_path, args, message):
    result = golf("eval", pack_dir, *args, "--out", tmp_path / "eval", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_token_nll_never_replaces_a_file_golf_did_not_write(pack_dir, tmp_path):
    """An existing --token-nll file is kept without --force; with --force only an earlier eval's
    receipts are replaced, never another file (a shard, a README) nor anything through a symlink."""
    config = eval_config()
    receipts = tmp_path / "nll.safetensors"
    run_eval(config, pack_dir, None, tmp_path / "first", token_nll=receipts)
    before = receipts.read_bytes()
    with pytest.raises(GolfError, match="pass --force"):
        run_eval(config, pack_dir, None, tmp_path / "second", token_nll=receipts)
    assert receipts.read_bytes() == before and not (tmp_path / "second").exists()
    run_eval(config, pack_dir, None, tmp_path / "third", token_nll=receipts, force=True)
    assert load_file(receipts)["nll"].numel() > 0
    notes = tmp_path / "README.md"
    notes.write_text("mine")
    link = tmp_path / "link.safetensors"
    link.symlink_to(receipts)
    for path, message in ((notes, "not an eval's receipts"), (link, "symlink")):
        with pytest.raises(GolfError, match=message):
            run_eval(config, pack_dir, None, tmp_path / "fourth", token_nll=path, force=True)
    assert notes.read_text() == "mine" and link.is_symlink()


def test_a_prefix_score_is_marked_partial_and_a_whole_one_is_not(pack_dir, tmp_path):
    """--set eval_tokens=N scores a prefix: the manifest and the log say so (item 7 of issue 17)."""
    partial = run_eval(eval_config(), pack_dir, None, tmp_path / "prefix")
    assert partial.metrics["partial"] is True and "partial:True" in (tmp_path / "prefix" / "log.txt").read_text()
    whole = run_eval(EvalConfig(), pack_dir, None, tmp_path / "whole")
    assert whole.metrics["partial"] is False


def test_a_non_finite_score_fails_the_stage():
    from stages.evaluate.stage import _non_finite_failure

    assert _non_finite_failure({"val_bpb": 1.5, "val_loss": 3.0}) == ""
    for bad in (float("nan"), float("inf")):
        assert "not a finite score" in _non_finite_failure({"val_bpb": bad, "val_loss": 3.0})
