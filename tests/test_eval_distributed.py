"""`golf eval` on several ranks (gloo, 2 processes on CPU): the same score as one rank, every target
in the receipts once, updates that follow the targets of every rank, and only rank 0 writing.

The library tests spawn the ranks once for every mode (``TWO_RANK_CONFIGS``: a TTT mode joins
with one line, and runs as soon as its module registers it: ``stages/evaluate/ttt/mode.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from stages.config import apply_overrides
from stages.scoring.bpb import BpbSums
from stages.scoring.setup import ScoringSetup
from stages.scoring.receipts import TokenReceipts, merge_receipts
from stages.scoring.scorer import score_stream
from stages.scoring.windows import usable_targets
from stages.evaluate.stage import run_eval
from stages.evaluate.config import EvalConfig
from stages.evaluate.ttt import score_with_ttt
from stages.evaluate.ttt.mode import REGISTRY

from .conftest import golf, sets
from .test_ttt import CHUNK, FAST_TTT, SEQ, STRIDE, byte_table, merged, synthetic_docs, tiny_gpt

WORLD = 2
# Chunk 0 holds 13 windows, the others 16: shares of 6 and 7 windows take 2 and 3 scoring steps, so
# the ranks' step counts part (and the receipts must catch up before each update).
BATCH_WINDOWS = 3
# Each mode's small config (None: plain scoring). 3 sequences per step over 4 per chunk: steps of
# 3 and 1 sequences, shared 1 + 2 and 0 + 1, so the gradient average must weigh by sequence count.
# Warm-start A hands a rank's adapters to its next batch, so with it the scores depend on the
# number of ranks (as in the records): the world-size comparison runs without it.
TWO_RANK_CONFIGS = {
    "none": None,
    "chunk-sgd": merged(FAST_TTT, chunk_sgd={"batch_seqs": 3}),
    "lora": {"mode": "lora", "lora": {"chunk": 16, "batch_docs": 4, "rank": 4, "lr": 0.01, "warm_start_a": False}},
    "phased": {"mode": "phased", "lora": {"chunk": 16, "batch_docs": 4, "rank": 4, "lr": 0.01, "warm_start_a": False},
               "phased": {"docs": 8, "phases": 2, "global_lr": 0.01, "global_chunk_tokens": 2 * CHUNK,
                          "global_batch_seqs": 3}},
}
BUILT = [mode for mode in TWO_RANK_CONFIGS if mode in REGISTRY]


def score_mode(mode: str, rank: int, world_size: int) -> dict:
    """Score the synthetic stream as rank ``rank`` of ``world_size``: the global sums, this rank's
    receipts, and the weights it ends with."""
    model, stream, receipts = tiny_gpt(), synthetic_docs(), TokenReceipts()
    setup = ScoringSetup(SEQ, STRIDE, BATCH_WINDOWS, rank=rank, world_size=world_size)
    if TWO_RANK_CONFIGS[mode] is None:
        sums = score_stream(model, stream, byte_table(), setup, receipts=receipts)
    else:
        sums = score_with_ttt(model, stream, byte_table(), setup, config=TWO_RANK_CONFIGS[mode], receipts=receipts)
    return {"sums": astuple(sums.all_reduce()), "receipts": receipts.tensors(rank, world_size),
            "weights": {name: value.detach().clone() for name, value in model.state_dict().items()}}


def rank_worker(rank: int, store_path: str, out_path: str) -> None:
    """One spawned rank: every built mode in turn, the results saved for the test process."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    try:
        torch.save({mode: score_mode(mode, rank, WORLD) for mode in BUILT}, f"{out_path}.{rank}")
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Each rank's results, per mode (one spawn for all modes: starting processes is the slow part)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(str(folder / "store"), str(folder / "result")), nprocs=WORLD)
    return [torch.load(folder / f"result.{rank}") for rank in range(WORLD)]


def committed_before(receipts: dict, after_order: int) -> set[int]:
    return set(receipts["position"][receipts["order"] <= after_order].tolist())


@pytest.mark.parametrize("mode", TWO_RANK_CONFIGS)
def test_two_ranks_score_as_one(two_ranks, mode):
    if mode not in BUILT:
        pytest.skip(f"ttt mode {mode!r} is not built yet")
    one = score_mode(mode, 0, 1)
    ranks = [result[mode] for result in two_ranks]
    assert ranks[0]["sums"] == ranks[1]["sums"]  # the all-reduced sums, the same on both ranks
    two, alone = BpbSums(*ranks[0]["sums"]), BpbSums(*one["sums"])
    assert (two.tokens, two.bytes) == (alone.tokens, alone.bytes)
    assert abs(two.bpb - alone.bpb) <= 1e-6
    # The receipts of both ranks hold each target once and give the score.
    merged = merge_receipts([rank["receipts"] for rank in ranks])
    targets = usable_targets(len(synthetic_docs()), SEQ)
    assert np.array_equal(np.sort(merged["position"].numpy()), np.arange(1, targets + 1))
    recomputed = merged["nll"].double().sum().item() / (math.log(2) * merged["bytes"].double().sum().item())
    assert abs(recomputed - two.bpb) <= 1e-9
    assert all(torch.all(rank["receipts"]["order"] % WORLD == r) for r, rank in enumerate(ranks))
    # Every rank ends with the same weights, those of one rank.
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
        assert torch.allclose(value, one["weights"][name], rtol=0, atol=1e-5), name


def test_two_rank_chunk_sgd_updates_follow_every_ranks_targets(two_ranks):
    """An update's after_order covers exactly the chunks all ranks scored before it, on 2 ranks as on 1."""
    one = score_mode("chunk-sgd", 0, 1)["receipts"]
    two = merge_receipts([result["chunk-sgd"]["receipts"] for result in two_ranks])
    names = ("update_first_position", "update_last_position")
    assert all(torch.equal(one[name], two[name]) for name in names)  # the same steps on the same targets
    assert len(two["update_after_order"]) > 0
    for receipts in (one, two):
        for after, first in zip(receipts["update_after_order"].tolist(), receipts["update_first_position"].tolist()):
            chunk = (first - 1) // CHUNK
            assert committed_before(receipts, after) == set(range(1, (chunk + 1) * CHUNK + 1))


@pytest.mark.parametrize("mode", [mode for mode in TWO_RANK_CONFIGS if TWO_RANK_CONFIGS[mode] is not None])
def test_two_rank_updates_train_only_on_committed_targets(two_ranks, mode):
    """The README's legality check on the merged receipts of 2 ranks: every target an update trains
    on was committed at an order <= its ``update_after_order``. Phased TTT's global SGD updates
    were noted with -1 on the rank that had scored nothing yet before the phase."""
    if mode not in BUILT:
        pytest.skip(f"ttt mode {mode!r} is not built yet")
    merged = merge_receipts([result[mode]["receipts"] for result in two_ranks])
    assert len(merged["update_after_order"]) > 0
    order_of = dict(zip(merged["position"].tolist(), merged["order"].tolist()))
    for after, first, last in zip(merged["update_after_order"].tolist(), merged["update_first_position"].tolist(),
                                  merged["update_last_position"].tolist()):
        late = [p for p in range(first, last + 1) if order_of[p] > after]
        assert not late, f"{mode}: update after order {after} trains on {len(late)} targets committed later"


# The command: --nproc 2 under torchrun


# Steps of 5 sequences over the 16 of a chunk: the last one is shared 0 + 1.
CLI_OVERRIDES = ["stride=16", "eval_tokens=4096", "ttt.chunk_sgd.chunk_tokens=1024", "ttt.chunk_sgd.batch_seqs=5"]


def test_cli_two_ranks_score_as_one_and_only_rank_0_writes(pack_dir, tmp_path):
    two = golf("eval", pack_dir, "--nproc", "2", "--ttt", "chunk-sgd", *sets(CLI_OVERRIDES),
               "--token-nll", tmp_path / "two.safetensors", "--out", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    config = apply_overrides(EvalConfig(), ["ttt.mode=chunk-sgd", *CLI_OVERRIDES])
    one = run_eval(config, pack_dir, None, tmp_path / "one", token_nll=tmp_path / "one.safetensors").metrics
    metrics = json.loads((tmp_path / "two" / "manifest.json").read_text())["metrics"]
    assert abs(metrics["val_bpb"] - one["val_bpb"]) <= 1e-6
    assert metrics["tokens_scored"] == one["tokens_scored"] and metrics["bytes_scored"] == one["bytes_scored"]
    receipts = load_file(tmp_path / "two.safetensors")
    assert np.array_equal(np.sort(receipts["position"].numpy()), np.arange(1, metrics["tokens_scored"] + 1))
    names = ("update_after_order", "update_first_position", "update_last_position")
    updates = list(zip(*(receipts[name].tolist() for name in names)))
    assert len(updates) == len(load_file(tmp_path / "one.safetensors")["update_after_order"]) > 0
    assert all(set(range(first, last + 1)) <= committed_before(receipts, after) for after, first, last in updates)
    assert sum(line.startswith("stage:eval") for line in two.stdout.splitlines()) == 1  # rank 1 prints nothing
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "one.safetensors", "two", "two.safetensors"]


@pytest.mark.parametrize("args, message", [
    (["--ttt", "sideways"], "ttt.mode: expected one of"),
    (["--token-nll", "no/such/folder/nll.safetensors"], "--token-nll folder no/such/folder does not exist"),
    (["--out", "taken"], "already exists"),
])
def test_nproc_checks_eval_arguments_before_launching(pack_dir, tmp_path, args, message):
    (tmp_path / "taken").mkdir()
    result = golf("eval", pack_dir, "--nproc", "2", *args, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_nproc_below_one_is_a_one_line_error(pack_dir, tmp_path, command, nproc):
    """--nproc 0 and -1 used to run as one process, silently."""
    target = ["--data", tmp_path / "none"] if command == "train" else [pack_dir]
    result = golf(command, *target, "--nproc", nproc, "--out", tmp_path / "out", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and f"--nproc must be at least 1, got {nproc}" in lines[0], \
        result.stderr
    assert not (tmp_path / "out").exists()
