"""Train loaders: shift by one, resume, seeded shuffling, rank/accumulation invariance, train-only reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.data.shards import encode_shard, shard_name
from stages.errors import GolfError
from stages.data import loader as loader_module
from stages.data.loader import ContiguousLoader, DocPackedLoader, ShuffledLoader, make_loader

# Shard k holds k * STRIDE + 0, 1, 2, ...: a token names its shard and position, so a window that
# straddles shards or skips a token is visible. The 40-token shard is shorter than a 64-token window.
STRIDE = 10_000
TRAIN_SIZES = (600, 1500, 40, 1100)
VAL_MARK = 60_000
CPU = torch.device("cpu")


@pytest.fixture
def shards(tmp_path):
    """Train shard paths of different sizes; a val shard lies in the same folder, never passed."""
    paths = []
    for k, size in enumerate(TRAIN_SIZES):
        path = tmp_path / shard_name("train", k)
        path.write_bytes(encode_shard(k * STRIDE + np.arange(size)))
        paths.append(path)
    (tmp_path / shard_name("val", 0)).write_bytes(encode_shard(VAL_MARK + np.arange(500)))
    return paths


def batches(loader, count: int, local_tokens: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [loader.next_batch(local_tokens, seq_len, CPU)[:2] for _ in range(count)]


def assert_same(first, second) -> None:
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def json_round_trip(state: dict) -> dict:
    """What a checkpoint's state.json gives back."""
    return json.loads(json.dumps(state))


def step_windows(loaders, steps: int, local_tokens: int, seq_len: int, grad_accum: int) -> list[torch.Tensor]:
    """Per global step, every rank's rows of the step, rank-major then micro-batch order."""
    out = []
    for _ in range(steps):
        rows = [[loader.next_batch(local_tokens, seq_len, CPU) for _ in range(grad_accum)] for loader in loaders]
        out.append(torch.cat([torch.cat([x, y[:, -1:]], dim=1) for per_rank in rows for x, y, _ in per_rank]))
    return out


def test_contiguous_reads_the_stream_in_order_with_targets_shifted(shards):
    loader = ContiguousLoader(shards)
    x, y, _ = loader.next_batch(64, 16, CPU)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x.flatten(), torch.arange(64)) and torch.equal(y.flatten(), torch.arange(1, 65))


def test_contiguous_ranks_take_consecutive_slices(shards):
    spans = [ContiguousLoader(shards, rank, 2).next_batch(32, 16, CPU) for rank in range(2)]
    assert torch.equal(spans[0][0].flatten(), torch.arange(32))
    assert torch.equal(spans[1][0].flatten(), torch.arange(33, 65))  # each rank's span has one extra target


def test_contiguous_resume_continues_identically_across_shards_and_the_wrap(shards):
    reference = ContiguousLoader(shards, 1, 2)
    batches(reference, 7, 64, 16)
    state = json_round_trip(reference.state_dict())
    expected = batches(reference, 30, 64, 16)  # 30 * 2 * 65 tokens: past every shard and the wrap
    resumed = ContiguousLoader(shards, 1, 2)
    resumed.load_state_dict(state)
    assert_same(batches(resumed, 30, 64, 16), expected)


def test_shuffled_windows_are_whole_and_inside_one_shard(shards):
    loader = ShuffledLoader(shards, seed=3)
    for x, y in batches(loader, 40, 256, 64):
        assert torch.equal(y[:, :-1], x[:, 1:])
        windows = torch.cat([x, y[:, -1:]], dim=1)
        assert (windows.diff(dim=1) == 1).all()  # consecutive tokens: no gap, no shard boundary inside
        shard_of = windows // STRIDE
        assert (shard_of == shard_of[:, :1]).all()
        assert not (shard_of == 2).any()  # the 40-token shard cannot hold a 65-token window


def test_shuffled_picks_shards_in_proportion_to_their_tokens(shards):
    shard_ids, _ = ShuffledLoader(shards, seed=0).draw_step(0, 40_000, 16)
    frequency = np.bincount(shard_ids, minlength=len(TRAIN_SIZES)) / len(shard_ids)
    assert np.allclose(frequency, np.array(TRAIN_SIZES) / sum(TRAIN_SIZES), atol=0.01)


def test_shuffled_is_seeded(shards):
    first, again, other = (batches(ShuffledLoader(shards, seed=seed), 5, 128, 16) for seed in (7, 7, 8))
    assert_same(first, again)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_union_over_ranks_is_the_single_process_global_batch(shards, world_size, grad_accum):
    seq_len, global_rows = 8, 16
    reference = step_windows([ShuffledLoader(shards, seed=5)], 3, global_rows * seq_len, seq_len, 1)
    loaders = [ShuffledLoader(shards, rank, world_size, seed=5, grad_accum=grad_accum) for rank in range(world_size)]
    local_tokens = global_rows * seq_len // (world_size * grad_accum)
    split = step_windows(loaders, 3, local_tokens, seq_len, grad_accum)
    for expected, got in zip(reference, split):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("micro_batches_done", [0, 1, 3])
def test_shuffled_resume_continues_identically(shards, micro_batches_done):
    """From a step boundary and from inside a step (grad_accum 4, so 1 and 3 are mid-step)."""
    reference = ShuffledLoader(shards, 1, 2, seed=11, grad_accum=4)
    batches(reference, 8 + micro_batches_done, 32, 16)
    state = json_round_trip(reference.state_dict())
    expected = batches(reference, 12, 32, 16)
    resumed = ShuffledLoader(shards, 1, 2, seed=11, grad_accum=4)
    resumed.load_state_dict(state)
    assert_same(batches(resumed, 12, 32, 16), expected)


def test_shuffled_resume_between_steps_may_change_the_split(shards):
    single = ShuffledLoader(shards, seed=2)
    batches(single, 3, 128, 16)
    state = json_round_trip(single.state_dict())
    expected = step_windows([single], 2, 128, 16, 1)
    loaders = [ShuffledLoader(shards, rank, 4, seed=2, grad_accum=2) for rank in range(4)]
    for loader in loaders:
        loader.load_state_dict(state)
    for want, got in zip(expected, step_windows(loaders, 2, 16, 16, 2)):
        assert torch.equal(got, want)


def test_shuffled_resume_refuses_what_would_change_the_batches(shards):
    mid_step = ShuffledLoader(shards, seed=1, grad_accum=2)
    mid_step.next_batch(64, 16, CPU)
    with pytest.raises(GolfError, match="same split"):
        ShuffledLoader(shards, seed=1, grad_accum=4).load_state_dict(mid_step.state_dict())
    with pytest.raises(GolfError, match="seed 1"):
        ShuffledLoader(shards, seed=2, grad_accum=2).load_state_dict(mid_step.state_dict())
    with pytest.raises(GolfError, match="'contiguous' loader"):
        ShuffledLoader(shards).load_state_dict(ContiguousLoader(shards).state_dict())


@pytest.mark.parametrize("mode", ["contiguous", "shuffled", "doc_packed"])
def test_loader_opens_only_the_train_paths_it_is_given(shards, mode, monkeypatch):
    opened = []
    real_read_shard = loader_module.read_shard

    def spy(path):
        opened.append(path)
        return real_read_shard(path)

    monkeypatch.setattr(loader_module, "read_shard", spy)
    loader = make_loader(mode, shards, 0, 1, 4)
    for x, y in batches(loader, 60, 128, 16):  # the contiguous stream wraps around twice
        assert int(y.max()) < VAL_MARK
    assert set(opened) == set(shards)


def test_make_loader_names_the_modes(shards):
    assert isinstance(make_loader("contiguous", shards, 0, 1, 0), ContiguousLoader)
    assert isinstance(make_loader("shuffled", shards, 0, 1, 0, 2), ShuffledLoader)
    assert isinstance(make_loader("doc_packed", shards, 0, 1, 0, 2), DocPackedLoader)
    with pytest.raises(GolfError, match="contiguous, shuffled, doc_packed"):
        make_loader("random", shards, 0, 1, 0)
