"""Phased TTT: global SGD phases of the base weights between batches of document-LoRA scoring
(docs/TTT_CASEOPS.md sections D and H.4).

The global SGD tests run the phase on a packed stream of synthetic documents with the tiny GPT
of test_ttt; the schedule tests need no model.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from stages.evaluate.scoring import TokenReceipts, WindowScorer
from stages.evaluate.ttt.common import TTTPass
from stages.evaluate.ttt.config import TTTConfig
from stages.evaluate.ttt.global_sgd import (ScoredDocument, phase_boundaries, rank_slice, run_global_phase,
                                            schedule_phases, train_global_phase, training_documents,
                                            training_stream)

from .test_ttt import BOS, SEQ, STRIDE, byte_table, synthetic_docs, tiny_gpt

# One step per trained chunk of 4 sequences (3, then 1: uneven over two ranks, one rank idle).
GLOBAL = TTTConfig(mode="phased", global_lr=0.05, global_momentum=0.9, global_epochs=2, global_chunk_tokens=4 * SEQ,
                   global_batch_seqs=3, global_grad_clip=1.0, global_doc_mask=True)


def documents_of(stream: np.ndarray, batch_docs: int = 4) -> list[ScoredDocument]:
    """The stream's documents (BOS through the next BOS), in stream order, ``batch_docs`` a batch."""
    bos = np.flatnonzero(stream == BOS).tolist()
    ends = [*bos[1:], len(stream) - 1]
    return [ScoredDocument(i // batch_docs, i % batch_docs, start, end - start + 1)
            for i, (start, end) in enumerate(zip(bos, ends))]


def ttt_pass(stream: np.ndarray, receipts: TokenReceipts | None = None, rank: int = 0, world_size: int = 1,
             may_adapt=lambda: True) -> TTTPass:
    scorer = WindowScorer(stream, byte_table(), SEQ)
    return TTTPass(scorer, STRIDE, 4, rank, world_size, receipts, may_adapt=may_adapt)


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
    slices = [rank_slice(step, rank, 3) for rank in range(3)]
    assert slices == [[0, 1], [2, 3], [4, 5, 6]]
    assert rank_slice([5], 0, 2) == []


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
    chunk = GLOBAL.global_chunk_tokens
    num_chunks = math.ceil((len(tokens) - 1) / chunk)
    assert num_chunks >= 3
    trained = [s for c in range(num_chunks - 1) for s in range(c * chunk, min((c + 1) * chunk, len(tokens) - 1) - SEQ + 1, SEQ)]
    assert sorted(spy.rows) == sorted(trained * GLOBAL.global_epochs)
    assert max(spy.rows) + SEQ <= (num_chunks - 1) * chunk  # no target of the last chunk
    # The update receipts name the stream positions trained on, which all lie in the packed documents.
    noted = {p for _, first, last in receipts.updates for p in range(first, last + 1)}
    assert noted == set(positions[[s + j for s in trained for j in range(1, SEQ + 1)]].tolist())


def test_zero_learning_rate_or_epochs_leave_every_weight_bitwise_unchanged():
    stream = synthetic_docs()
    model = tiny_gpt()
    start = copy.deepcopy(model.state_dict())
    for off in ({"global_lr": 0.0}, {"global_epochs": 0}):
        after = trained_weights(model, stream, replace(GLOBAL, **off))
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
    one_step = replace(GLOBAL, global_chunk_tokens=SEQ, global_batch_seqs=1, global_epochs=1, global_momentum=0.0,
                       global_grad_clip=0.0, global_doc_mask=doc_mask)
    first = documents_of(stream)[0].length - 10  # a row from inside the first document across the join
    tokens, positions = tokens[first : first + 2 * SEQ + 1], positions[first : first + 2 * SEQ + 1]  # two chunks:
    assert (tokens[1 : SEQ + 1] == BOS).sum() >= 2  # only the first trains; it holds the doubled BOS
    model = tiny_gpt()
    expected = one_sgd_step_by_documents(copy.deepcopy(model), tokens[: SEQ + 1], one_step.global_lr)
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


# Ranks


def global_sgd_worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    """One rank of a phase: the same model and stream, its slice of each step's sequences."""
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        torch.save(trained_weights(tiny_gpt(), synthetic_docs(), rank=rank, world_size=world), f"{out_path}.{rank}")
        dist.barrier()  # both done before either tears gloo down
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_like_one_and_hold_identical_weights(tmp_path):
    """H.4.4 and world-size invariance: steps of 3 sequences split 1 + 2, steps of 1 split 0 + 1."""
    world = 2
    mp.spawn(global_sgd_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "weights")), nprocs=world)
    ranks = [torch.load(tmp_path / f"weights.{rank}") for rank in range(world)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    single = trained_weights(tiny_gpt(), synthetic_docs())
    start = tiny_gpt().state_dict()
    assert not torch.equal(single["blocks.1.mlp.fc.weight"], start["blocks.1.mlp.fc.weight"])
    assert all(torch.allclose(ranks[0][k], v, atol=1e-6, rtol=0) for k, v in single.items())
