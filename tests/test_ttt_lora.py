"""Document LoRA TTT (mode 'lora'): legal by construction, and checked (docs/TTT_CASEOPS.md H.1, H.3).

A tiny random GPT on synthetic BOS-separated documents, on CPU. Each test pins one rule a record
could break: a score that saw its own document's later tokens through an update, a target scored
twice or never, a TTT path that is not plain scoring when it cannot learn, a first chunk that is
not the base model's, training on a document's last chunk, one document reaching another, state
leaking from batch to batch, a row holding two documents, ranks that drop or repeat a batch.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.scoring.bpb import BpbSums, token_bytes
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts
from stages.scoring.scorer import WindowScorer
from stages.scoring.windows import usable_targets
from stages.evaluate.ttt import score_with_ttt
from stages.evaluate.ttt import lora as lora_mode
from stages.evaluate.ttt.common import TTTPass, requires_grad
from stages.evaluate.ttt.adapters import BatchAdapters
from stages.evaluate.ttt.config import LoRAConfig, TTTConfig
from stages.evaluate.ttt.documents import Document, find_documents, plan_batches, rank_batches

from .conftest import golf
from .test_ttt import BOS, VOCAB, by_position, byte_table, merged, synthetic_docs, tiny_gpt

SEQ, CHUNK = 32, 8  # windows of 32 tokens: documents of up to 80 tokens slide inside themselves
STREAM_TOKENS = 769  # 768 targets, 17 documents
# Learns fast enough that adaptation visibly changes later NLLs of a document.
FAST_LORA = {"mode": "lora", "lora": {"chunk": CHUNK, "batch_docs": 4, "rank": 4, "alpha": 8.0, "lr": 0.03,
                                       "weight_decay": 0.5, "warm_start_a": False}}
TOLERANCE = 1e-5  # the same row computed in batches of other widths differs by float rounding only


def stream(seed: int = 0) -> np.ndarray:
    return synthetic_docs(seed, STREAM_TOKENS)


def run_lora(model, tokens, rank: int = 0, world_size: int = 1, sidecar=None, **lora) -> tuple[dict, object]:
    """Mode 'lora' over ``tokens`` on a copy of ``model``, ``lora`` changing fields of its section:
    (receipts as saved, sums)."""
    receipts = TokenReceipts()
    setup = ScoringSetup(SEQ, SEQ, rank=rank, world_size=world_size)
    sums = score_with_ttt(copy.deepcopy(model), tokens, byte_table(), setup, sidecar, config=merged(FAST_LORA, lora=lora),
                          receipts=receipts)
    return receipts.tensors(), sums


def documents(tokens: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each document by a plain scan: inputs start..end-1, targets start+1..end."""
    targets = usable_targets(len(tokens), SEQ)
    starts = [i for i in range(targets) if tokens[i] == BOS]
    return list(zip(starts, [*starts[1:], targets]))


@torch.no_grad()
def reference_nll(model, tokens: np.ndarray) -> np.ndarray:
    """NLL by position of the plain forward, no adapters, each document's chunk c scored alone in its
    own window: inputs [max(0, e - SEQ), e) of the document, e = min((c + 1) * CHUNK, its targets)."""
    nll = np.full(usable_targets(len(tokens), SEQ) + 1, np.nan)
    model.eval()
    for start, end in documents(tokens):
        doc = torch.as_tensor(tokens[start : end + 1])
        for first in range(0, end - start, CHUNK):
            last = min(first + CHUNK, end - start)
            lo = max(0, last - SEQ)
            logits = model(doc[lo:last][None])[0]
            row = torch.nn.functional.cross_entropy(logits, doc[lo + 1 : last + 1], reduction="none")
            nll[start + 1 + first : start + 1 + last] = row[first - lo :].numpy()
    return nll


def perturbed(tokens: np.ndarray, position: int) -> np.ndarray:
    changed = tokens.copy()
    changed[position] = (changed[position] + 7) % (VOCAB - 2) + 2
    return changed


def document_of(tokens: np.ndarray, position: int) -> tuple[int, int]:
    return next((s, e) for s, e in documents(tokens) if s < position <= e)


# The document plan (H.3.1)


def test_documents_tile_the_targets_and_batches_go_longest_first():
    tokens = stream()
    targets = usable_targets(len(tokens), SEQ)
    docs = find_documents(torch.as_tensor(tokens), targets, BOS)
    assert [(d.start, d.start + d.targets) for d in docs] == documents(tokens)
    assert sum(d.targets for d in docs) == targets and all(tokens[d.start] == BOS for d in docs)
    # A stream that starts inside a document: its first document starts at 0.
    assert find_documents(torch.as_tensor(tokens[5:]), targets - 5, BOS)[0] == Document(0, docs[1].start - 5)
    batches = plan_batches(docs, 4)
    assert sorted(len(b.docs) for b in batches) == [len(docs) % 4 or 4] + [4] * (math.ceil(len(docs) / 4) - 1)
    assert [b.longest for b in batches] == sorted((b.longest for b in batches), reverse=True)
    ascending = sorted(batches, key=lambda b: b.index)
    lengths = [d.targets for b in ascending for d in b.docs]
    assert lengths == sorted(lengths) and sorted(lengths) == sorted(d.targets for d in docs)
    assert {d for b in batches for d in b.docs} == set(docs)
    shares = [rank_batches(batches, rank, 3) for rank in range(3)]
    assert sorted((b.index for share in shares for b in share)) == list(range(len(batches)))


# Causality through adaptation (H.1.4, H.3.3)


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_token_changes_no_score_committed_before_it(warm_start):
    tokens = stream()
    model = tiny_gpt()
    before, _ = run_lora(model, tokens, warm_start_a=warm_start)
    order = by_position(before, "order")
    # The last-processed document with 5 chunks or more: much was committed before it.
    start, end = max((d for d in documents(tokens) if d[1] - d[0] > 4 * CHUNK), key=lambda d: order[d[0] + 1])
    p = start + 2 * CHUNK + 3  # inside the document's chunk 2: its later chunks train on data holding it
    after, _ = run_lora(model, perturbed(tokens, p), warm_start_a=warm_start)
    positions = np.arange(len(order))
    earlier = np.flatnonzero((order < order[p]) | ((positions > start) & (positions < p)))
    assert len(earlier) > len(order) // 3
    nll_before, nll_after = by_position(before, "nll"), by_position(after, "nll")
    np.testing.assert_allclose(nll_after[earlier], nll_before[earlier], rtol=0, atol=1e-6)
    # The change does reach the document's chunks scored after an update that trained on it.
    later = np.arange(start + 1 + 4 * CHUNK, end + 1)
    assert np.abs(nll_after[later] - nll_before[later]).max() > 1e-4


# Coverage and bytes (H.1.1-3)


def test_every_target_is_scored_once_and_bytes_add_up():
    tokens = stream()
    receipts, sums = run_lora(tiny_gpt(), tokens, warm_start_a=True)
    targets = usable_targets(len(tokens), SEQ)
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, targets + 1))
    assert sums.tokens == targets
    expected = int(token_bytes(byte_table(), tokens[: targets + 1])[1:].sum())
    assert int(receipts["bytes"].sum()) == sums.bytes == expected
    recomputed = receipts["nll"].double().sum().item() / (math.log(2) * expected)
    assert abs(recomputed - sums.bpb) <= 1e-9


def test_bytes_come_from_the_sidecar_when_given():
    tokens = stream()
    sidecar = np.random.default_rng(3).integers(0, 6, size=len(tokens))
    receipts, sums = run_lora(tiny_gpt(), tokens, sidecar=sidecar)
    assert np.array_equal(by_position(receipts, "bytes")[1:], sidecar[1 : sums.tokens + 1])


# Zero learning is plain scoring in the documents' windows (H.1.5), and the first chunk is the base's (H.3.5)


def test_zero_learning_equals_plain_scoring_of_the_document_windows():
    tokens = stream()
    model = tiny_gpt()
    reference = reference_nll(model, tokens)[1:]
    still, still_sums = run_lora(model, tokens, lr=0.0, warm_start_a=True)
    np.testing.assert_allclose(by_position(still, "nll")[1:], reference, rtol=0, atol=TOLERANCE)
    assert abs(still_sums.nll - reference.sum()) < 1e-3
    learning, _ = run_lora(model, tokens)  # and learning does change the scores
    assert np.abs(by_position(learning, "nll")[1:] - reference).max() > 1e-3


def test_first_chunk_of_every_document_is_the_base_models():
    tokens = stream()
    model = tiny_gpt()
    reference = reference_nll(model, tokens)
    receipts, _ = run_lora(model, tokens, warm_start_a=True)
    first_chunks = np.concatenate([np.arange(s + 1, min(s + CHUNK, e) + 1) for s, e in documents(tokens)])
    np.testing.assert_allclose(by_position(receipts, "nll")[first_chunks], reference[first_chunks], rtol=0,
                               atol=TOLERANCE)


# Updates use committed targets only; a document's last chunk trains nothing (H.3.4)


def test_updates_use_only_committed_targets_and_never_a_last_chunk(monkeypatch):
    tokens = stream()
    steps = spy_on_steps(monkeypatch)
    receipts, _ = run_lora(tiny_gpt(), tokens)
    order = by_position(receipts, "order")
    docs = documents(tokens)
    updates = list(zip(*(receipts[k].tolist() for k in ("update_after_order", "update_first_position",
                                                        "update_last_position"))))
    for after, first, last in updates:
        start, end = document_of(tokens, first)
        assert start < first <= last <= end, "an update spans two documents"
        assert order[first : last + 1].max() <= after, "an update used an unscored target"
        assert last - first + 1 == CHUNK and (first - start - 1) % CHUNK == 0, "an update is not one whole chunk"
        assert last < start + 1 + (math.ceil((end - start) / CHUNK) - 1) * CHUNK, "an update used a last chunk"
    assert len(updates) == sum(math.ceil((e - s) / CHUNK) - 1 for s, e in docs)
    # The gradients say the same: only documents with a chunk still to come get any.
    assert steps
    for trained, b_grads, a_grads in steps:
        assert torch.equal(b_grads > 0, trained) and not a_grads[~trained].any()


def spy_on_steps(monkeypatch) -> list:
    """After each AdamW step: which rows the step's chunk trains, and each row's |grad| of B and A."""
    steps, last_rows = [], []
    chunk_rows, step = lora_mode.chunk_rows, BatchAdapters.step

    def rows_spy(*args, **kwargs):
        last_rows[:] = [chunk_rows(*args, **kwargs)]
        return last_rows[0]

    def step_spy(self, loss):
        step(self, loss)
        b_grads = sum(b.grad.abs().sum(dim=(1, 2)) for b in self.lora.b)
        steps.append((last_rows[0].trained, b_grads, self.lora.a.grad.abs().sum(dim=(1, 2, 3))))

    monkeypatch.setattr(lora_mode, "chunk_rows", rows_spy)
    monkeypatch.setattr(BatchAdapters, "step", step_spy)
    return steps


# Documents are independent without warm start (H.3.2, H.3.6)


def test_a_documents_scores_depend_on_its_own_tokens_alone():
    """Other documents in its batch, their order, the batch size and other documents' tokens: none
    changes a document's NLLs (warm start off)."""
    tokens = stream()
    model = tiny_gpt()
    reference = by_position(run_lora(model, tokens)[0], "nll")
    for batch_docs in (1, 3, 16):
        other = by_position(run_lora(model, tokens, batch_docs=batch_docs)[0], "nll")
        np.testing.assert_allclose(other, reference, rtol=0, atol=TOLERANCE)
    start, end = documents(tokens)[5]
    changed = by_position(run_lora(model, perturbed(tokens, start + 3))[0], "nll")
    outside = np.r_[1 : start + 1, end + 1 : len(reference)]
    np.testing.assert_allclose(changed[outside], reference[outside], rtol=0, atol=TOLERANCE)
    assert np.abs(changed[start + 4 : end + 1] - reference[start + 4 : end + 1]).max() > 1e-4


def test_batch_order_and_slots_do_not_matter():
    tokens = stream()
    model = tiny_gpt()
    docs = find_documents(torch.as_tensor(tokens), usable_targets(len(tokens), SEQ), BOS)[2:6]
    forward = score_batch_alone(model, tokens, docs)
    backward = score_batch_alone(model, tokens, docs[::-1])
    for position, nll in forward.items():
        assert abs(backward[position] - nll) <= TOLERANCE


def score_batch_alone(model, tokens, docs) -> dict[int, float]:
    """NLL by position of one batch of ``docs`` through ``score_batch`` itself."""
    config = TTTConfig.from_json(FAST_LORA)
    receipts = TokenReceipts()
    run = TTTPass(WindowScorer(tokens, byte_table(), ScoringSetup(SEQ, SEQ, 4)), receipts=receipts)
    adapters = BatchAdapters(model, config, "cpu")
    adapters.start_batch(docs)
    with requires_grad(model, False):
        lora_mode.score_batch(model, run, config, docs, adapters, BpbSums())
    saved = receipts.tensors()
    return dict(zip(saved["position"].tolist(), saved["nll"].tolist()))


# Resets between batches (H.3.7)


@pytest.mark.parametrize("warm_start", [False, True])
def test_each_batch_starts_from_zero_b_and_a_fresh_optimizer(monkeypatch, warm_start):
    resets = []
    reset = BatchAdapters.reset

    def reset_spy(self, seeds):
        previous = None if self.lora is None else (self.lora, self.lora.a.detach().clone())
        reset(self, seeds)
        resets.append((previous, self.lora, self.lora.a.detach().clone(), seeds))
        assert all(not b.any() for b in self.lora.b) and not self.optimizer.state

    monkeypatch.setattr(BatchAdapters, "reset", reset_spy)
    run_lora(tiny_gpt(), stream(), batch_docs=4, warm_start_a=warm_start)
    assert [len(seeds) for *_, seeds in resets] == [1, 4, 4, 4, 4]  # 17 documents: the longest alone, first
    for previous, lora, a, seeds in resets:
        drawn = torch.stack([torch.empty_like(a[0]).uniform_(-lora.bound, lora.bound,
                                                             generator=torch.Generator().manual_seed(s))
                             for s in seeds])
        new_adapters = previous is None or previous[0].batch != len(seeds)
        if new_adapters or not warm_start:  # A drawn from the documents' seeds
            assert torch.equal(a, drawn) and (new_adapters or not torch.equal(a, previous[1]))
        else:  # warm start: A kept from the batch before, as it learned
            assert lora is previous[0] and torch.equal(a, previous[1]) and not torch.equal(a, drawn)


# Rows (H.3.8)


def test_no_row_holds_two_documents_or_more_than_a_window(monkeypatch):
    model = tiny_gpt()
    rows = []
    trunk = model.hidden  # every scoring forward runs it (GPT.nll: the trunk, then the fused head)

    def trunk_spy(inputs, *args, **kwargs):
        rows.append(inputs.clone())
        return trunk(inputs, *args, **kwargs)

    monkeypatch.setattr(model, "hidden", trunk_spy)
    receipts = TokenReceipts()
    score_with_ttt(model, stream(), byte_table(), ScoringSetup(SEQ, SEQ), config=FAST_LORA, receipts=receipts)
    assert rows and all(batch.size(1) <= SEQ for batch in rows)
    for row in torch.cat([torch.nn.functional.pad(b, (0, SEQ - b.size(1))) for b in rows]):
        real = row[row != lora_mode.PAD_TOKEN]
        assert not (real[1:] == BOS).any(), "a row runs into the next document"
        assert torch.equal(row[: len(real)], real), "padding inside a row"
    saved = receipts.tensors()
    docs = np.searchsorted([s for s, _ in documents(stream())], saved["position"].numpy() - 1, side="right")
    per_step_and_doc = np.unique(np.stack([saved["order"].numpy(), docs]), axis=1, return_counts=True)[1]
    assert per_step_and_doc.max() <= CHUNK


# Ranks (C.1)


def test_two_ranks_score_each_batch_exactly_once_and_as_one_rank_does():
    tokens = stream()
    model = tiny_gpt()
    whole, whole_sums = run_lora(model, tokens)
    shares = [run_lora(model, tokens, rank=rank, world_size=2) for rank in (0, 1)]
    positions = [set(share["position"].tolist()) for share, _ in shares]
    assert not positions[0] & positions[1] and positions[0] | positions[1] == set(whole["position"].tolist())
    assert shares[0][1].tokens and shares[1][1].tokens
    merged = shares[0][1].merge(shares[1][1])
    assert (merged.tokens, merged.bytes) == (whole_sums.tokens, whole_sums.bytes)
    nll = by_position(whole, "nll")
    for share, _ in shares:
        np.testing.assert_allclose(by_position(share, "nll")[share["position"].numpy()],
                                   nll[share["position"].numpy()], rtol=0, atol=TOLERANCE)


# Compile warm-up (section E)


def test_warm_up_reads_no_val_token_and_leaves_the_model_bitwise_unchanged():
    model = tiny_gpt()
    model.blocks[0].mlp.fc.weight.requires_grad_(False)  # flags come back as they were
    state = copy.deepcopy(model.state_dict())
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    scorer = WindowScorer(stream(), byte_table(), ScoringSetup(SEQ, SEQ, 4))
    scorer.stream = scorer.side = None  # any read of the val stream fails
    config = TTTConfig.from_json(FAST_LORA)
    lora_mode.warm_up(model, TTTPass(scorer), config)
    after = model.state_dict()
    assert all(torch.equal(after[name], value) for name, value in state.items())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


# The stage and the CLI


def test_cli_lora_with_receipts_and_comparison(pack_dir, tmp_path):
    result = golf("eval", pack_dir, "--ttt", "lora", "--compare-no-ttt", "--stride", "16",
                  "--set", "eval_tokens=4096", "--set", "ttt.lora.lr=0.001",
                  "--token-nll", tmp_path / "nll.safetensors", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert manifest["config"]["ttt"]["mode"] == "lora" and metrics["ttt_mode"] == "lora"
    assert metrics["mode"] == "document chunks"  # the stride plays no part in its windows
    assert f"val_bpb_no_ttt:{metrics['val_bpb_no_ttt']:.8f}" in result.stdout
    assert metrics["val_bpb"] != metrics["val_bpb_no_ttt"]
    receipts = load_file(tmp_path / "nll.safetensors")
    assert metrics["token_nll_rows"] == metrics["tokens_scored"] == len(receipts["position"])
    assert len(receipts["update_after_order"]) > 0
    assert manifest["ledger"]["adapt"]["seconds"] > 0 and manifest["ledger"]["score"]["seconds"] > 0


def test_compare_no_ttt_scores_the_document_windows_and_skips_the_stream_comparison():
    """--compare-no-ttt must score lora's own windows (the documents') with learning off, and a
    document-window score must never be held against quantize's stream-window score (it would
    differ, and fail the stage, while nothing is wrong)."""
    from stages.evaluate.stage import _no_ttt_pass, _stream_bpb_without_adaptation

    calls = []

    class Shipped:
        @staticmethod
        def score_with_ttt(*, config):
            calls.append(config)

    score = lambda label, score_stream: score_stream()  # noqa: E731
    for mode in ("lora", "phased"):
        _no_ttt_pass(score, None, Shipped, TTTConfig(mode=mode, lora=LoRAConfig(lr=0.01)))
        assert calls[-1]["mode"] == "lora" and calls[-1]["lora"]["lr"] == 0.0
        assert _stream_bpb_without_adaptation(mode, 2.0, {"val_bpb_no_ttt": 2.1}) is None
    assert _stream_bpb_without_adaptation("chunk-sgd", 2.0, {"val_bpb_no_ttt": 2.1}) == 2.1
    assert _stream_bpb_without_adaptation("none", 2.0, {}) == 2.0
