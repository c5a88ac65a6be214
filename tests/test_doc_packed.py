"""Document-packed batches (the #1667 lineage): rows cut from the stream as the records cut them,
attention split where the records' cu_seqlens split it, resumable, the same for any split of a
step, and a packed row scores each of its documents exactly as that document alone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from stages.data.shards import encode_shard, shard_name
from stages.errors import GolfError
from stages.model.attention_backends import attend, bucket_length, find_segments, plan_attention
from stages.model.config import ModelConfig
from stages.model.gpt import GPT
from stages.model.layers import document_ids
from stages.ranges import ConfigError
from stages.train.config import RunConfig, TrainConfig, resolve_grad_accum
from stages.data.loader import DocPackedLoader, make_loader
from stages.train.loop import Trainer

from .conftest import tiny_run_config
from .flash_standins import STAND_IN
from .test_attention import explicit_mask_attention

BOS = 1
CPU = torch.device("cpu")
# Shard 0 begins inside a document (the loader must start at its first BOS); shard 2 is too short
# for a step of 4 rows of 33 tokens and is skipped.
SHARD_SIZES = (700, 500, 90, 620)


def documents_stream(size: int, seed: int, lead: int) -> np.ndarray:
    """``lead`` tokens of a document begun elsewhere, then documents [BOS, ...] of 1 to 70 tokens."""
    rng = np.random.default_rng(seed)
    parts, total = [rng.integers(2, 500, lead)], lead
    while total < size:
        doc = np.concatenate(([BOS], rng.integers(2, 500, int(rng.integers(1, 70)))))
        parts.append(doc)
        total += len(doc)
    return np.concatenate(parts)[:size].astype(np.uint16)


@pytest.fixture
def shards(tmp_path):
    paths = []
    for k, size in enumerate(SHARD_SIZES):
        path = tmp_path / shard_name("train", k)
        path.write_bytes(encode_shard(documents_stream(size, seed=k, lead=9 if k == 0 else 0)))
        paths.append(path)
    return paths


def shard_tokens(paths) -> list[np.ndarray]:
    return [np.frombuffer(p.read_bytes()[1024:], dtype="<u2").astype(np.int64) for p in paths]


def record_rows(tokens: list[np.ndarray], steps: int, rows: int, row_tokens: int) -> list[np.ndarray]:
    """What the records' 8-GPU loader reads, written out plainly: per step, ``rows`` consecutive spans
    of row_tokens + 1 tokens; a step that overruns its shard moves to the next shard's first BOS."""
    shard, cursor, out = 0, int(np.flatnonzero(tokens[0] == BOS)[0]), []
    span = rows * (row_tokens + 1)
    for _ in range(steps):
        while cursor + span > len(tokens[shard]):
            shard = (shard + 1) % len(tokens)
            cursor = int(np.flatnonzero(tokens[shard] == BOS)[0])
        out.append(tokens[shard][cursor : cursor + span].reshape(rows, row_tokens + 1))
        cursor += span
    return out


def record_segments(row: list[int], max_doc_len: int) -> list[tuple[int, int]]:
    """The records' cu_seqlens as (begin, end) pairs: the row start and every BOS begin a document,
    and a document is cut every max_doc_len tokens from its beginning."""
    starts = sorted({0, *(i for i, token in enumerate(row) if token == BOS)})
    segments = []
    for begin, end in zip(starts, starts[1:] + [len(row)]):
        segments += [(b, min(b + max_doc_len, end)) for b in range(begin, end, max_doc_len)]
    return segments


def segments_of(doc_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(begin, end) runs of equal ids in one row."""
    change = [0] + [i for i in range(1, len(doc_ids)) if doc_ids[i] != doc_ids[i - 1]] + [len(doc_ids)]
    return list(zip(change[:-1], change[1:]))


def step_rows(loaders, steps: int, local_tokens: int, row_tokens: int, grad_accum: int) -> list[torch.Tensor]:
    """Per step, every rank's rows (inputs plus the last target), rank-major then micro-batch order."""
    out = []
    for _ in range(steps):
        got = [[loader.next_batch(local_tokens, row_tokens, CPU) for _ in range(grad_accum)] for loader in loaders]
        out.append(torch.cat([torch.cat([x, y[:, -1:]], dim=1) for per_rank in got for x, y, _ in per_rank]))
    return out


# ---- what the loader reads ----

def test_rows_are_the_records_rows_from_the_first_bos_skipping_short_shard_tails(shards):
    loader = DocPackedLoader(shards)
    got = step_rows([loader], 12, 4 * 32, 32, 1)  # 12 steps of 132 tokens: every shard, the skip and the wrap
    expected = record_rows(shard_tokens(shards), 12, 4, 32)
    for want, rows in zip(expected, got):
        assert torch.equal(rows, torch.from_numpy(want))
    assert got[0][0, 0] == BOS  # shard 0 starts inside a document: the first row starts at its first BOS


def test_rows_hold_whole_documents_or_the_records_splits(shards):
    """Every attention segment of every row is a document, or a piece of one cut where the records cut it."""
    loader = DocPackedLoader(shards, grad_accum=2, max_doc_len=16)
    bucket = bucket_length(1, 2, 64, 16)
    for _ in range(20):
        x, y, loaded = loader.next_batch(2 * 64, 64, CPU)
        assert torch.equal(x[:, 1:], y[:, :-1])
        # The loader's cu_seqlens are the records' segments over the flattened rows, padded with the
        # total to a whole number of buckets.
        starts = [b + 64 * r for r, row in enumerate(x.tolist()) for b, _ in record_segments(row, 16)]
        cu = loaded.cu_seqlens.tolist()
        assert cu[: len(starts)] == starts and set(cu[len(starts):]) == {x.numel()} and len(cu) % bucket == 0
        assert loaded.cu_seqlens.dtype == torch.int32 and loaded.max_seqlen == 16
        segments = document_ids(x, BOS, 16)
        for row, ids in zip(x.tolist(), segments):
            got = segments_of(ids)
            assert got == record_segments(row, 16)
            for begin, end in got:
                assert end - begin <= 16 and BOS not in row[begin + 1 : end]  # no document boundary inside


def test_document_ids_match_the_records_cu_seqlens_on_random_rows():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 6, (200, 40), generator=generator)  # BOS (1) about every 6 tokens
    rows[::3] = torch.randint(2, 6, (67, 40), generator=generator)  # and rows with none: one long document
    for max_doc_len in (1, 5, 40):
        for row, ids in zip(rows, document_ids(rows, BOS, max_doc_len)):
            assert segments_of(ids) == record_segments(row.tolist(), max_doc_len)
    # Without a cap a segment is a whole document, as doc_mask always did.
    assert torch.equal(document_ids(rows, BOS), torch.cumsum((rows == BOS).int(), dim=-1))


def test_a_shard_set_too_short_for_one_step_is_an_error(shards):
    with pytest.raises(GolfError, match="no train shard holds one step"):
        DocPackedLoader(shards).next_batch(8 * 128, 128, CPU)  # 8 x 129 tokens: more than any shard


# ---- resume and splits ----

@pytest.mark.parametrize("micro_batches_done", [0, 1, 3])
def test_resume_continues_identically(shards, micro_batches_done):
    """From a step boundary and from inside a step, across shard skips and the wrap."""
    reference = DocPackedLoader(shards, 1, 2, grad_accum=4)
    for _ in range(8 + micro_batches_done):
        reference.next_batch(16, 16, CPU)
    state = json.loads(json.dumps(reference.state_dict()))
    expected = [reference.next_batch(16, 16, CPU) for _ in range(40)]
    resumed = DocPackedLoader(shards, 1, 2, grad_accum=4)
    resumed.load_state_dict(state)
    for (x1, y1, _), (x2, y2, _) in zip(expected, (resumed.next_batch(16, 16, CPU) for _ in range(40))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_union_over_ranks_is_the_single_process_global_batch(shards, world_size, grad_accum):
    row_tokens, global_rows = 16, 8
    reference = step_rows([DocPackedLoader(shards)], 6, global_rows * row_tokens, row_tokens, 1)
    loaders = [DocPackedLoader(shards, rank, world_size, grad_accum) for rank in range(world_size)]
    local_tokens = global_rows * row_tokens // (world_size * grad_accum)
    for expected, got in zip(reference, step_rows(loaders, 6, local_tokens, row_tokens, grad_accum)):
        assert torch.equal(got, expected)


def test_resume_between_steps_may_change_the_split_but_not_inside_one(shards):
    single = DocPackedLoader(shards)
    step_rows([single], 3, 128, 16, 1)
    state = single.state_dict()
    expected = step_rows([single], 2, 128, 16, 1)
    loaders = [DocPackedLoader(shards, rank, 4, grad_accum=2) for rank in range(4)]
    for loader in loaders:
        loader.load_state_dict(state)
    for want, got in zip(expected, step_rows(loaders, 2, 16, 16, 2)):
        assert torch.equal(got, want)
    mid_step = DocPackedLoader(shards, grad_accum=2)
    mid_step.next_batch(64, 16, CPU)
    with pytest.raises(GolfError, match="same split"):
        DocPackedLoader(shards, grad_accum=4).load_state_dict(mid_step.state_dict())
    resumed = DocPackedLoader(shards, grad_accum=2)
    resumed.load_state_dict(mid_step.state_dict())
    with pytest.raises(GolfError, match="changed inside a step"):
        resumed.next_batch(64, 32, CPU)
    with pytest.raises(GolfError, match="'shuffled' loader"):
        DocPackedLoader(shards).load_state_dict(make_loader("shuffled", shards).state_dict())


# ---- the model on packed rows ----

PACKED_MODEL = ModelConfig(
    vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, rope_dims=4, smear_gate=True,
    bigram_hash_buckets=16, bigram_hash_dim=8, value_embed_dim=8, value_embed_layers=(1,), xsa_last_n=1,
    attn_gate_width=4, skip_gates=True, doc_mask=True,
)


def random_model(**changes) -> GPT:
    """Every weight random, the zero-init gates and projections included, so every path is live."""
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(PACKED_MODEL, **changes))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def packed_row(generator) -> tuple[torch.Tensor, list[int]]:
    """A row as the loader cuts it: the tail of a document, whole documents, then a cut-off one."""
    pieces = [torch.randint(2, 64, (5,), generator=generator)]
    for length in (9, 1, 14, 30, 7):
        pieces.append(torch.cat((torch.tensor([BOS]), torch.randint(2, 64, (length,), generator=generator))))
    starts = np.cumsum([0] + [len(p) for p in pieces]).tolist()
    return torch.cat(pieces)[None], starts


def max_difference_from_alone(model: GPT, row: torch.Tensor, segments, max_doc_len: int = 0) -> float:
    with torch.no_grad():
        packed = model(row, max_doc_len)
        return max((packed[:, b:e] - model(row[:, b:e])).abs().max().item() for b, e in segments)


def test_packed_logits_equal_each_document_alone():
    """SmearGate, BigramHash, value embeddings, XSA and the gates on: nothing crosses a BOS."""
    row, starts = packed_row(torch.Generator().manual_seed(2))
    documents = list(zip(starts[:-1], starts[1:]))
    assert max_difference_from_alone(random_model(), row, documents) < 1e-5
    # The comparison can fail: without doc_mask the documents see each other, and a SmearGate or a
    # BigramHash that ignored BOS would carry the last token of one document into the next.
    assert max_difference_from_alone(random_model(doc_mask=False), row, documents) > 1e-3
    for only_mixer in ({"bigram_hash_buckets": 0}, {"smear_gate": False}):  # the SmearGate, then the BigramHash
        leaky = random_model(smear_bos_mask=False, **only_mixer)
        assert max_difference_from_alone(leaky, row, documents) > 1e-3


def test_packed_logits_equal_each_piece_alone_when_long_documents_are_split():
    """Attention only (no token mixers, whose previous-token term crosses a cut inside a document
    in the records too): every piece of the records' cut is scored as if alone."""
    row, _ = packed_row(torch.Generator().manual_seed(3))
    model = random_model(smear_gate=False, bigram_hash_buckets=0)
    pieces = record_segments(row[0].tolist(), 8)
    assert any(e - b == 8 and row[0, b] != BOS for b, e in pieces)  # a cut inside a document is tested
    assert max_difference_from_alone(model, row, pieces, max_doc_len=8) < 1e-5
    assert max_difference_from_alone(model, row, pieces) > 1e-3  # uncut, long documents see their start


def test_flash_varlen_gets_the_cut_segments():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 48, 8), torch.randn(2, 2, 48, 8), torch.randn(2, 2, 48, 8)
    row, _ = packed_row(torch.Generator().manual_seed(4))
    rows = torch.cat((row[:, :48], row[:, -48:]))
    expected = explicit_mask_attention(q, k, v, document_ids(rows, BOS, 8))
    assert torch.allclose(attend(q, k, v, plan_attention(STAND_IN, rows, BOS, 8)), expected, atol=1e-5)


# ---- config and trainer ----

def test_config_rules():
    packed = TrainConfig(loader="doc_packed", seq_len=2048, batch_tokens=786_432, grad_accum=0)
    assert packed.row_tokens == 98_304  # the records' per-GPU micro-batch
    assert resolve_grad_accum(packed, 8) == 1 and resolve_grad_accum(packed, 1) == 8
    assert TrainConfig(loader="doc_packed", seq_len=64, batch_tokens=1024, pack_tokens=256).row_tokens == 256
    with pytest.raises(ConfigError, match="pack_tokens: only applies to loader 'doc_packed'"):
        TrainConfig(pack_tokens=4096)
    with pytest.raises(ConfigError, match="batch_tokens: must be a multiple of pack_tokens"):
        TrainConfig(loader="doc_packed", seq_len=64, batch_tokens=1024, pack_tokens=384)
    with pytest.raises(ConfigError, match="pack_tokens: 0 takes batch_tokens / 8"):
        TrainConfig(loader="doc_packed", seq_len=4, batch_tokens=1028)
    with pytest.raises(ConfigError, match="train.loader: 'doc_packed' needs model.doc_mask=true"):
        RunConfig(ModelConfig(), packed)
    with pytest.raises(GolfError, match="does not split into 16 ranks"):
        resolve_grad_accum(packed, 16)


def test_trainer_feeds_packed_rows_and_cuts_at_seq_len(shards, monkeypatch):
    tiny = tiny_run_config()  # seq_len 64, vocab 512 (the shards' ids are below 500)
    config = RunConfig(dataclasses.replace(tiny.model, doc_mask=True), dataclasses.replace(
        tiny.train, loader="doc_packed", batch_tokens=512, pack_tokens=128, grad_accum=2))
    seen = []
    real_loss = GPT.loss

    def spy(model, x, y, max_doc_len=0, segments=None):
        seen.append((tuple(x.shape), segments.max_seqlen))  # the loader's segments: cut every seq_len
        assert segments.cu_seqlens.tolist() == find_segments(x, BOS, 64).cu_seqlens.tolist()
        return real_loss(model, x, y, max_doc_len, segments=segments)

    monkeypatch.setattr(GPT, "loss", spy)
    trainer = Trainer(GPT(config.model), config, make_loader("doc_packed", shards, grad_accum=2, max_doc_len=64), CPU)
    trainer.warm_up(1)
    trainer.train_step()
    # 2 micro-batches of 2 rows of 128 tokens, cut every 64 (seq_len); the warm-up's random rows the same.
    assert seen == [((2, 128), 64)] * 4


def test_train_stage_resumes_doc_packed_runs_exactly(data_dir, tmp_path):
    """Through the real stage: the loader position travels in the checkpoint, inside a shard's steps."""
    from stages.config import apply_overrides
    from stages.train.stage import run_train

    from .test_train_stage import losses

    config = apply_overrides(tiny_run_config(), [
        "train.loader=doc_packed", "model.doc_mask=true", "train.pack_tokens=256", "train.grad_accum=2",
        "train.max_steps=6", "train.checkpoint_every=3", "train.schedule=steps"])
    full = run_train(config, data_dir, tmp_path / "full")
    assert full.config["train"]["loader"] == "doc_packed"
    assert full.metrics["attention"] == "sdpa" and "attention:sdpa" in (tmp_path / "full" / "log.txt").read_text()
    checkpoint = tmp_path / full.metrics["checkpoints"] / "step_000003"
    assert json.loads((checkpoint / "state.json").read_text())["loader"]["kind"] == "doc_packed"
    run_train(config, data_dir, tmp_path / "resumed", resume=checkpoint)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")[3:]
