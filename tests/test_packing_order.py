"""Where codes sit in an artifact: the code stream's order and segments, every packing option's
bit-exact round trip, and the layout transforms bench/quant_top.py measures (record-style row
order by similarity, transposition, stored permutations)."""

import numpy as np
import pytest
import torch

from bench.packing_choices import inverse_order, laid_out, restored, similarity_order, stored_permutation
from stages.artifact.container import read_container
from stages.artifact.layout import decode_tensors
from stages.artifact.codecs import CODECS
from stages.artifact.encode import compress
from stages.pack.config import PackConfig

from .test_pack import assert_same_tensors, packed, parts_of


@pytest.fixture(scope="module")
def layers():
    """Codes, scales and floats of 11 layers: names whose text order (blocks.10 < blocks.2) is not the layer order."""
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(11):
        for kind, rows, spread in (("attn.c_q", 8, 3.0), ("mlp.fc", 16, 5.0)):
            name = f"blocks.{layer}.{kind}.weight"
            codes = torch.clamp(torch.round(torch.randn(rows, 12, generator=g) * spread), -31, 31)
            tensors[name + ".q"] = codes.to(torch.int8)
            tensors[name + ".scale"] = torch.rand(rows, generator=g).half()
        tensors[f"blocks.{layer}.attn_scale"] = torch.randn(12, generator=g)
    tensors["tok_emb.weight.q"] = torch.randint(-63, 64, (32, 12), generator=g, dtype=torch.int8)
    tensors["tok_emb.weight.scale"] = torch.rand(32, generator=g).half()
    return tensors


def test_code_stream_runs_by_matrix_type_then_layer(layers):
    parts = parts_of(layers)
    codes = [entry["name"] for entry in parts.header["weights"]["tensors"] if entry["stream"] == "codes"]
    assert codes == ([f"blocks.{layer}.attn.c_q.weight.q" for layer in range(11)]
                     + [f"blocks.{layer}.mlp.fc.weight.q" for layer in range(11)] + ["tok_emb.weight.q"])
    assert parts.segments["codes"] == [11 * 8 * 12, 11 * 16 * 12, 32 * 12]
    attention = [entry["name"] for entry in parts.header["weights"]["tensors"] if entry["stream"] == "attention"]
    assert attention == [f"blocks.{layer}.attn.c_q.weight.scale" for layer in range(11)]


def test_one_table_per_matrix_type_beats_one_table_for_all(layers):
    parts = parts_of(layers)
    per_type = packed(layers)[1].streams["codes"].bytes
    one_table = len(compress(parts.stream_bytes["codes"], "rans"))
    assert per_type < one_table  # attn (spread 3) and mlp (spread 5) codes have different distributions


@pytest.mark.parametrize("streams", ["type", "group"])
@pytest.mark.parametrize("codes_codec", CODECS)
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_packing_option_round_trips_bit_exactly(layers, streams, codes_codec, shuffle):
    config = PackConfig(streams=streams, codes_codec=codes_codec, codec="best" if shuffle else "brotli", shuffle=shuffle)
    header, sections = read_container(packed(layers, config)[0])
    assert_same_tensors(decode_tensors(header, sections), layers)


# ---- the transforms the bench measures ----
def brute_force_similarity_order(matrix: np.ndarray) -> np.ndarray:
    """The record's loop, written plainly: nearest unused row by L1 distance, ties to the lowest index."""
    used = np.zeros(matrix.shape[0], dtype=bool)
    order, current = [0], matrix[0].astype(np.float32)
    used[0] = True
    for _ in range(matrix.shape[0] - 1):
        unused = np.flatnonzero(~used)
        nearest = unused[np.argmin(np.abs(matrix[unused].astype(np.float32) - current).sum(axis=1))]
        order.append(nearest)
        used[nearest] = True
        current = matrix[nearest].astype(np.float32)
    return np.array(order)


@pytest.mark.parametrize("seed, levels", [(0, 2), (1, 4), (2, 30)])  # few levels: many tied distances
def test_similarity_order_is_the_records_greedy_order(seed, levels):
    matrix = np.random.default_rng(seed).integers(-levels, levels + 1, (97, 6)).astype(np.int8)
    order = similarity_order(matrix)
    assert sorted(order.tolist()) == list(range(97)) and order[0] == 0
    assert order.tolist() == brute_force_similarity_order(matrix).tolist()


def test_similarity_order_puts_near_rows_next_to_each_other():
    base = np.random.default_rng(3).integers(-20, 21, (8, 32))
    matrix = np.concatenate([base, base + 1]).astype(np.int8)  # row i and row i + 8 are neighbours
    order = similarity_order(matrix)
    position = inverse_order(order)
    assert all(abs(int(position[i]) - int(position[i + 8])) == 1 for i in range(8))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("reorder", [False, True])
def test_layout_transforms_are_undone_exactly(transpose, reorder):
    matrix = np.random.default_rng(4).integers(-31, 32, (40, 24)).astype(np.int8)
    order = similarity_order(matrix) if reorder else None
    stored = laid_out(matrix, transpose, order)
    assert stored.shape == ((24, 40) if transpose else (40, 24)) and stored.flags.c_contiguous
    assert np.array_equal(restored(stored, transpose, order), matrix)


def test_permutations_are_stored_as_uint16():
    order = np.array([2, 0, 1])
    assert stored_permutation(order) == b"\x02\x00\x00\x00\x01\x00"
    with pytest.raises(ValueError, match="uint16"):
        stored_permutation(np.arange(70_000))
