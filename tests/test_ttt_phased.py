"""Phased TTT: global SGD phases of the base weights between batches of document-LoRA scoring
(docs/TTT_CASEOPS.md sections D and H.4).

The schedule tests need no model; the global SGD tests run one phase on a packed stream of
synthetic documents with the tiny GPT of test_ttt; the mode's tests score that stream (legality
from the receipts, causality, coverage, zero learning, two gloo ranks); the CLI test runs the
conftest pipeline.
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from stages.scoring.bpb import token_bytes
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts
from stages.scoring.scorer import WindowScorer
from stages.scoring.windows import usable_targets
from stages.evaluate.ttt import phased, score_with_ttt
from stages.evaluate.ttt.common import TTTPass, rank_share
from stages.evaluate.ttt.config import PhasedConfig, TTTConfig
from stages.evaluate.ttt.global_sgd import (ScoredDocument, phase_boundaries, run_global_phase,
                                            schedule_phases, train_global_phase, training_documents,
                                            training_stream)

from .conftest import golf, sets
from .test_ttt import (BATCH_WINDOWS, BOS, SEQ, STRIDE, VOCAB, by_position, byte_table, merged, synthetic_docs,
                       tiny_gpt)

# Two steps per trained chunk of 4 sequences (3, then 1), two epochs.
GLOBAL = TTTConfig(mode="phased", phased=PhasedConfig(global_lr=0.05, global_momentum=0.9, global_epochs=2,
                                                      global_chunk_tokens=4 * SEQ, global_batch_seqs=3,
                                                      global_grad_clip=1.0, global_doc_mask=True))


def globally(**changes) -> TTTConfig:
    """GLOBAL with ``changes`` to its phased section."""
    return replace(GLOBAL, phased=replace(GLOBAL.phased, **changes))


def documents_of(stream: np.ndarray, batch_docs: int = 4) -> list[ScoredDocument]:
    """The stream's documents (BOS through the next BOS), in stream order, ``batch_docs`` a batch."""
    bos = np.flatnonzero(stream[:-1] == BOS).tolist()
    ends = [*bos[1:], len(stream) - 1]
    return [ScoredDocument(i // batch_docs, i % batch_docs, start, end - start + 1)
            for i, (start, end) in enumerate(zip(bos, ends))]


def ttt_pass(stream: np.ndarray, receipts: TokenReceipts | None = None, rank: int = 0, world_size: int = 1,
             may_adapt=lambda: True) -> TTTPass:
    scorer = WindowScorer(stream, byte_table(), ScoringSetup(SEQ, STRIDE, 4, rank=rank, world_size=world_size))
    return TTTPass(scorer, receipts, may_adapt=may_adapt)


def packed(stream: np.ndarray, count: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` documents of ``stream`` packed, and their stream positions."""
    return training_stream(torch.as_tensor(stream), documents_of(stream)[:count])


def trained_weights(model, stream, config=GLOBAL, count: int = 12, **pass_args) -> dict[str, torch.Tensor]:
    train_global_phase(model, ttt_pass(stream, **pass_args), config, *packed(stream, count))
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# Boundaries and the schedule


def test_boundaries_are_the_records_floors():
    assert phase_boundaries(2500, 3) == [833, 1666, 2500]  # top
    assert phase_boundaries(2000, 3) == [666, 1333, 2000]  # #1626 ... #1851
    assert phase_boundaries(2000, 1) == [2000]  # #1610
    assert phase_boundaries(2, 3) == [0, 1, 2]


def test_a_phase_runs_after_the_first_batch_that_reaches_its_boundary():
    # Top's plan: the 16 longest documents first, then batches of 64 (longest first).
    sizes = [16] + [64] * 781
    schedule = schedule_phases(sizes, phase_boundaries(2500, 3))
    assert schedule.after_batch == (13, 26, 39)  # 16 + 13 x 64 = 848 >= 833; 1680 >= 1666; 2512 >= 2500
    assert schedule.phases_after(13) == [0] and schedule.phases_after(12) == [] and schedule.skipped == []


def test_phases_skip_what_nothing_would_score_and_may_share_a_batch():
    sizes = [4, 4, 4]
    # boundary 0 trains on nothing; 12 is reached only after the last batch; 20 never.
    assert schedule_phases(sizes, [0, 5, 12, 20]).after_batch == (None, 1, None, None)
    assert schedule_phases(sizes, [0, 5, 12, 20]).skipped == [0, 2, 3]
    both = schedule_phases(sizes, [1, 3, 8])  # the first batch completes two boundaries at once
    assert both.after_batch == (0, 0, 1) and both.phases_after(0) == [0, 1]


def test_training_set_is_the_first_documents_by_batch_and_position_whoever_scored_them():
    docs = documents_of(synthetic_docs())
    gathered = docs[:]
    random.Random(0).shuffle(gathered)  # as all_gather_object from ranks that scored in any order
    assert training_documents(gathered, 7) == docs[:7]
    assert training_documents(gathered, 10**6) == docs


def test_the_training_stream_repeats_the_bos_shared_at_each_join():
    stream = synthetic_docs()
    docs = documents_of(stream)[:3]
    tokens, positions = training_stream(torch.as_tensor(stream), docs)
    assert len(tokens) == sum(doc.length for doc in docs)
    assert torch.equal(tokens, torch.as_tensor(stream)[positions])
    joins = np.cumsum([doc.length for doc in docs])[:-1]
    assert all(tokens[j - 1] == tokens[j] == BOS for j in joins)


def test_rank_slices_are_contiguous_and_cover_the_step():
    step = list(range(7))
    slices = [rank_share(step, rank, 3) for rank in range(3)]
    assert slices == [[0, 1], [2, 3], [4, 5, 6]]
    assert rank_share([5], 0, 2) == []


# Global SGD on the packed documents


class LossSpy:
    """Wraps ``model.loss``: the packed-stream rows each training call saw, via their tokens."""

    def __init__(self, model, tokens: torch.Tensor):
        self.loss, self.tokens, self.rows = model.loss, tokens, []
        model.loss = self

    def __call__(self, inputs, targets, *args, **kwargs):
        for row in torch.cat([inputs, targets[:, -1:]], 1):
            self.rows.append(self.locate(row))
        return self.loss(inputs, targets, *args, **kwargs)

    def locate(self, row: torch.Tensor) -> int:
        starts = torch.nonzero((self.tokens.unfold(0, len(row), 1) == row).all(1)).flatten()
        assert len(starts) == 1
        return int(starts[0])


def test_every_chunk_but_the_last_is_trained_epochs_times():
    stream = synthetic_docs()
    tokens, positions = packed(stream)
    model = tiny_gpt()
    spy = LossSpy(model, tokens)
    receipts = TokenReceipts()
    train_global_phase(model, ttt_pass(stream, receipts), GLOBAL, tokens, positions)
    chunk = GLOBAL.phased.global_chunk_tokens
    num_chunks = math.ceil((len(tokens) - 1) / chunk)
    assert num_chunks >= 3
    trained = [s for c in range(num_chunks - 1)
               for s in range(c * chunk, min((c + 1) * chunk, len(tokens) - 1) - SEQ + 1, SEQ)]
    assert sorted(spy.rows) == sorted(trained * GLOBAL.phased.global_epochs)
    assert max(spy.rows) + SEQ <= (num_chunks - 1) * chunk  # no target of the last chunk
    # The update receipts name the stream targets trained on: every pair of the rows but the joins'
    # (BOS after BOS: no pair of the stream).
    noted = [p for _, first, last in receipts.updates for p in range(first, last + 1)]
    pairs = [(positions[s + j - 1], positions[s + j]) for s in trained for j in range(1, SEQ + 1)]
    assert sorted(noted) == sorted([int(t) for i, t in pairs if t == i + 1] * GLOBAL.phased.global_epochs)
    assert len(noted) < len(pairs) * GLOBAL.phased.global_epochs  # the rows do cross joins


def test_zero_learning_rate_or_epochs_leave_every_weight_bitwise_unchanged():
    stream = synthetic_docs()
    model = tiny_gpt()
    start = copy.deepcopy(model.state_dict())
    for off in ({"global_lr": 0.0}, {"global_epochs": 0}):
        after = trained_weights(model, stream, globally(**off))
        assert all(torch.equal(after[k], v) for k, v in start.items())
    learned = trained_weights(model, stream)
    assert not torch.equal(learned["blocks.0.mlp.fc.weight"], start["blocks.0.mlp.fc.weight"])
    assert not torch.equal(learned["tok_emb.weight"], start["tok_emb.weight"])  # the tied head trains too


def test_each_phase_starts_a_fresh_optimizer():
    stream = synthetic_docs()
    carried = tiny_gpt()
    trained_weights(carried, stream, count=6)
    fresh = copy.deepcopy(carried)  # the same weights in new tensors: nothing an optimizer could remember
    second = trained_weights(carried, stream)
    assert all(torch.equal(second[k], v) for k, v in trained_weights(fresh, stream).items())


def test_requires_grad_is_restored_and_the_model_left_in_eval_mode():
    model = tiny_gpt()
    model.blocks[0].requires_grad_(False)
    trained_weights(model, synthetic_docs())
    assert [p.requires_grad for p in model.blocks[0].parameters()] == [False] * len(list(model.blocks[0].parameters()))
    assert all(p.requires_grad for p in model.blocks[1].parameters()) and not model.training


def one_sgd_step_by_documents(model, row: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
    """One plain SGD step on ``row`` with each BOS-led segment run as its own sequence."""
    inputs, targets = row[:-1], row[1:]
    cuts = torch.nonzero(inputs == BOS).flatten().tolist()
    segments = zip([0, *cuts], [*cuts, len(inputs)])
    total = sum(F.cross_entropy(model(inputs[None, a:b])[0].float(), targets[a:b], reduction="sum")
                for a, b in segments if b > a)
    (total / len(targets)).backward()
    with torch.no_grad():
        return {name: p - lr * p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("doc_mask", [True, False])
def test_doc_masked_training_equals_training_on_each_document_alone(doc_mask):
    """H.4.7: with global_doc_mask no attention crosses a BOS of the packed row (the model's own
    config has doc_mask off: the phase's switch decides)."""
    stream = synthetic_docs()
    tokens, positions = packed(stream)
    one_step = globally(global_chunk_tokens=SEQ, global_batch_seqs=1, global_epochs=1, global_momentum=0.0,
                        global_grad_clip=0.0, global_doc_mask=doc_mask)
    first = documents_of(stream)[0].length - 10  # a row from inside the first document across the join
    tokens, positions = tokens[first : first + 2 * SEQ + 1], positions[first : first + 2 * SEQ + 1]  # two chunks:
    assert (tokens[1 : SEQ + 1] == BOS).sum() >= 2  # only the first trains; it holds the doubled BOS
    model = tiny_gpt()
    expected = one_sgd_step_by_documents(copy.deepcopy(model), tokens[: SEQ + 1], one_step.phased.global_lr)
    train_global_phase(model, ttt_pass(stream), one_step, tokens, positions)
    close = all(torch.allclose(p, expected[name], atol=1e-6, rtol=0) for name, p in model.named_parameters())
    assert close == doc_mask


def test_a_phase_past_the_budget_trains_nothing():
    stream = synthetic_docs()
    model = tiny_gpt()
    start = copy.deepcopy(model.state_dict())
    run = ttt_pass(stream, may_adapt=lambda: False)
    assert run_global_phase(model, run, GLOBAL, documents_of(stream), 12) is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
    assert run_global_phase(model, ttt_pass(stream), GLOBAL, documents_of(stream), 12) == documents_of(stream)[:12]


# The phased mode: LoRA scoring of the batch plan with the phases in their places


# The synthetic stream's plan: batches (ascending-length index: sizes) 4: 4, 5: 1 (the longest
# document, alone), 3: 4, 2: 4, 1: 4, 0: 4 in processing order; phases after the first batch
# (boundary 4) and the third (9 documents scored >= 8), training two-sequence chunks.
PHASED = {"mode": "phased", "lora": {"rank": 4, "chunk": 16, "batch_docs": 4, "lr": 0.01},
          "phased": {"docs": 8, "phases": 2, "global_lr": 0.05, "global_chunk_tokens": 2 * SEQ, "global_batch_seqs": 2}}


class PhaseSpy:
    """Wraps phased's ``run_global_phase``: per phase, the scoring steps committed before it and the
    documents it trained on."""

    def __init__(self, monkeypatch, receipts: TokenReceipts):
        self.run_phase, self.receipts, self.phases = phased.run_global_phase, receipts, []
        monkeypatch.setattr(phased, "run_global_phase", self)

    def __call__(self, *args):
        steps = self.receipts.steps
        documents = self.run_phase(*args)
        self.phases.append((steps, documents))
        return documents


def phased_receipts(model, stream, ttt: dict | None = None) -> tuple[TokenReceipts, object]:
    """A ``ttt`` pass (default PHASED) over ``stream``: its receipts and sums."""
    receipts = TokenReceipts()
    sums = score_with_ttt(model, stream, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS), config=ttt or PHASED,
                          receipts=receipts)
    return receipts, sums


@pytest.fixture(scope="module")
def phased_run():
    """One phased pass over the synthetic stream: (receipts, saved receipts, sums, phases, facts)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        receipts = TokenReceipts()
        spy = PhaseSpy(monkeypatch, receipts)
        facts = {}
        sums = score_with_ttt(tiny_gpt(), synthetic_docs(), byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                              config=PHASED,
                              receipts=receipts, on_fact=facts.__setitem__)
    return receipts.tensors(), sums, spy.phases, facts


def test_phases_train_only_on_documents_scored_before_them(phased_run):
    """H.4.1-H.4.3: phase k trains on boundary_k documents, each wholly scored before the phase;
    no document scored after a phase is in its training set (nor the suffix in any); every
    document is scored under one base version."""
    saved, _, phases, facts = phased_run
    assert facts["ttt_global_phases"] == [{"docs": 4, "after_batch": 0, "trained": True},
                                          {"docs": 8, "after_batch": 2, "trained": True}]
    order = by_position(saved, "order")
    assert [len(documents) for _, documents in phases] == phase_boundaries(8, 2)
    # Of the 9 scored by phase 2, the 8 first by (batch, position): batch 5's longest document is left out.
    assert [doc.batch for doc in phases[1][1]] == [3] * 4 + [4] * 4
    for steps, documents in phases:
        trained = [p for doc in documents for p in range(doc.start + 1, doc.start + doc.length)]
        assert order[trained].max() < steps  # committed before the phase ...
        assert (order[np.isfinite(order)] >= steps).any()  # ... and scoring goes on after it
    # A document's targets all lie between the same two phases.
    cuts = [steps for steps, _ in phases]
    for doc in documents_of(synthetic_docs()[: usable_targets(len(synthetic_docs()), SEQ) + 1]):
        versions = np.searchsorted(cuts, order[doc.start + 1 : doc.start + doc.length], side="right")
        assert len(set(versions.tolist())) == 1
    # Every update, LoRA or global, trained on targets already committed.
    for after, first, last in zip(*(saved[k].tolist() for k in ("update_after_order", "update_first_position",
                                                                  "update_last_position"))):
        assert order[first : last + 1].max() <= after


def test_phased_scores_every_target_once_and_the_receipts_add_up(phased_run):
    saved, sums, _, _ = phased_run
    stream, table = synthetic_docs(), byte_table()
    targets = usable_targets(len(stream), SEQ)
    assert np.array_equal(np.sort(saved["position"].numpy()), np.arange(1, targets + 1))
    assert sums.tokens == targets
    assert int(saved["bytes"].sum()) == sums.bytes == int(token_bytes(table, stream[: targets + 1])[1:].sum())
    assert abs(saved["nll"].double().sum().item() / (math.log(2) * sums.bytes) - sums.bpb) <= 1e-9
    assert torch.all(saved["order"][1:] >= saved["order"][:-1])  # commit order runs on across the phases


def test_a_token_changes_no_score_committed_before_it_through_both_adaptations(phased_run):
    saved, _, phases, _ = phased_run
    stream = synthetic_docs()
    doc = phases[0][1][0]  # the first document phase 1 trains on (so not in its untrained last chunk)
    p = doc.start + doc.length // 2
    changed = stream.copy()
    changed[p] = (changed[p] + 7) % (VOCAB - 2) + 2
    after, _ = phased_receipts(tiny_gpt(), changed)
    after = after.tensors()
    order = by_position(saved, "order")
    nll_before, nll_after = by_position(saved, "nll"), by_position(after, "nll")
    earlier = np.flatnonzero(order < order[p])
    np.testing.assert_allclose(nll_after[earlier], nll_before[earlier], rtol=0, atol=1e-6)
    # The change reaches the documents scored after the phases that trained on it.
    later = np.flatnonzero(order >= phases[-1][0])
    assert np.abs(nll_after[later] - nll_before[later]).max() > 1e-4


@pytest.mark.parametrize("off", [{"lora": {"lr": 0.0}, "phased": {"global_lr": 0.0}},
                                 {"phased": {"global_lr": 0.0}, "lora": {"warm_start_a": False}}])
def test_without_global_learning_phased_is_lora_exactly(off):
    """With global_lr 0 the phases change nothing; the adapters' rebuild after a phase changes
    nothing either when no A is learned (lora.lr 0: B stays 0) or none carries over (no warm start)."""
    stream = synthetic_docs()
    model = tiny_gpt()
    lora, lora_sums = phased_receipts(copy.deepcopy(model), stream, merged(PHASED, **off, mode="lora"))
    ours, our_sums = phased_receipts(copy.deepcopy(model), stream, merged(PHASED, **off))
    lora, ours = lora.tensors(), ours.tensors()
    assert torch.equal(lora["position"], ours["position"]) and torch.equal(lora["order"], ours["order"])
    assert torch.equal(lora["nll"], ours["nll"]) and our_sums.bpb == lora_sums.bpb
    learning, _ = phased_receipts(copy.deepcopy(model), stream,
                                  merged(merged(PHASED, **off), phased={"global_lr": 0.05}))
    assert not torch.equal(learning.tensors()["nll"], ours["nll"])


def test_warm_up_leaves_the_base_bitwise_unchanged_and_without_gradients():
    model = tiny_gpt()
    model.blocks[0].requires_grad_(False)
    start = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    config = TTTConfig.from_json(PHASED)
    phased.warm_up(model, ttt_pass(synthetic_docs()), config)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
    assert all(p.grad is None for p in model.parameters()) and [p.requires_grad for p in model.parameters()] == flags


# Ranks


def checksums(model) -> list[float]:
    return [float(p.double().sum()) for p in model.parameters()]


def phased_worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    """One rank of a phased pass: its share of the batches, the phases with every rank; saves its
    receipts and the base's checksum after each phase."""
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        model, receipts, after_phases = tiny_gpt(), TokenReceipts(), []
        run_phase = phased.run_global_phase
        phased.run_global_phase = lambda m, *a: (run_phase(m, *a), after_phases.append(checksums(m)))[0]
        setup = ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS, rank=rank, world_size=world)
        score_with_ttt(model, synthetic_docs(), byte_table(), setup, config=RANKED, receipts=receipts)
        torch.save((receipts.tensors(), after_phases, model.state_dict()), f"{out_path}.{rank}")
        dist.barrier()  # both done before either tears gloo down
    finally:
        dist.destroy_process_group()


# Documents independent of the rank that scores them (no warm start); steps of 3 sequences split
# 1 + 2 over two ranks, steps of 1 split 0 + 1.
RANKED = merged(PHASED, lora={"warm_start_a": False}, phased={"global_chunk_tokens": 4 * SEQ, "global_batch_seqs": 3})


def test_two_ranks_score_like_one_and_keep_identical_bases(tmp_path):
    """H.4.4 and world-size invariance of the schedule, the training sets and the scores."""
    world = 2
    mp.spawn(phased_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=world)
    ranks = [torch.load(tmp_path / f"out.{rank}") for rank in range(world)]
    (receipts0, phases0, weights0), (receipts1, phases1, weights1) = ranks
    assert len(phases0) == 2 and phases0 == phases1  # bitwise-identical bases after each phase
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    model = tiny_gpt()
    single, _ = phased_receipts(model, synthetic_docs(), RANKED)
    single = single.tensors()
    nll = np.full(len(single["nll"]) + 1, np.nan)
    for receipts in (receipts0, receipts1):
        assert np.isnan(nll[receipts["position"].numpy()]).all()  # each target on one rank only
        nll[receipts["position"].numpy()] = receipts["nll"].double().numpy()
    np.testing.assert_allclose(nll[1:], by_position(single, "nll")[1:], rtol=0, atol=1e-5)
    assert all(torch.allclose(weights0[k], v, atol=1e-6, rtol=0) for k, v in model.state_dict().items())


def test_adapters_are_rebuilt_after_each_phase():
    """With warm start, a batch after a phase draws fresh A (the old ones were learned on the old
    base): even with global_lr 0 the scores part from lora's at the first batch that would have
    inherited A across a phase (after phase 2: batch 2 follows batch 3, both of four documents)."""
    stream = synthetic_docs()
    model = tiny_gpt()
    receipts = TokenReceipts()
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = PhaseSpy(monkeypatch, receipts)
        score_with_ttt(copy.deepcopy(model), stream, byte_table(), ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS),
                       config=merged(PHASED, phased={"global_lr": 0.0}), receipts=receipts)
    lora, _ = phased_receipts(copy.deepcopy(model), stream, merged(PHASED, mode="lora"))
    ours, lora = receipts.tensors(), lora.tensors()
    before = ours["order"] < spy.phases[1][0]
    assert torch.equal(ours["nll"][before], lora["nll"][before])
    assert not torch.equal(ours["nll"][~before], lora["nll"][~before])


# The stage and the command line


def test_cli_phased_with_receipts_ledger_and_phases(pack_dir, tmp_path):
    # 4,096 val tokens hold three documents (news articles): a batch each, a phase after each of the first two.
    settings = ["eval_tokens=4096", "ttt.lora.batch_docs=1", "ttt.lora.rank=8", "ttt.lora.chunk=64", "ttt.phased.docs=2",
                "ttt.phased.phases=2", "ttt.phased.global_chunk_tokens=256", "ttt.phased.global_batch_seqs=4"]
    result = golf("eval", pack_dir, "--ttt", "phased", "--compare-no-ttt", *sets(settings),
                  "--token-nll", tmp_path / "nll.safetensors", "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    metrics, ledger = manifest["metrics"], manifest["ledger"]
    assert manifest["config"]["ttt"]["mode"] == "phased" and metrics["ttt_mode"] == "phased"
    assert metrics["ttt_global_phases"] == [{"docs": 1, "after_batch": 0, "trained": True},
                                            {"docs": 2, "after_batch": 1, "trained": True}]
    assert ledger["global_sgd"]["counts_toward"] == "eval" and ledger["global_sgd"]["seconds"] > 0
    receipts = load_file(tmp_path / "nll.safetensors")
    recomputed = receipts["nll"].double().sum().item() / (math.log(2) * receipts["bytes"].double().sum().item())
    assert abs(recomputed - metrics["val_bpb"]) <= 1e-9
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, metrics["tokens_scored"] + 1))
    assert metrics["val_bpb"] != metrics["val_bpb_no_ttt"]
    print(f"phased val_bpb {metrics['val_bpb']:.6f} vs no TTT {metrics['val_bpb_no_ttt']:.6f}")


def test_a_phase_whose_tokens_fit_one_chunk_is_not_recorded_as_trained():
    """The stream's last chunk is never trained on: a phase whose documents fit in one chunk takes
    no SGD step, leaves the base as it was and must say so (it used to read trained: true)."""
    stream = synthetic_docs()
    model = tiny_gpt()
    start = copy.deepcopy(model.state_dict())
    documents = documents_of(stream)[:1]
    one_chunk = globally(global_chunk_tokens=documents[0].length + 2 * SEQ)
    assert run_global_phase(model, ttt_pass(stream), one_chunk, documents, 1) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
